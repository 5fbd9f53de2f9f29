//! The `process` backend (SPEC §5.1) as a user runs it: `replica --backend process` starts
//! three sandboxed compartment processes. Checked from outside, through `/proc`: each is
//! under a seccomp filter with no new privileges; the broker's memory holds no compartment
//! key and each compartment's only its own; a forbidden system call gets a compartment
//! killed by the kernel, reported and restarted; `kill -9` of a compartment under load
//! loses no acknowledged write; with durable state (the default, SPEC §10) a compartment
//! process, or the whole replica, killed with `kill -9` comes back with its sealed state.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use splitbft_testkit::process::{self, Replicas, children, kill_tree, try_http_get};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

fn client(config: &Path, args: &[&str]) -> Output {
    process::client(BIN, config, args)
}
const KINDS: [&str; 3] = ["preparation", "confirmation", "execution"];

fn keygen(dir: &Path, extra: &[&str]) -> PathBuf {
    process::keygen(BIN, dir, 4, extra)
}

fn start_replica(config: &Path, id: u32, extra: &[&str]) -> Child {
    process::start_replica(BIN, config, id, &[&["--backend", "process"], extra].concat())
}

fn put_ok(config: &Path, key: &str, value: &str) {
    let out = client(config, &["put", key, value]);
    assert!(out.status.success(), "put {key} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait_until_serving(config: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client(config, &["put", "warmup", "1"]).status.success() {
        assert!(Instant::now() < deadline, "cluster never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pid of replica `replica`'s `kind` compartment process (waiting for it to exist).
fn compartment_pid(replica: &Child, kind: &str, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = children(replica.id()).into_iter().find(|(pid, cmd)| {
            cmd.contains(" enclave ") && cmd.contains(&format!("--kind {kind} ")) && Some(*pid) != not
        });
        if let Some((pid, _)) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "no {kind} compartment process under replica {}", replica.id());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Checks `pid` is sandboxed, waiting a little: a compartment process sandboxes itself once
/// it has loaded its key, before its first input.
fn assert_sandboxed(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_field(pid, "Seccomp") != "2" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_field(pid, "Seccomp"), "2", "process {pid} is not in seccomp filter mode");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "process {pid} may gain privileges");
}

/// A secret as it may sit in memory: raw, and as the hex text of its key file.
struct Secret {
    name: String,
    raw: Vec<u8>,
    hex: Vec<u8>,
}

fn secret(path: &Path, name: &str) -> Secret {
    let text = std::fs::read_to_string(path).unwrap();
    let hex = text.trim().to_owned();
    let raw = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    Secret { name: name.into(), raw, hex: hex.into_bytes() }
}

/// Which of `secrets` (raw or hex) occur anywhere in `pid`'s readable memory.
fn secrets_in_memory(pid: u32, secrets: &[Secret]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = vec![false; secrets.len()];
    let mut scanned = 0u64;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else { continue };
        let path = parts.nth(3).unwrap_or("");
        if !perms.starts_with('r') || path.starts_with("[v") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        scanned += region.len() as u64;
        for (i, s) in secrets.iter().enumerate() {
            found[i] |=
                memchr::memmem::find(&region, &s.raw).is_some() || memchr::memmem::find(&region, &s.hex).is_some();
        }
    }
    assert!(scanned > 1 << 20, "scanned only {scanned} bytes of process {pid}");
    secrets.iter().zip(found).filter(|(_, f)| *f).map(|(s, _)| s.name.clone()).collect()
}

/// The number after `prefix` in the replica's "stopped: view V, … executed, T state
/// transfers" line.
fn stopped_field(log: &str, prefix: &str) -> u64 {
    let line = log.lines().find(|l| l.contains(" stopped: view ")).unwrap_or_else(|| panic!("no stop line: {log}"));
    let at = line.find(prefix).unwrap() + prefix.len();
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn is_root() -> bool {
    status_field(std::process::id(), "Uid").split_whitespace().nth(1) == Some("0")
}

fn stop(mut replica: Child) -> String {
    let status = Command::new("kill").args(["-TERM", &replica.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "replica did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    replica.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(replica.wait().unwrap().success(), "replica failed: {err}");
    err
}

/// SPEC §5.1: three sandboxed compartment processes per replica, each holding only its own
/// key; the broker holds none.
#[test]
fn compartments_are_sandboxed_and_hold_only_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path(), &[]);
    let mut replicas = Replicas((0..4).map(|i| Some(start_replica(&config, i, &[]))).collect());
    wait_until_serving(&config);
    put_ok(&config, "k", "v");

    let keys = dir.path().join("keys");
    let secrets: Vec<Secret> = KINDS
        .iter()
        .map(|k| secret(&keys.join(format!("replica-0-{k}.key")), k))
        .chain([secret(&keys.join("replica-0-execution-group.key"), "execution-group")])
        .collect();
    let broker = replicas.0[0].as_ref().unwrap();
    let pids: Vec<u32> = KINDS.iter().map(|k| compartment_pid(broker, k, None)).collect();
    for &pid in &pids {
        assert_sandboxed(pid);
    }
    // Not sandboxed itself, the broker is the control: a compartment key found there
    // would mean it was loaded or passed through the broker.
    assert_eq!(secrets_in_memory(broker.id(), &secrets), Vec::<String>::new(), "broker memory holds secrets");
    if is_root() {
        // Compartments are not dumpable: only a privileged reader sees their memory.
        assert_eq!(secrets_in_memory(pids[0], &secrets), vec!["preparation"]);
        assert_eq!(secrets_in_memory(pids[1], &secrets), vec!["confirmation"]);
        assert_eq!(secrets_in_memory(pids[2], &secrets), vec!["execution", "execution-group"]);
    } else {
        eprintln!("not root: the compartments' own memory (not dumpable) was not scanned");
    }
    for r in replicas.0.iter_mut() {
        let out = stop(r.take().unwrap());
        assert!(out.contains("0 compartment process restarts"), "{out}");
    }
}

/// A compartment that tries `socket()` or `open()` is killed by the kernel (SIGSYS from the
/// seccomp filter); the broker reports it, starts it again, sandboxed, and the replica
/// serves on.
#[test]
fn forbidden_system_calls_kill_the_compartment_and_it_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path(), &[]);
    let probes = ["--test-probe", "preparation:socket", "--test-probe", "execution:open"];
    let mut replicas =
        Replicas((0..4).map(|i| Some(start_replica(&config, i, if i == 1 { &probes[..] } else { &[] }))).collect());
    wait_until_serving(&config);
    let victim = replicas.0[1].as_ref().unwrap();
    // Both probing processes die on their first input; fresh ones (incarnation 1) follow.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kids = children(victim.id());
        let restarted = ["preparation", "execution"]
            .iter()
            .all(|k| kids.iter().any(|(_, c)| c.contains(&format!("--kind {k} ")) && c.contains("--incarnation 1")));
        if restarted {
            break;
        }
        assert!(Instant::now() < deadline, "compartments were not restarted: {kids:?}");
        put_ok(&config, "nudge", "1");
    }
    for kind in KINDS {
        assert_sandboxed(compartment_pid(victim, kind, None));
    }
    for i in 0..20 {
        put_ok(&config, &format!("after-{i}"), "v");
    }
    let get = client(&config, &["get", "after-19"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
    let log = stop(replicas.0[1].take().unwrap());
    assert_eq!(log.matches("compartment process died and was restarted").count(), 2, "{log}");
    assert!(log.contains("killed by SIGSYS (seccomp: forbidden system call)"), "{log}");
    assert!(log.contains("2 compartment process restarts (2 seccomp kills)"), "{log}");
    assert!(!log.contains("sandbox probe survived"), "{log}");
}

/// `kill -9` of compartment processes under load (a backup's Execution, then the
/// primary's Preparation) with durable state (the default, SPEC §10): the cluster keeps
/// serving, the compartments come back with their sealed state, and every acknowledged
/// write is still there.
#[test]
fn kill_9_of_durable_compartments_under_load_loses_no_acknowledged_write() {
    let (log0, log2) = kill_9_of_compartments_under_load(&[]);
    // Both came back from their sealed records: the primary's Preparation remembered the
    // sequence numbers it had assigned.
    for log in [&log0, &log2] {
        assert!(log.contains("restarted compartment process resumes from its sealed state"), "{log}");
    }
}

/// The same without durable state: the restarted compartments start from their
/// configuration, behind the recovery fence, and catch up; the restarted primary
/// Preparation forgot its sequence numbers, so its replica suspects its view.
#[test]
fn kill_9_of_compartments_without_durable_state_under_load_loses_no_acknowledged_write() {
    let (_, log2) = kill_9_of_compartments_under_load(&["--no-durable"]);
    // Usually the cluster changes view; not always: when the batches already in flight
    // carry the stable checkpoint past the fence's horizon, the fence lifts and the
    // restarted Preparation orders again in view 0 (SPEC §10). Shown, not asserted.
    eprintln!("replica 2's final view: {}", stopped_field(&log2, "view "));
}

/// Kills replica 2's Execution and then replica 0's Preparation under load; checks every
/// acknowledged write; returns replica 0's and replica 2's logs.
fn kill_9_of_compartments_under_load(extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path(), &["--checkpoint-interval", "8"]);
    let mut replicas = Replicas((0..4).map(|i| Some(start_replica(&config, i, extra))).collect());
    wait_until_serving(&config);

    // Load: three clients writing distinct keys back to back, recording what was acknowledged.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..4)
        .map(|c| {
            let (config, stop_load) = (config.clone(), stop_load.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop_load.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("c{c}-{i}");
                    let out = client(&config, &["--client-id", &c.to_string(), "put", &key, &format!("v{i}")]);
                    if out.status.success() {
                        acked.push((key, format!("v{i}")));
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let backup = replicas.0[2].as_ref().unwrap();
    let execution = compartment_pid(backup, "execution", None);
    assert!(Command::new("kill").args(["-9", &execution.to_string()]).status().unwrap().success());
    let new_execution = compartment_pid(backup, "execution", Some(execution));
    assert_sandboxed(new_execution);
    std::thread::sleep(Duration::from_secs(3));
    let primary = replicas.0[0].as_ref().unwrap();
    let preparation = compartment_pid(primary, "preparation", None);
    assert!(Command::new("kill").args(["-9", &preparation.to_string()]).status().unwrap().success());
    let new_preparation = compartment_pid(primary, "preparation", Some(preparation));
    assert_sandboxed(new_preparation);
    std::thread::sleep(Duration::from_secs(8));
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<(String, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() > 20, "only {} writes acknowledged under load", acked.len());
    // Served after both kills, and nothing acknowledged was lost.
    put_ok(&config, "final", "1");
    for (key, value) in &acked {
        let get = client(&config, &["get", key]);
        assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), value, "acknowledged write {key} lost");
    }
    let log2 = stop(replicas.0[2].take().unwrap());
    assert!(log2.contains("1 compartment process restarts (0 seccomp kills)"), "{log2}");
    let log0 = stop(replicas.0[0].take().unwrap());
    assert!(log0.contains("1 compartment process restarts (0 seccomp kills)"), "{log0}");
    assert!(log0.contains("killed by SIGKILL"), "{log0}");
    // Whether the restarted Execution needed a state transfer depends on how far the load
    // moved on while it was down (a stable checkpoint past it); shown, not asserted.
    eprintln!("replica 2 state transfers: {}", stopped_field(&log2, "executed, "));
    (log0, log2)
}

/// Software attestation binds the Execution measurement to the executable (SPEC §6): an
/// Execution compartment process started under a cluster file attesting another binary
/// refuses to serve; under the right one it starts, sandboxes itself and exits cleanly
/// when its input closes.
#[test]
fn execution_process_serves_only_under_its_own_binary_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path(), &[]);
    let run = |config: &Path| {
        Command::new(BIN)
            .args(["enclave", "--kind", "execution", "--id", "0", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = run(&config);
    assert!(ok.status.success(), "{:?}: {}", ok.status, String::from_utf8_lossy(&ok.stderr));

    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().find(|l| l.starts_with("execution_measurement")).unwrap();
    let other = format!("execution_measurement = \"{}\"", "ab".repeat(32));
    let forged = dir.path().join("other.toml");
    std::fs::write(&forged, text.replace(line, &other)).unwrap();
    let refused = run(&forged);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("this executable measures"));
}

/// What replica's `/healthz` says, once every compartment answers (a restarted one
/// included: the broker forgets a dead process's stats).
struct Health {
    last_executed: u64,
    recovering: bool,
}

fn healthy(metrics: SocketAddr) -> Health {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = try_http_get(metrics, "/healthz").unwrap_or((0, "not listening".into()));
        if status == 200 {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            return Health {
                last_executed: json["last_executed"].as_u64().unwrap(),
                recovering: json["recovering"].as_bool().unwrap(),
            };
        }
        assert!(Instant::now() < deadline, "replica never healthy: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SPEC §10 with the process backend: each compartment process of a durable replica,
/// killed with `kill -9` while the cluster is idle, comes back with its sealed state — its
/// last executed sequence number, no recovery fence — which neither state transfer nor
/// the fence could give it with no traffic to catch up from; then the whole replica,
/// killed with `kill -9` and started again, resumes from its disk. Every acknowledged
/// write is still there.
#[test]
fn durable_compartment_processes_resume_from_their_sealed_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path(), &["--checkpoint-interval", "8"]);
    let metrics: SocketAddr = format!("127.0.0.1:{}", process::free_ports(1)).parse().unwrap();
    let metrics_arg = metrics.to_string();
    let with_metrics = ["--metrics", metrics_arg.as_str()];
    let start = |i: u32| start_replica(&config, i, if i == 2 { &with_metrics[..] } else { &[] });
    let mut replicas = Replicas((0..4).map(|i| Some(start(i))).collect());
    wait_until_serving(&config);
    let mut acked = Vec::new();
    for i in 0..30 {
        put_ok(&config, &format!("k{i}"), &format!("v{i}"));
        acked.push(i);
    }
    // Replica 2 may trail the f + 1 replies a client waits for: wait until it is still.
    let mut executed = healthy(metrics).last_executed;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = healthy(metrics).last_executed;
        if now == executed {
            break;
        }
        executed = now;
    }
    assert!(executed > 8, "replica 2 executed only {executed} batches");

    for kind in KINDS {
        let broker = replicas.0[2].as_ref().unwrap();
        let old = compartment_pid(broker, kind, None);
        assert!(Command::new("kill").args(["-9", &old.to_string()]).status().unwrap().success());
        let new = compartment_pid(broker, kind, Some(old));
        assert_sandboxed(new);
        let health = healthy(metrics);
        assert_eq!(health.last_executed, executed, "after kill -9 of its {kind} process");
        assert!(!health.recovering, "the restarted {kind} process is behind the fence or transferring state");
    }

    // The whole replica: broker and compartments.
    let mut whole = replicas.0[2].take().unwrap();
    kill_tree(&mut whole);
    replicas.0[2] = Some(start(2));
    let health = healthy(metrics);
    assert_eq!(health.last_executed, executed, "after kill -9 of the whole replica");
    assert!(!health.recovering);

    // It takes part again: it executes what the cluster orders next, and every acknowledged
    // write reads back.
    for i in 30..40 {
        put_ok(&config, &format!("k{i}"), &format!("v{i}"));
        acked.push(i);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while healthy(metrics).last_executed < executed + 10 {
        assert!(Instant::now() < deadline, "the restarted replica does not execute new batches");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in acked {
        let get = client(&config, &["get", &format!("k{i}")]);
        assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), format!("v{i}"), "acknowledged write k{i} lost");
    }
    let log = stop(replicas.0[2].take().unwrap());
    assert!(log.contains("0 compartment process restarts"), "{log}");
    assert!(!log.contains(": 0 bytes of sealed state read from disk"), "{log}");
}
