//! SPEC §10 with real processes: four `replica` processes with durable state (the default)
//! under a concurrent put/get workload; SIGKILL all four at once and restart them, or
//! SIGKILL each in turn. Every acknowledged write must be read back, and every read made
//! after a write was acknowledged must see it (each key is written once with one value, so
//! this is the linearizability condition for this history).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use splitbft_testkit::process::{self, Replicas, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

fn free_base_port() -> u16 {
    process::free_ports(4)
}

fn start_replica(config: &Path, id: u32) -> Child {
    process::start_replica(BIN, config, id, &[])
}

fn start_replica_on(config: &Path, id: u32, backend: &str) -> Child {
    process::start_replica(BIN, config, id, &["--backend", backend])
}

fn client(config: &Path, id: u32, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["client", "--config"])
        .arg(config)
        .args(["--client-id", &id.to_string(), "--timeout-s", "15"])
        .args(args)
        .output()
        .expect("client runs")
}

fn cluster(clients: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--clients", &clients.to_string(), "--checkpoint-interval", "4"])
        .args(["--base-port", &free_base_port().to_string(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("cluster.toml");
    (dir, config)
}

/// An acknowledged write: key, value, when its acknowledgement arrived.
type Acked = Arc<Mutex<Vec<(String, String, Instant)>>>;

/// Writers (clients 1..=writers) put fresh keys; a reader (client 0) reads keys whose write
/// was acknowledged before the read began and records any read that does not see it.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Acked,
    violations: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(config: &Path, writers: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for w in 1..=writers {
            let (config, stop, acked) = (config.to_path_buf(), stop.clone(), acked.clone());
            threads.push(std::thread::spawn(move || {
                let mut j = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("w{w}-{j}"), format!("value-{w}-{j}"));
                    let out = client(&config, w, &["put", &key, &value]);
                    if out.status.success() && stdout(&out) == "OK" {
                        acked.lock().unwrap().push((key, value, Instant::now()));
                    }
                    // A failed put may still have executed: its key is never read as
                    // acknowledged, and a fresh key is used next.
                    j += 1;
                }
            }));
        }
        let (config2, stop2, acked2, violations2) =
            (config.to_path_buf(), stop.clone(), acked.clone(), violations.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let pick = {
                    let acked = acked2.lock().unwrap();
                    (!acked.is_empty()).then(|| acked[i % acked.len()].clone())
                };
                i = i.wrapping_mul(31).wrapping_add(7);
                let Some((key, value, _)) = pick else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let out = client(&config2, 0, &["get", &key]);
                let got = stdout(&out);
                let err = String::from_utf8_lossy(&out.stderr);
                // A read that timed out (cluster down) observed nothing; any answer must be
                // the acknowledged value.
                if out.status.success() && got != value || err.contains("not found") {
                    violations2.lock().unwrap().push(format!("get {key}: {got:?} / {err}, expected {value:?}"));
                }
            }
        }));
        Workload { stop, acked, violations, threads }
    }

    fn acked_since(&self, since: Instant) -> usize {
        self.acked.lock().unwrap().iter().filter(|(_, _, at)| *at > since).count()
    }

    fn finish(self, config: &Path) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let violations = self.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "reads missed acknowledged writes: {violations:?}");
        let acked = self.acked.lock().unwrap().clone();
        for (key, value, _) in &acked {
            let out = client(config, 0, &["get", key]);
            assert_eq!(stdout(&out), *value, "acknowledged write {key} lost: {}", String::from_utf8_lossy(&out.stderr));
        }
        acked.len()
    }
}

fn wait_up(config: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client(config, 0, &["put", "warmup", "1"]).status.success() {
        assert!(Instant::now() < deadline, "cluster never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `n` writes were acknowledged after `since` (or fails after a minute).
fn wait_progress(workload: &Workload, since: Instant, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while workload.acked_since(since) < n {
        assert!(Instant::now() < deadline, "no progress: {} writes acknowledged", workload.acked_since(since));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm_report(child: Child) -> String {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whole-cluster SIGKILL under load, then restart. On 1e031c1 about half the runs made no
/// progress after the restart: a batch committed and executed at one replica just before
/// the kill was held only in memory elsewhere and in that replica's sealed Execution
/// journal, so the NewView that re-proposed it by digest could never execute. Replicas now
/// log a batch before their Prepare for it leaves (SPEC §10, `wal.rs`).
#[cfg(unix)]
#[test]
fn sigkill_of_all_four_replicas_loses_no_acknowledged_write() {
    sigkill_of_all_four("thread");
}

/// The same with every compartment in its own process (SPEC §5.1): the brokers and their
/// compartment processes all killed, each compartment process restored from the sealed
/// records its broker hands it.
#[cfg(target_os = "linux")]
#[test]
fn sigkill_of_all_four_process_backend_replicas_loses_no_acknowledged_write() {
    sigkill_of_all_four("process");
}

fn sigkill_of_all_four(backend: &str) {
    let (_dir, config) = cluster(3);
    let mut replicas = Replicas((0..4).map(|i| Some(start_replica_on(&config, i, backend))).collect());
    wait_up(&config);
    let workload = Workload::start(&config, 2);
    wait_progress(&workload, Instant::now(), 10);
    // All four at once, with their compartment processes (if any).
    for child in replicas.0.iter_mut().filter_map(Option::take) {
        let mut child = child;
        process::kill_tree(&mut child);
    }
    let before = workload.acked.lock().unwrap().len();
    replicas.0 = (0..4).map(|i| Some(start_replica_on(&config, i, backend))).collect();
    let restarted = Instant::now();
    wait_progress(&workload, restarted, 10);
    let total = workload.finish(&config);
    assert!(total >= before + 10);
    for child in replicas.0.iter_mut().filter_map(Option::take) {
        let report = sigterm_report(child);
        eprintln!("{}", report.lines().filter(|l| l.contains("bytes")).collect::<Vec<_>>().join("\n"));
        assert!(report.contains("stopped"), "{report}");
    }
    eprintln!("{before} writes acknowledged before the crash, {total} in all, all read back");
}

#[cfg(unix)]
#[test]
fn rolling_sigkill_of_each_replica_loses_no_acknowledged_write() {
    let (_dir, config) = cluster(3);
    let mut replicas = Replicas((0..4).map(|i| Some(start_replica(&config, i))).collect());
    wait_up(&config);
    let workload = Workload::start(&config, 2);
    wait_progress(&workload, Instant::now(), 5);
    for i in 0..4 {
        let mut child = replicas.0[i].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        wait_progress(&workload, Instant::now(), 3);
        replicas.0[i] = Some(start_replica(&config, i as u32));
        // Let it catch up before the next one goes down (f = 1).
        std::thread::sleep(Duration::from_secs(2));
        wait_progress(&workload, Instant::now(), 3);
    }
    let total = workload.finish(&config);
    for child in replicas.0.iter_mut().filter_map(Option::take) {
        let report = sigterm_report(child);
        eprintln!("{}", report.lines().filter(|l| l.contains("bytes")).collect::<Vec<_>>().join("\n"));
    }
    eprintln!("{total} writes acknowledged, all read back");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The last "N state transfers" a replica reported when it stopped.
fn state_transfers(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.split(", ").find_map(|part| part.strip_suffix(" state transfers")?.parse().ok()))
        .unwrap_or_else(|| panic!("no state transfer figure in {report}"))
}

/// SPEC §10 rollback: the host puts back an old copy of a replica's sealed state (the
/// monotonic counters have moved on). Its Preparation and Confirmation start without state
/// behind the recovery fence and its Execution without state; the replica catches up by
/// state transfer and is then needed for progress (another replica is killed).
#[cfg(unix)]
#[test]
fn a_replica_whose_state_is_rolled_back_catches_up_and_carries_the_cluster() {
    let (dir, config) = cluster(3);
    let mut replicas = Replicas((0..4).map(|i| Some(start_replica(&config, i))).collect());
    wait_up(&config);
    let workload = Workload::start(&config, 2);
    wait_progress(&workload, Instant::now(), 5);
    let state = dir.path().join("data").join("replica-3").join("state");
    let old = dir.path().join("old-state");
    // Copied while the replica writes: a torn tail in the copy is cut on start.
    copy_dir(&state, &old);
    // Checkpoints every 4 requests: many images (and counter raises) after the copy.
    wait_progress(&workload, Instant::now(), 30);
    let mut child = replicas.0[3].take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&old, &state);
    replicas.0[3] = Some(start_replica(&config, 3));
    wait_progress(&workload, Instant::now(), 20);
    std::thread::sleep(Duration::from_secs(2));
    // Without replica 0, every quorum needs replica 3.
    let mut child = replicas.0[0].take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_progress(&workload, Instant::now(), 10);
    let total = workload.finish(&config);
    let report = sigterm_report(replicas.0[3].take().unwrap());
    assert!(report.contains("rolled back"), "the rollback is reported: {report}");
    assert!(state_transfers(&report) >= 1, "{report}");
    for child in replicas.0.iter_mut().filter_map(Option::take) {
        sigterm_report(child);
    }
    eprintln!("{total} writes acknowledged, all read back");
}

/// SPEC §10 for the ledger: blocks are synced with the round, read back on start, and
/// blocks written again by a replica that re-executes are not duplicated. After every
/// replica is SIGKILLed mid-workload and restarted, `ledger verify` passes on all four
/// data directories and the chains agree.
#[cfg(unix)]
#[test]
fn ledger_chains_verify_and_agree_after_sigkill_of_all_four() {
    let (dir, config) = cluster(3);
    let ledger = ["--app", "ledger"];
    let mut replicas = Replicas((0..4).map(|i| Some(process::start_replica(BIN, &config, i, &ledger))).collect());
    wait_up(&config);
    let workload = Workload::start(&config, 2);
    wait_progress(&workload, Instant::now(), 15);
    for child in replicas.0.iter_mut().flatten() {
        child.kill().unwrap();
    }
    for mut child in replicas.0.iter_mut().filter_map(Option::take) {
        child.wait().unwrap();
    }
    replicas.0 = (0..4).map(|i| Some(process::start_replica(BIN, &config, i, &ledger))).collect();
    wait_progress(&workload, Instant::now(), 15);
    let total = workload.finish(&config);
    for child in replicas.0.iter_mut().filter_map(Option::take) {
        sigterm_report(child);
    }
    let mut verify = Command::new(BIN);
    verify.args(["ledger", "verify", "--config"]).arg(&config);
    for r in 0..4 {
        verify
            .args(["--replica", &r.to_string(), "--data-dir"])
            .arg(dir.path().join("data").join(format!("replica-{r}")));
    }
    let out = verify.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("chains agree at every common height"), "{text}");
    eprintln!("{total} writes acknowledged; ledger verify:\n{text}");
}
