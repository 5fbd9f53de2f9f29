//! Crash-point tests of the write-ahead log (SPEC §10) on the fault-injecting storage
//! (`storage::faulty`): seeded loops crash the machine at random points around the write
//! path — torn writes, lost unsynced writes, a process dying between two operations of a
//! commit (roll, compaction), failed fsyncs — and reopen. What must hold:
//! * no record whose commit returned (whose round's outputs could have left) is lost, and
//!   what comes back is exactly the log's content up to some point at or after that;
//! * a torn or corrupt tail is detected by its checksum and cut;
//! * a corrupt record with good records after it is a startup error naming the file;
//! * a failed fsync is an error, the log refuses everything after it, and the writer thread
//!   reports it and never reports a later round durable.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use splitbft_broker::commit::{Committer, Round, Synced, Writer};
use splitbft_broker::storage::SharedStorage;
use splitbft_broker::storage::faulty::FaultyStorage;
use splitbft_broker::wal::{MonotonicCounter, Recovered, SoftwareCounter, Wal, WalError};
use splitbft_types::CompartmentKind;
use splitbft_types::durable::{RecordKind, SealedState};

/// Small segments, so that runs roll and compact many times.
const SEGMENT: u64 = 4 * 1024;
/// Seeds per test: each is one independent run of several crash cycles.
const SEEDS: u64 = 300;
const CRASHES_PER_SEED: usize = 4;

const DATA: &str = "/data/replica-0";

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

fn open(storage: &FaultyStorage) -> Result<(Wal, Recovered), WalError> {
    Wal::open_on(Arc::new(storage.clone()) as SharedStorage, Path::new(DATA), SEGMENT)
}

/// A random record of a random compartment; its index is its position in the whole run.
fn record(rng: &mut ChaCha8Rng, index: u64) -> (CompartmentKind, SealedState) {
    let kind = CompartmentKind::ALL[below(rng, 3) as usize];
    let image = below(rng, 8) == 0;
    let len = if below(rng, 20) == 0 { 1500 } else { 1 + below(rng, 200) as usize };
    let state = SealedState {
        kind: if image { RecordKind::Image } else { RecordKind::Delta },
        epoch: index,
        index,
        sealed: (0..len).map(|i| (index as usize + i) as u8).collect(),
    };
    (kind, state)
}

/// What a log holding exactly `records` must give back (SPEC §10): per compartment its
/// latest image and the deltas after it.
fn expected(records: &[(CompartmentKind, SealedState)]) -> Recovered {
    let mut out: Recovered = Default::default();
    for (kind, state) in records {
        let k = kind.index();
        if state.kind == RecordKind::Image {
            out[k].clear();
        }
        if !out[k].is_empty() || state.kind == RecordKind::Image {
            out[k].push(state.clone());
        }
    }
    out
}

/// The longest prefix length `m` in `committed..=written.len()` whose content is what came
/// back, or a description of the loss.
fn matching_prefix(
    recovered: &Recovered,
    written: &[(CompartmentKind, SealedState)],
    committed: usize,
) -> Result<usize, String> {
    (committed..=written.len()).rev().find(|m| expected(&written[..*m]) == *recovered).ok_or_else(|| {
        let got: Vec<Vec<u64>> = recovered.iter().map(|r| r.iter().map(|s| s.index).collect()).collect();
        let want: Vec<Vec<u64>> =
            expected(&written[..committed]).iter().map(|r| r.iter().map(|s| s.index).collect()).collect();
        format!("recovered {got:?} is no prefix at or after the committed one {want:?}")
    })
}

#[test]
fn no_committed_record_is_lost_at_any_crash_point() {
    let (mut torn_cut, mut died_in_commit, mut failed_syncs) = (0, 0, 0);
    for seed in 0..SEEDS {
        let rng = &mut ChaCha8Rng::seed_from_u64(seed);
        let storage = FaultyStorage::new();
        let mut written: Vec<(CompartmentKind, SealedState)> = Vec::new();
        let mut committed = 0usize;
        for crash in 0..=CRASHES_PER_SEED {
            let (mut wal, recovered) = open(&storage).unwrap_or_else(|e| panic!("seed {seed}, crash {crash}: {e}"));
            let m = matching_prefix(&recovered, &written, committed)
                .unwrap_or_else(|e| panic!("seed {seed}, after crash {crash}: {e}"));
            torn_cut += u64::from(wal.torn_tail_bytes > 0);
            written.truncate(m);
            committed = m;
            if crash == CRASHES_PER_SEED {
                break;
            }
            // Arm one fault for this life of the process.
            match below(rng, 3) {
                0 => storage.die_at_op(1 + below(rng, 80)),
                1 => storage.fail_sync_at(1 + below(rng, 10)),
                _ => {}
            }
            'life: for _ in 0..1 + below(rng, 40) {
                for _ in 0..1 + below(rng, 4) {
                    let (kind, state) = record(rng, written.len() as u64);
                    if wal.append(kind, &state).is_err() {
                        break 'life;
                    }
                    written.push((kind, state));
                }
                let ops = storage.ops();
                let syncs = storage.syncs();
                match wal.commit() {
                    Ok(()) => {
                        committed = written.len();
                        // Compaction after the commit (as the writer runs it): a crash in
                        // it may leave old segments, never lose a committed record.
                        if let Err(e) = wal.compact() {
                            assert!(e.to_string().contains("/data/replica-0/state"), "seed {seed}: {e}");
                            assert!(matches!(wal.commit(), Err(WalError::Poisoned(_))), "seed {seed}");
                            break 'life;
                        }
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("/data/replica-0/state"), "seed {seed}: {e}");
                        // The log takes nothing after a failed commit.
                        let (kind, state) = record(rng, written.len() as u64);
                        assert!(matches!(wal.append(kind, &state), Err(WalError::Poisoned(_))), "seed {seed}");
                        assert!(matches!(wal.commit(), Err(WalError::Poisoned(_))), "seed {seed}");
                        died_in_commit += u64::from(storage.ops() > ops + 1);
                        failed_syncs += u64::from(storage.syncs() == syncs);
                        break 'life;
                    }
                }
            }
            drop(wal);
            // The machine goes down: each file keeps none, some or all of what was not synced.
            let choice = below(rng, 3);
            let mut r = ChaCha8Rng::seed_from_u64(rng.next_u64());
            storage.crash(|_, unsynced| match choice {
                0 => 0,
                1 => below(&mut r, unsynced as u64 + 1) as usize,
                _ => unsynced,
            });
        }
    }
    // The loop did reach the interesting points.
    assert!(torn_cut > 20, "torn tails cut: {torn_cut}");
    assert!(died_in_commit > 5, "deaths inside a commit: {died_in_commit}");
    assert!(failed_syncs > 20, "failed fsyncs: {failed_syncs}");
}

/// Every record on `storage`'s segments: (segment, byte offset, payload length).
fn record_positions(storage: &FaultyStorage) -> Vec<(PathBuf, usize, usize)> {
    let mut out = Vec::new();
    for path in storage.paths() {
        let bytes = splitbft_broker::storage::Storage::read(storage, &path).unwrap();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break; // preallocated zeros
            }
            out.push((path.clone(), at, len));
            at += 8 + len;
        }
    }
    out
}

#[test]
fn a_corrupt_record_is_cut_at_the_tail_and_a_startup_error_naming_the_file_elsewhere() {
    let (mut cut, mut refused) = (0, 0);
    for seed in 0..SEEDS / 4 {
        let rng = &mut ChaCha8Rng::seed_from_u64(1000 + seed);
        let storage = FaultyStorage::new();
        let (mut wal, _) = open(&storage).unwrap();
        let mut written = Vec::new();
        for _ in 0..5 + below(rng, 30) {
            let (kind, state) = record(rng, written.len() as u64);
            wal.append(kind, &state).unwrap();
            written.push((kind, state));
            wal.commit().unwrap();
            wal.compact().unwrap();
        }
        drop(wal);
        let records = record_positions(&storage);
        let victim = below(rng, records.len() as u64) as usize;
        let (path, offset, len) = records[victim].clone();
        // A flipped bit in the checksum or anywhere in the payload.
        let byte = offset + 4 + below(rng, 4 + len as u64) as usize;
        storage.corrupt(&path, byte);
        let last_segment = storage.paths().last() == Some(&path);
        let is_tail = last_segment && victim + 1 == records.len();
        match open(&storage) {
            Ok((wal, recovered)) => {
                assert!(is_tail, "seed {seed}: damage to record {victim} of {} went unnoticed", records.len());
                assert!(wal.torn_tail_bytes > 0);
                // Only the damaged record is gone: its round is the one that was lost.
                assert_eq!(recovered, expected(&written[..written.len() - 1]), "seed {seed}");
                cut += 1;
            }
            Err(e) => {
                assert!(!is_tail, "seed {seed}: a damaged tail should be cut, not refused: {e}");
                assert!(
                    matches!(&e, WalError::Corrupt { path: p, offset: o, .. } if *p == path && *o == offset as u64),
                    "seed {seed}: {e}"
                );
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                refused += 1;
            }
        }
    }
    assert!(cut > 0 && refused > 0, "both cases reached: cut {cut}, refused {refused}");
}

fn counters(dir: &Path) -> ([Box<dyn MonotonicCounter + Send>; 3], [PathBuf; 3]) {
    let counters = CompartmentKind::ALL
        .map(|kind| Box::new(SoftwareCounter::open(dir, kind).unwrap()) as Box<dyn MonotonicCounter + Send>);
    (counters, CompartmentKind::ALL.map(|kind| SoftwareCounter::path(dir, kind)))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitbft-crash-points-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An image of every compartment, each larger than a third of a segment: a round of them
/// fills one and retires every earlier segment.
fn images(id: u64) -> Vec<(CompartmentKind, SealedState)> {
    CompartmentKind::ALL
        .map(|kind| (kind, SealedState { kind: RecordKind::Image, epoch: 1, index: id, sealed: vec![id as u8; 1500] }))
        .to_vec()
}

fn round(id: u64, kind: RecordKind) -> Round {
    let state = SealedState { kind, epoch: 1, index: id, sealed: vec![7; 32] };
    Round { id, records: vec![(CompartmentKind::Confirmation, state)], ..Round::default() }
}

/// A writer over a fresh faulty disk (its counters in a temporary directory), and the
/// reports it makes.
fn writer_on_faulty_storage(name: &str) -> (PathBuf, FaultyStorage, Writer, Arc<Mutex<Vec<Synced>>>) {
    let counter_dir = temp(name);
    let storage = FaultyStorage::new();
    let (wal, _) = open(&storage).unwrap();
    let (counters, paths) = counters(&counter_dir);
    let reports: Arc<Mutex<Vec<Synced>>> = Arc::default();
    let sink = Arc::clone(&reports);
    let writer =
        Writer::spawn(Committer::new(wal, counters, paths, None), move |s| sink.lock().unwrap().push(s)).unwrap();
    (counter_dir, storage, writer, reports)
}

#[test]
fn an_fsync_error_stops_the_writer_and_no_later_round_is_reported_durable() {
    let (counter_dir, storage, writer, reports) = writer_on_faulty_storage("fsync");
    assert!(writer.submit(round(1, RecordKind::Image)));
    // Wait for the first group before arming the fault (groups form by timing).
    while reports.lock().unwrap().is_empty() {
        std::thread::yield_now();
    }
    storage.fail_sync_at(1);
    for id in 2..=20 {
        // After the writer stops, submit says so.
        let _ = writer.submit(round(id, RecordKind::Delta));
    }
    writer.close();
    let reports = reports.lock().unwrap();
    assert!(matches!(reports[0].result, Ok(g) if g.upto == 1 && g.wal_syncs == 1));
    let last = reports.last().unwrap();
    let err = last.result.as_ref().unwrap_err();
    assert!(err.to_string().contains("injected fsync error"), "{err}");
    assert!(err.to_string().contains("wal-"), "names the file: {err}");
    assert_eq!(reports.len(), 2, "nothing is reported after the failed group: {reports:?}");
    // What is on the disk after a crash: round 1, and nothing of the failed group, even
    // though the process could still read it back.
    storage.crash(|_, unsynced| unsynced);
    let (_, recovered) = open(&storage).unwrap();
    let indices: Vec<u64> = recovered[CompartmentKind::Confirmation.index()].iter().map(|s| s.index).collect();
    assert_eq!(indices, vec![1]);
    std::fs::remove_dir_all(&counter_dir).unwrap();
}

#[test]
fn the_writer_compacts_and_preallocates_after_reporting_each_group() {
    let (counter_dir, storage, writer, reports) = writer_on_faulty_storage("compact");
    // Every round an image of each compartment, larger than a segment's half: each group
    // fills a segment and makes every earlier one redundant.
    for id in 1..=30u64 {
        let records = images(id);
        assert!(writer.submit(Round { id, records, ..Round::default() }));
    }
    writer.close();
    let reports = reports.lock().unwrap();
    assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");
    assert_eq!(reports.last().unwrap().result.as_ref().unwrap().upto, 30);
    let segments = storage.paths();
    assert!(segments.len() <= 2, "old segments were deleted: {segments:?}");
    let current = segments.last().unwrap();
    assert!(!current.ends_with("wal-00000000000000000000.log"), "the log rolled: {segments:?}");
    // The current segment carries zeros ahead of its records (at most up to its size).
    let bytes = splitbft_broker::storage::Storage::read(&storage, current).unwrap();
    assert!(bytes.ends_with(&[0; 64]), "preallocated room after the records");
    // And everything comes back: the latest image of each compartment.
    let (_, recovered) = open(&storage).unwrap();
    for kind in CompartmentKind::ALL {
        assert_eq!(recovered[kind.index()].iter().map(|s| s.index).collect::<Vec<_>>(), vec![30]);
    }
    std::fs::remove_dir_all(&counter_dir).unwrap();
}

/// Compaction waits until the group is reported (`a68e033`): deleting segments took tens of
/// milliseconds and, inside the commit, held every frame of the checkpoint round. At the
/// moment a group carrying images is reported, the segments those images make redundant
/// are still on disk; they go right after.
#[test]
fn a_group_is_reported_before_the_segments_its_images_retire_are_deleted() {
    let counter_dir = temp("report-first");
    let storage = FaultyStorage::new();
    let (wal, _) = open(&storage).unwrap();
    let (counters, paths) = counters(&counter_dir);
    let seen: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let (sink, disk) = (Arc::clone(&seen), storage.clone());
    let writer = Writer::spawn(Committer::new(wal, counters, paths, None), move |s| {
        let upto = s.result.as_ref().map(|g| g.upto).unwrap_or(0);
        sink.lock().unwrap().push((upto, disk.paths().len()));
    })
    .unwrap();
    // One round at a time, so that each is its own group: round 1 fills segment 0, round 2
    // fills segment 1 and retires segment 0.
    for id in 1..=2u64 {
        assert!(writer.submit(Round { id, records: images(id), ..Round::default() }));
        while seen.lock().unwrap().len() < id as usize {
            std::thread::yield_now();
        }
    }
    writer.close();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], (1, 1), "round 1 reported with segment 0 only");
    assert_eq!(seen[1], (2, 2), "round 2 reported while segment 0 is still there: {seen:?}");
    let after = storage.paths();
    assert!(!after.iter().any(|p| p.ends_with("wal-00000000000000000000.log")), "then segment 0 went: {after:?}");
    std::fs::remove_dir_all(&counter_dir).unwrap();
}
