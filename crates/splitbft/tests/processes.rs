//! The 4-process cluster a user runs: `keygen`, four `replica` processes, `client put`
//! then `client get`; killing one backup leaves the cluster serving; SIGTERM stops a
//! replica cleanly.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use splitbft_testkit::process::{self, Replicas, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

fn free_base_port() -> u16 {
    process::free_ports(4)
}

fn client(config: &Path, args: &[&str]) -> Output {
    process::client(BIN, config, args)
}

fn start_replica(config: &Path, id: u32) -> Child {
    process::start_replica(BIN, config, id, &[])
}

#[cfg(unix)]
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
}

#[cfg(unix)]
#[test]
fn four_processes_serve_survive_a_backup_crash_and_stop_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--clients", "2", "--base-port", &base.to_string(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("cluster.toml");
    assert!(config.exists());
    assert!(dir.path().join("keys/replica-3-execution.key").exists());
    assert!(dir.path().join("keys/client-1.key").exists());

    let mut replicas = Replicas(
        (0..4)
            .map(|i| {
                Some(
                    Command::new(BIN)
                        .args(["replica", "--config"])
                        .arg(&config)
                        .args(["--id", &i.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect(),
    );

    // The first request also waits for the replicas to come up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let put = loop {
        let out = client(&config, &["put", "greeting", "hello-splitbft"]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(put.status.success(), "put failed: {}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(stdout(&put), "OK");
    let get = client(&config, &["get", "greeting"]);
    assert!(get.status.success(), "get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(stdout(&get), "hello-splitbft");

    // A missing key is a non-zero exit with a message.
    let missing = client(&config, &["get", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // Kill a backup (replica 3) hard: f = 1, the other three keep serving.
    let mut backup = replicas.0[3].take().unwrap();
    backup.kill().unwrap();
    backup.wait().unwrap();
    let put = client(&config, &["--client-id", "1", "put", "after-crash", "still-here"]);
    assert!(put.status.success(), "put after crash failed: {}", String::from_utf8_lossy(&put.stderr));
    let get = client(&config, &["get", "after-crash"]);
    assert_eq!(stdout(&get), "still-here");
    let scan = client(&config, &["scan", ""]);
    assert_eq!(stdout(&scan), "after-crash\tstill-here\ngreeting\thello-splitbft");

    // SIGTERM: each remaining replica exits 0.
    for child in replicas.0.iter_mut().filter_map(Option::take) {
        signal(&child, "-TERM");
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "replica did not exit cleanly: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("stopped"));
    }
}

fn put_ok(config: &Path, key: &str, value: &str) {
    let out = client(config, &["put", key, value]);
    assert!(out.status.success(), "put {key} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// SPEC §4.1 (6) (7), §4.3: kill the primary mid-workload — the client's requests still
/// complete after a view change; restart it — it catches up by state transfer; kill a
/// different replica — the cluster, now relying on the restarted one, still serves.
#[cfg(unix)]
#[test]
fn primary_crash_view_change_restart_and_state_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--clients", "1", "--checkpoint-interval", "4"])
        .args(["--base-port", &base.to_string(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("cluster.toml");
    let mut replicas = Replicas((0..4).map(|i| Some(start_replica(&config, i))).collect());

    let deadline = Instant::now() + Duration::from_secs(30);
    while !client(&config, &["put", "warmup", "1"]).status.success() {
        assert!(Instant::now() < deadline, "cluster never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..10 {
        put_ok(&config, &format!("before-{i}"), "v");
    }
    // The primary of view 0 dies.
    let mut primary = replicas.0[0].take().unwrap();
    primary.kill().unwrap();
    primary.wait().unwrap();
    for i in 0..10 {
        put_ok(&config, &format!("during-{i}"), "v");
    }
    // It comes back with its own sealed state (SPEC §10) and catches up on what it missed.
    replicas.0[0] = Some(start_replica(&config, 0));
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..6 {
        put_ok(&config, &format!("after-{i}"), "v");
    }
    // Now a different replica dies: 0 must carry its share.
    let mut other = replicas.0[2].take().unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    for i in 0..6 {
        put_ok(&config, &format!("last-{i}"), "v");
    }
    let get = client(&config, &["get", "during-9"]);
    assert_eq!(stdout(&get), "v");

    let restarted = replicas.0[0].take().unwrap();
    signal(&restarted, "-TERM");
    let out = restarted.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let line = log.lines().find(|l| l.contains("stopped")).unwrap_or_default().to_owned();
    assert!(!line.contains(" 0 state transfers"), "the restarted replica did no state transfer: {line}");
    assert!(!line.contains("view 0,"), "the restarted replica never learned the new view: {line}");
}
