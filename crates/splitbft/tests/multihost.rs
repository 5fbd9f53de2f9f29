//! `keygen --hosts`: one replica per host, each at the same port on its own address, each
//! host's directory holding only its own secrets. Runs on 127.0.0.1–127.0.0.4 (all
//! loopback on Linux), so every replica has a distinct address as it would across hosts;
//! replica 0 is named by its host name `localhost` where that resolves to 127.0.0.1 first.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use splitbft_testkit::process::{Processes, free_ports_on};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

#[cfg(target_os = "linux")]
#[test]
fn keygen_hosts_writes_one_directory_per_host_and_the_cluster_serves_across_them() {
    use std::net::ToSocketAddrs;
    let localhost_is_v4 = ("localhost", 1).to_socket_addrs().ok().and_then(|mut a| a.next())
        == Some(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
    if !localhost_is_v4 {
        eprintln!("localhost does not resolve to 127.0.0.1 first here: replica 0 is named by its address");
    }
    let hosts = [if localhost_is_v4 { "localhost" } else { "127.0.0.1" }, "127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let port = free_ports_on(&hosts, 1);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--clients", "2", "--hosts", &hosts.join(",")])
        .args(["--base-port", &port.to_string(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));

    // Each host's directory holds its own five secrets (the transport key is its broker's,
    // SPEC §11) and nothing of anyone else's.
    for (i, host) in hosts.iter().enumerate() {
        let keys = dir.path().join(format!("replica-{i}/keys"));
        let mut names: Vec<String> =
            std::fs::read_dir(&keys).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let mut expected: Vec<String> = ["confirmation", "execution", "execution-group", "preparation", "transport"]
            .iter()
            .map(|k| format!("replica-{i}-{k}.key"))
            .collect();
        expected.sort();
        assert_eq!(names, expected);
        let toml = std::fs::read_to_string(dir.path().join(format!("replica-{i}/cluster.toml"))).unwrap();
        assert!(toml.contains(&format!("address = \"{host}:{port}\"")), "{toml}");
    }
    let client_keys: Vec<_> = std::fs::read_dir(dir.path().join("clients/keys")).unwrap().collect();
    assert_eq!(client_keys.len(), 2, "the clients' directory holds only client keys");
    assert!(!dir.path().join("keys").exists(), "no directory holds every secret");

    let mut procs = Processes(
        (0..4)
            .map(|i| {
                Command::new(BIN)
                    .args(["replica", "--config"])
                    .arg(dir.path().join(format!("replica-{i}/cluster.toml")))
                    .args(["--id", &i.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let client = |args: &[&str]| {
        Command::new(BIN)
            .args(["client", "--timeout-s", "20", "--config"])
            .arg(dir.path().join("clients/cluster.toml"))
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client(&["put", "across", "hosts"]).status.success() {
        assert!(Instant::now() < deadline, "the cluster never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A replica down (f = 1): the other three hosts still serve.
    procs.0[2].kill().unwrap();
    procs.0[2].wait().unwrap();
    let put = client(&["put", "after", "kill"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let get = client(&["get", "across"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hosts");
}
