//! `keygen --hosts`: one replica per host, each at the same port on its own address, each
//! host's directory holding only its own secrets. Runs on 127.0.0.1–127.0.0.4 (all
//! loopback on Linux), so every replica has a distinct address as it would across hosts.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn keygen_hosts_writes_one_directory_per_host_and_the_cluster_serves_across_them() {
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let seed = std::process::id() as u16;
    let port = (0..200u16)
        .map(|a| 20_000 + (seed.wrapping_mul(13).wrapping_add(a.wrapping_mul(7))) % 30_000)
        .find(|&p| hosts.iter().all(|h| TcpListener::bind((*h, p)).is_ok()))
        .expect("a port free on all four addresses");
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
