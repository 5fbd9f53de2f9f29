//! Confidentiality against the environment (SPEC §1.1, §6), observed from outside: a
//! 4-process cluster on loopback, `tcpdump` capturing every packet while `client put`
//! writes a distinctive value and `client get` reads it back. The value must never appear
//! in the capture (clients ↔ brokers ↔ brokers, including checkpoints and their snapshots)
//! nor in anything the replica processes write (their output streams, the cluster
//! directory), while `get` still returns it.
//!
//! Needs `tcpdump` and the right to capture (root or CAP_NET_RAW), so it is not part of a
//! plain `cargo test`; `.ci/run` installs tcpdump and runs it with `--ignored`. Where it runs
//! it never skips: a missing tcpdump is a failure.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use splitbft_testkit::process::{self, Processes as Kill};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

fn free_base_port() -> u16 {
    process::free_ports(4)
}

fn client(config: &Path, args: &[&str]) -> Output {
    process::client(BIN, config, args)
}
/// What the client writes: long and unlikely enough that any occurrence is a leak.
const SECRET: &str = "zq-CONFIDENTIAL-8f3a91c2e7-splitbft-value";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What one run under capture left behind.
struct Run {
    /// The pcap file's bytes.
    captured: Vec<u8>,
    /// Every other file written in the run's directory (replica output, cluster files).
    written: Vec<(std::path::PathBuf, Vec<u8>)>,
    /// tcpdump's report (packets captured, dropped).
    report: String,
}

#[cfg(unix)]
#[test]
#[ignore = "needs tcpdump and capture rights; run by .ci/run with --ignored"]
fn the_value_never_crosses_the_wire_or_the_disk_in_clear() {
    let run = run_under_capture(true);
    assert!(!contains(&run.captured, SECRET.as_bytes()), "the value crossed loopback in clear");
    assert!(!contains(&run.captured, b"CONFIDENTIAL-8f3a91c2e7"), "part of the value crossed loopback in clear");
    assert!(
        contains(&run.captured, CLEAR_MARKER),
        "control failed: bytes sent in clear to a replica port are not in the capture, so its absence of the value proves nothing ({})",
        run.report
    );
    for (file, bytes) in &run.written {
        assert!(!contains(bytes, SECRET.as_bytes()), "{} holds the value in clear", file.display());
    }
}

/// What a stranger sends in clear to a replica port during the capture: the control that
/// shows the capture would hold the value had it crossed in clear. (The earlier control ran
/// the cluster with `--no-confidential` and found the value; since the transport encrypts
/// every frame (SPEC §11) it no longer crosses in clear either way.)
const CLEAR_MARKER: &[u8] = b"zq-CLEAR-CONTROL-5b7e0d9a41-bytes-in-clear";

fn run_under_capture(confidential: bool) -> Run {
    let tcpdump = Command::new("tcpdump").arg("--version").output();
    assert!(
        tcpdump.as_ref().is_ok_and(|o| o.status.success()),
        "tcpdump is required (apt-get install -y tcpdump): {tcpdump:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let cluster_dir = dir.path().join("cluster");
    // K = 2: checkpoints (and their sealed snapshots) happen during the test.
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--clients", "2", "--checkpoint-interval", "2"])
        .args(["--base-port", &base.to_string(), "--out"])
        .arg(&cluster_dir)
        .args((!confidential).then_some("--no-confidential"))
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("software attestation"));
    let config = cluster_dir.join("cluster.toml");

    let pcap = dir.path().join("loopback.pcap");
    let filter = format!("tcp portrange {}-{}", base, base + 3);
    let mut guard = Kill(Vec::new());
    guard.0.push(
        Command::new("tcpdump")
            // --immediate-mode: packets reach tcpdump as they come, not in blocks that
            // SIGINT discards; without it the last second of traffic (the control, the
            // get's reply) was missing from the capture.
            .args(["-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(&pcap)
            .arg(&filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // tcpdump writes the pcap header once it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&pcap).map_or(true, |m| m.len() == 0) {
        assert!(Instant::now() < deadline, "tcpdump did not start capturing");
        std::thread::sleep(Duration::from_millis(50));
    }

    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..4 {
        let stdout = std::fs::File::create(logs.join(format!("replica-{i}.out"))).unwrap();
        let stderr = std::fs::File::create(logs.join(format!("replica-{i}.err"))).unwrap();
        guard.0.push(
            Command::new(BIN)
                .args(["replica", "--config"])
                .arg(&config)
                .args(["--id", &i.to_string()])
                .env("RUST_LOG", "debug")
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap(),
        );
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let put = loop {
        let out = client(&config, &["put", "secret-key", SECRET]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(put.status.success(), "put failed: {}", String::from_utf8_lossy(&put.stderr));
    // More writes, so that checkpoints with the value in their snapshot cross the wire too.
    for i in 0..4 {
        let out = client(&config, &["--client-id", "1", "put", &format!("filler-{i}"), "x"]);
        assert!(out.status.success(), "filler put failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let get = client(&config, &["get", "secret-key"]);
    assert!(get.status.success(), "get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), SECRET, "get returns the value");

    // The control: a stranger's clear bytes to replica 0's port (it closes the connection
    // after the failed handshake; the bytes crossed loopback all the same).
    {
        use std::io::Write;
        let mut stranger = std::net::TcpStream::connect(("127.0.0.1", base)).unwrap();
        let mut frame = (CLEAR_MARKER.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(CLEAR_MARKER);
        stranger.write_all(&frame).unwrap();
        stranger.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let in-flight frames land in the capture, then stop everything.
    std::thread::sleep(Duration::from_millis(500));
    for child in guard.0.iter().skip(1) {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    for mut child in guard.0.drain(1..) {
        let _ = child.wait();
    }
    let _ = Command::new("kill").args(["-INT", &guard.0[0].id().to_string()]).status();
    let tcpdump = guard.0.pop().unwrap().wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&tcpdump.stderr).into_owned();

    let captured = std::fs::read(&pcap).unwrap();
    // The capture really saw the cluster's traffic (PrePrepares, batches, checkpoints and
    // replies of six client operations are tens of kilobytes).
    assert!(
        captured.len() > 10_000,
        "capture too small to be the cluster's traffic: {} bytes; {report}",
        captured.len()
    );
    let written = files(dir.path())
        .into_iter()
        .filter(|f| *f != pcap)
        .map(|f| {
            let bytes = std::fs::read(&f).unwrap();
            (f, bytes)
        })
        .collect();
    Run { captured, written, report }
}
