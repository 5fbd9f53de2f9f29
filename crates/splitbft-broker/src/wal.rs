//! The write-ahead log of sealed compartment state (SPEC §10) and the software monotonic
//! counter, in the replica's data directory.
//!
//! Layout of `<data dir>/state/`: segment files `wal-<n>.log`, each a sequence of records
//! `u32 BE length · u32 BE CRC-32 of the payload · payload`, the payload the codec
//! encoding of an [`Entry`]: a compartment's sealed state record, or a batch frame the
//! broker verified (PrePrepare and batch bytes). The broker appends the records of a round
//! and calls [`Wal::commit`] once (one `fdatasync` per round, group commit) before it lets
//! any output of that round leave the replica.
//!
//! Why batches: Preparation, Confirmation and Execution keep digests in their sealed state,
//! and a certificate names a batch by digest. After a whole-cluster restart a NewView
//! re-proposes a prepared batch by digest, and some replica must still have its bytes:
//! the replicas that prepared it logged them before their Prepare left.
//!
//! Compaction: a segment is deleted once every compartment has a durable image in a later
//! segment and every batch it holds is at or below the stable checkpoint ([`Wal::set_low`]);
//! the log rolls to a new segment once the current one passes [`SEGMENT_BYTES`].
//!
//! Preallocation: between groups the log keeps [`PREALLOCATE_BYTES`] of zeros written and
//! synced past its end, so a commit's `fdatasync` writes the records alone, not also the
//! file's new size and blocks; zeros to the end of a segment are its unused room.
//!
//! Damage: a record that fails its length or checksum at the end of the last segment is a
//! write torn by a crash (its round was never committed, so nothing of it left the
//! replica): it is cut. Anything else — a bad record followed by good ones, or in an older
//! segment — is a startup error naming the file and offset; the replica does not guess.
//!
//! The sealed records are opaque here: the compartments authenticate them on restore.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use splitbft_types::codec::{append_bytes, from_bytes};
use splitbft_types::durable::{RecordKind, SealedState};
use splitbft_types::{CompartmentKind, Seq};

use crate::recovery::{MAX_CACHED_BATCH_BYTES, MAX_CACHED_BATCHES};

use crate::storage::{AppendFile, DiskStorage, SharedStorage};

/// Directory of the log inside the data directory.
pub const STATE_DIR: &str = "state";
/// A segment is closed once it holds this much: large enough that Execution images (the
/// whole application state, every `K` batches) do not roll it every checkpoint, small
/// enough that a restart reads little beyond the latest images.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record read back: an Execution image holds the application snapshot, bounded
/// by the state-transfer limit, plus framing ([`splitbft_types::limits`]).
pub use splitbft_types::limits::MAX_WAL_RECORD_BYTES;
/// Bytes of a record's header.
const RECORD_HEADER: usize = 8;
/// Zeros kept written ahead of the log's end ([`AppendFile::preallocate`]), topped up
/// between groups once half is used: a record's `fdatasync` then writes its data alone.
pub const PREALLOCATE_BYTES: u64 = 8 * 1024 * 1024;
/// Capacity the buffer of uncommitted records keeps between commits.
const MAX_IDLE_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Name of the lock file that keeps a second process off a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A damaged record that is not a torn tail.
    #[error("{path}: corrupt record at byte {offset} ({reason}); refusing to start from a damaged log")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An earlier write or sync of the log failed; nothing more is written to it.
    #[error("{0}: an earlier write or fsync of the log failed; refusing further writes (what is on disk is unknown)")]
    Poisoned(PathBuf),
    /// Writing or syncing the ledger's block file failed (SPEC §7, §10): the round's
    /// outputs must not leave, as for the log.
    #[error("{path}: {source} (ledger block file)")]
    Ledger {
        /// The block file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
        /// Whether it was the `fdatasync` (else a write).
        sync: bool,
    },
    /// A ledger block to write in a replica without a block file (a programmer error in
    /// the driver's setup, reported rather than dropped).
    #[error("a sealed ledger block reached the writer, but this replica has no block file")]
    LedgerWithoutFile,
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process (lock held on its LOCK file)")]
    Locked(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Holds the data directory's lock for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks `dir` (creating it) for this process: a second replica on the same directory
/// would interleave two logs and make both wrong.
pub fn lock_dir(dir: &Path) -> Result<DirLock, WalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(WalError::Io { path, source }),
    }
}

/// The sealed state found on start, per compartment in [`CompartmentKind::ALL`] order:
/// its latest image and the deltas after it (empty: no state).
pub type Recovered = [Vec<SealedState>; 3];

/// One record of the log, as written. The three compartment variants come first, in
/// [`CompartmentKind::ALL`] order, so their encoding is the `(CompartmentKind,
/// SealedState)` pair logs held before batches were logged: those logs still open.
#[derive(Serialize)]
enum Entry<'a> {
    Preparation(&'a SealedState),
    Confirmation(&'a SealedState),
    Execution(&'a SealedState),
    Batch {
        seq: Seq,
        #[serde(with = "serde_bytes")]
        frame: &'a [u8],
    },
}

/// One record of the log, as read back ([`Entry`]).
#[derive(Deserialize)]
enum ReadEntry {
    Preparation(SealedState),
    Confirmation(SealedState),
    Execution(SealedState),
    Batch {
        seq: Seq,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
}

impl<'a> Entry<'a> {
    fn sealed(kind: CompartmentKind, state: &'a SealedState) -> Self {
        match kind {
            CompartmentKind::Preparation => Entry::Preparation(state),
            CompartmentKind::Confirmation => Entry::Confirmation(state),
            CompartmentKind::Execution => Entry::Execution(state),
        }
    }
}

/// Adds a compartment's record to what it restores from (SPEC §10): an image starts the
/// list over, and deltas before a first image are not state to restore. The one rule for
/// reading the log back, for the copy the `process` backend keeps, and for the
/// simulator's disk.
pub fn keep_restorable(records: &mut Vec<SealedState>, state: SealedState) {
    if state.kind == RecordKind::Image {
        records.clear();
    }
    if !records.is_empty() || state.kind == RecordKind::Image {
        records.push(state);
    }
}

/// A batch frame read back on open, with its sequence number.
pub type RecoveredBatch = (Seq, Vec<u8>);

/// The write-ahead log of one replica.
#[derive(Debug)]
pub struct Wal {
    storage: SharedStorage,
    dir: PathBuf,
    /// Numbers of the segments on disk, oldest first; the last is being written.
    segments: Vec<u64>,
    writer: Box<dyn AppendFile>,
    /// Bytes in the current segment.
    written: u64,
    /// The current segment is closed once it holds this much ([`SEGMENT_BYTES`]).
    segment_bytes: u64,
    /// Segment holding each compartment's latest image (None: none yet).
    latest_image: [Option<u64>; 3],
    /// Records appended since the last commit.
    uncommitted: u64,
    /// Those records, framed: handed to the file in one write at [`Wal::commit`], each
    /// encoded once, straight into this buffer (the writer thread's copies were a
    /// measurable part of the cost of durability).
    pending: Vec<u8>,
    /// A write or sync failed: what is on disk is unknown (a failed `fsync` may have
    /// dropped the dirty pages while a later one succeeds), so nothing more is accepted.
    poisoned: bool,
    /// Highest batch sequence number logged in each segment that holds batches: a segment
    /// is kept while it holds a batch above `low`.
    batch_seqs: BTreeMap<u64, Seq>,
    /// The stable checkpoint: batches at or below it are no longer needed.
    low: Seq,
    /// The newest batch frames read on open (at most what the broker's cache keeps),
    /// until [`Wal::take_recovered_batches`].
    recovered_batches: VecDeque<RecoveredBatch>,
    /// Bytes cut from a torn tail on open.
    pub torn_tail_bytes: u64,
    /// Bytes read on open.
    pub recovered_bytes: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:020}.log"))
}

impl Wal {
    /// Opens (creating) `<data_dir>/state` on the real disk, reads every segment, cuts a
    /// torn tail and returns the log ready to append with what each compartment had sealed.
    pub fn open(data_dir: &Path) -> Result<(Wal, Recovered), WalError> {
        Wal::open_on(DiskStorage::shared(), data_dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] on `storage`, closing segments at `segment_bytes`.
    pub fn open_on(storage: SharedStorage, data_dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovered), WalError> {
        let dir = data_dir.join(STATE_DIR);
        storage.create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut segments = Vec::new();
        for name in storage.list(&dir).map_err(io_err(&dir))? {
            let Some(n) = name.strip_prefix("wal-").and_then(|s| s.strip_suffix(".log")) else {
                continue;
            };
            if let Ok(n) = n.parse::<u64>() {
                segments.push(n);
            }
        }
        segments.sort_unstable();
        let mut recovered: Recovered = Default::default();
        let mut latest_image = [None; 3];
        let mut batch_seqs = BTreeMap::new();
        let (mut recovered_batches, mut batch_bytes) = (VecDeque::new(), 0usize);
        let (mut torn, mut read_bytes, mut last_len) = (0, 0, 0);
        for (i, &n) in segments.iter().enumerate() {
            let path = segment_path(&dir, n);
            let last = i + 1 == segments.len();
            let bytes = storage.read(&path).map_err(io_err(&path))?;
            let (records, good) = read_segment(&path, &bytes, last)?;
            let len = bytes.len() as u64;
            if good < len && last {
                // Preallocated zeros are no damage; anything else after the last good
                // record is a torn write. Both go: appends resume at the last good record.
                if bytes[good as usize..].iter().any(|b| *b != 0) {
                    torn = len - good;
                }
                storage.truncate(&path, good).map_err(io_err(&path))?;
            }
            read_bytes += good;
            last_len = good;
            for record in records {
                let (kind, state) = match record {
                    ReadEntry::Preparation(state) => (CompartmentKind::Preparation, state),
                    ReadEntry::Confirmation(state) => (CompartmentKind::Confirmation, state),
                    ReadEntry::Execution(state) => (CompartmentKind::Execution, state),
                    ReadEntry::Batch { seq, frame } => {
                        let max = batch_seqs.entry(n).or_insert(seq);
                        *max = (*max).max(seq);
                        batch_bytes += frame.len();
                        recovered_batches.push_back((seq, frame));
                        while recovered_batches.len() > MAX_CACHED_BATCHES || batch_bytes > MAX_CACHED_BATCH_BYTES {
                            let Some((_, old)) = recovered_batches.pop_front() else { break };
                            batch_bytes -= old.len();
                        }
                        continue;
                    }
                };
                if state.kind == RecordKind::Image {
                    latest_image[kind.index()] = Some(n);
                }
                keep_restorable(&mut recovered[kind.index()], state);
            }
        }
        let current = match segments.last() {
            Some(n) => *n,
            None => {
                segments.push(0);
                0
            }
        };
        let path = segment_path(&dir, current);
        let writer = storage.append(&path).map_err(io_err(&path))?;
        storage.sync_dir(&dir).map_err(io_err(&dir))?;
        let wal = Wal {
            storage,
            dir,
            segments,
            writer,
            written: last_len,
            segment_bytes,
            latest_image,
            uncommitted: 0,
            pending: Vec::new(),
            poisoned: false,
            batch_seqs,
            low: 0,
            recovered_batches,
            torn_tail_bytes: torn,
            recovered_bytes: read_bytes,
        };
        Ok((wal, recovered))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current(&self) -> u64 {
        *self.segments.last().expect("the log always has a current segment")
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.current())
    }

    /// Marks the log unusable and returns the error.
    fn poison(&mut self, e: WalError) -> WalError {
        self.poisoned = true;
        e
    }

    fn check_usable(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned(self.current_path()));
        }
        Ok(())
    }

    /// Appends one sealed state record (buffered until [`Wal::commit`]).
    pub fn append(&mut self, kind: CompartmentKind, state: &SealedState) -> Result<(), WalError> {
        self.write_entry(&Entry::sealed(kind, state))?;
        if state.kind == RecordKind::Image {
            self.latest_image[kind.index()] = Some(self.current());
        }
        Ok(())
    }

    /// Appends one verified batch frame (buffered until [`Wal::commit`]).
    pub fn append_batch(&mut self, seq: Seq, frame: &[u8]) -> Result<(), WalError> {
        self.write_entry(&Entry::Batch { seq, frame })?;
        let max = self.batch_seqs.entry(self.current()).or_insert(seq);
        *max = (*max).max(seq);
        Ok(())
    }

    /// Raises the stable checkpoint: segments whose batches are all at or below it may go.
    pub fn set_low(&mut self, low: Seq) {
        self.low = self.low.max(low);
    }

    /// The newest batch frames read on open, oldest first (at most [`MAX_CACHED_BATCHES`]
    /// and [`MAX_CACHED_BATCH_BYTES`]); empty after the first call.
    pub fn take_recovered_batches(&mut self) -> Vec<RecoveredBatch> {
        std::mem::take(&mut self.recovered_batches).into()
    }

    fn write_entry(&mut self, entry: &Entry<'_>) -> Result<(), WalError> {
        self.check_usable()?;
        let start = self.pending.len();
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(&[0; RECORD_HEADER]);
        buf = append_bytes(entry, buf);
        let payload = start + RECORD_HEADER..buf.len();
        let Ok(len) = u32::try_from(payload.len()) else {
            buf.truncate(start);
            self.pending = buf;
            return Err(WalError::Io {
                path: self.current_path(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "sealed state record above 4 GiB"),
            });
        };
        let crc = crc32fast::hash(&buf[payload.clone()]);
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        buf[start + 4..start + RECORD_HEADER].copy_from_slice(&crc.to_be_bytes());
        self.written += (buf.len() - start) as u64;
        self.pending = buf;
        self.uncommitted += 1;
        Ok(())
    }

    /// Whether records wait for a commit.
    pub fn dirty(&self) -> bool {
        self.uncommitted > 0
    }

    /// Makes every appended record durable: one write and one `fdatasync`. An error here
    /// means the round's outputs must not leave the replica, and the log refuses everything
    /// after it. Rolling and deleting segments is [`Wal::compact`]'s, off the round's path.
    pub fn commit(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if self.uncommitted == 0 {
            return Ok(());
        }
        let result = self.commit_inner();
        result.map_err(|e| self.poison(e))
    }

    fn commit_inner(&mut self) -> Result<(), WalError> {
        let path = self.current_path();
        self.writer.write_all(&self.pending).map_err(io_err(&path))?;
        self.pending.clear();
        if self.pending.capacity() > MAX_IDLE_BUFFER_BYTES {
            // After a large image: do not hold its size for good.
            self.pending.shrink_to(MAX_IDLE_BUFFER_BYTES);
        }
        self.writer.sync().map_err(io_err(&path))?;
        self.uncommitted = 0;
        Ok(())
    }

    /// Rolls to a new segment when the current one is full and deletes the segments every
    /// compartment has a later durable image for (and whose batches are all at or below
    /// the stable checkpoint). It does nothing while records wait for a commit: an image
    /// only makes older segments redundant once it is durable itself.
    ///
    /// Kept apart from [`Wal::commit`] so the writer runs it after reporting a group
    /// durable: deleting a 64 MiB segment takes tens of milliseconds on a disk that
    /// discards freed blocks, and inside the commit it held every frame of the round
    /// carrying the checkpoint images (measured: rounds of 37–72 ms at checkpoints, 4–8 ms
    /// of it the write and sync).
    pub fn compact(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if self.uncommitted > 0 {
            return Ok(());
        }
        let result = self.compact_inner();
        result.map_err(|e| self.poison(e))
    }

    fn compact_inner(&mut self) -> Result<(), WalError> {
        if self.written >= self.segment_bytes {
            let next = self.current() + 1;
            let path = segment_path(&self.dir, next);
            let writer = self.storage.append(&path).map_err(io_err(&path))?;
            self.storage.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            self.writer = writer;
            self.segments.push(next);
            self.written = 0;
        }
        if let [Some(a), Some(b), Some(c)] = self.latest_image {
            let needed_batches = self.batch_seqs.iter().find(|(_, max)| **max > self.low).map(|(n, _)| *n);
            let keep_from = a.min(b).min(c).min(needed_batches.unwrap_or(u64::MAX));
            let old: Vec<u64> = self.segments.iter().copied().filter(|n| *n < keep_from).collect();
            if !old.is_empty() {
                for n in &old {
                    let path = segment_path(&self.dir, *n);
                    self.storage.remove(&path).map_err(io_err(&path))?;
                }
                self.segments.retain(|n| *n >= keep_from);
                self.batch_seqs.retain(|n, _| *n >= keep_from);
                self.storage.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            }
        }
        let room = PREALLOCATE_BYTES.min(self.segment_bytes.saturating_sub(self.written));
        if room > 0 {
            let path = self.current_path();
            self.writer.preallocate(room).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Segments on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Reads a segment's records. Zeros to the end of the file are preallocated room, in any
/// segment. In the last segment a bad record with nothing valid after it is a torn tail
/// (returns the good prefix length); anywhere else it is corruption.
fn read_segment(path: &Path, bytes: &[u8], last: bool) -> Result<(Vec<ReadEntry>, u64), WalError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |reason| -> Result<(Vec<ReadEntry>, u64), WalError> {
            if last && !any_valid_record_after(bytes, at + 1) {
                Ok((Vec::new(), 0))
            } else {
                Err(WalError::Corrupt { path: path.to_path_buf(), offset: at as u64, reason })
            }
        };
        let rest = &bytes[at..];
        if rest.iter().all(|b| *b == 0) {
            // Preallocated and never written (no record is empty, so no header is zero).
            return Ok((records, at as u64));
        }
        if rest.len() < RECORD_HEADER {
            return bad("truncated header").map(|_| (records, at as u64));
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_WAL_RECORD_BYTES || rest.len() - RECORD_HEADER < len {
            return bad("length beyond the file").map(|_| (records, at as u64));
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        if crc32fast::hash(payload) != crc {
            return bad("checksum mismatch").map(|_| (records, at as u64));
        }
        match from_bytes::<ReadEntry>(payload) {
            Ok(record) => records.push(record),
            Err(_) => {
                return Err(WalError::Corrupt { path: path.to_path_buf(), offset: at as u64, reason: "undecodable" });
            }
        }
        at += RECORD_HEADER + len;
    }
    Ok((records, at as u64))
}

/// Whether a record with a valid checksum starts anywhere at or after `from`: if so, the
/// damage is in the middle of the log, not a torn tail.
fn any_valid_record_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(RECORD_HEADER)).any(|at| {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        len > 0
            && len <= bytes.len() - at - RECORD_HEADER
            && crc32fast::hash(&bytes[at + RECORD_HEADER..at + RECORD_HEADER + len]) == crc
            && from_bytes::<ReadEntry>(&bytes[at + RECORD_HEADER..at + RECORD_HEADER + len]).is_ok()
    })
}

/// A monotonic counter (SPEC §10): it counts a compartment's sealed records made durable,
/// and a restore whose records end below it is refused as rolled back (an older state, or
/// records cut off the end of the current one). The writer advances it after each group
/// commit to the last durable record's index plus one.
///
/// A TEE maps it to a counter the host cannot lower and that keeps up with group commits:
/// a quorum counter service such as ROTE, or one the enclave keeps with its peers. An
/// increment-only hardware counter (SGX/TPM NV, ~100 ms per increment and wear-limited)
/// cannot follow every group commit; bound to images only, it would leave cut deltas
/// undetected.
pub trait MonotonicCounter {
    /// The current value.
    fn read(&self) -> u64;
    /// Raises the value to `value` (nothing if it is there already) and returns it.
    fn advance_to(&mut self, value: u64) -> io::Result<u64>;
}

/// Bytes of one counter slot: the value and its CRC-32.
const COUNTER_SLOT: usize = 12;

/// The software counter: a file in the data directory. It **trusts the host** — whoever
/// can rewrite the data directory can lower it — and is named so in logs and docs; it
/// still catches a stale copy of the state put back, or records cut off its end, without
/// the counter file being rewritten too.
///
/// Two slots (value · CRC-32 each), written alternately in place and not synced: a write
/// torn by a crash spoils one slot and the other holds the previous value, and a lost
/// write only leaves the counter lower, which refuses nothing honest (it advances only
/// after the records it counts are durable). So advancing costs one `pwrite` per group
/// commit, no `fsync`.
#[derive(Debug)]
pub struct SoftwareCounter {
    path: PathBuf,
    value: u64,
    /// Open for writing once the counter first advances.
    file: Option<File>,
    /// The slot the next write goes to.
    next_slot: u64,
}

fn counter_slot(bytes: &[u8]) -> Option<u64> {
    let value = bytes.get(..8)?;
    let crc = bytes.get(8..COUNTER_SLOT)?;
    (crc32fast::hash(value).to_be_bytes() == crc).then(|| u64::from_be_bytes(value.try_into().expect("8 bytes")))
}

impl SoftwareCounter {
    /// Opens (at 0 if absent) the counter of `kind` in `data_dir`.
    pub fn open(data_dir: &Path, kind: CompartmentKind) -> Result<Self, WalError> {
        let path = SoftwareCounter::path(data_dir, kind);
        let (value, next_slot) = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == COUNTER_SLOT || bytes.len() == 2 * COUNTER_SLOT => {
                let slots: Vec<Option<u64>> = bytes.chunks(COUNTER_SLOT).map(counter_slot).collect();
                // The newer slot is the larger value; the next write replaces the other.
                match slots.iter().enumerate().filter_map(|(i, v)| v.map(|v| (v, i))).max() {
                    Some((value, newest)) => (value, (newest as u64 + 1) % 2),
                    None => return Err(WalError::Corrupt { path, offset: 0, reason: "counter checksum mismatch" }),
                }
            }
            Ok(_) => return Err(WalError::Corrupt { path, offset: 0, reason: "counter file of the wrong size" }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(source) => return Err(WalError::Io { path, source }),
        };
        Ok(SoftwareCounter { path, value, file: None, next_slot })
    }

    /// Where the counter of `kind` lives in `data_dir`.
    pub fn path(data_dir: &Path, kind: CompartmentKind) -> PathBuf {
        data_dir.join(format!("counter-{}", kind.name()))
    }

    fn store(&mut self, value: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let created = !self.path.exists();
                let file = OpenOptions::new().create(true).truncate(false).write(true).open(&self.path)?;
                if created && let Some(dir) = self.path.parent() {
                    File::open(dir)?.sync_all()?;
                }
                self.file.insert(file)
            }
        };
        let mut slot = value.to_be_bytes().to_vec();
        slot.extend_from_slice(&crc32fast::hash(&value.to_be_bytes()).to_be_bytes());
        file.write_all_at(&slot, self.next_slot * COUNTER_SLOT as u64)?;
        self.next_slot = (self.next_slot + 1) % 2;
        Ok(())
    }
}

impl MonotonicCounter for SoftwareCounter {
    fn read(&self) -> u64 {
        self.value
    }

    fn advance_to(&mut self, value: u64) -> io::Result<u64> {
        if value > self.value {
            self.store(value)?;
            self.value = value;
        }
        Ok(self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitbft_types::codec::to_bytes;

    fn record(kind: RecordKind, epoch: u64, index: u64, len: usize) -> SealedState {
        SealedState { kind, epoch, index, sealed: vec![index as u8; len] }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("splitbft-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_come_back_from_the_latest_image_per_compartment() {
        let dir = temp("roundtrip");
        let (mut wal, recovered) = Wal::open(&dir).unwrap();
        assert!(recovered.iter().all(Vec::is_empty));
        let p = CompartmentKind::Preparation;
        let e = CompartmentKind::Execution;
        wal.append(p, &record(RecordKind::Image, 1, 0, 10)).unwrap();
        wal.append(e, &record(RecordKind::Image, 1, 0, 10)).unwrap();
        wal.append(p, &record(RecordKind::Delta, 1, 1, 10)).unwrap();
        wal.append(p, &record(RecordKind::Image, 2, 2, 10)).unwrap();
        wal.append(p, &record(RecordKind::Delta, 2, 3, 10)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        drop(wal);
        let (_, recovered) = Wal::open(&dir).unwrap();
        assert_eq!(recovered[0].iter().map(|r| r.index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(recovered[1].is_empty());
        assert_eq!(recovered[2].len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn preallocated_zeros_are_room_and_a_write_torn_inside_them_is_cut() {
        let dir = temp("prealloc");
        let seg = segment_path(&dir.join(STATE_DIR), 0);
        let p = CompartmentKind::Preparation;
        let (mut wal, _) = Wal::open(&dir).unwrap();
        wal.append(p, &record(RecordKind::Image, 1, 0, 100)).unwrap();
        wal.commit().unwrap();
        let logical = std::fs::metadata(&seg).unwrap().len();
        wal.compact().unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), logical + PREALLOCATE_BYTES, "zeros written ahead");
        // Appends land in the zeros: the file does not grow.
        wal.append(p, &record(RecordKind::Delta, 1, 1, 100)).unwrap();
        wal.commit().unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), logical + PREALLOCATE_BYTES);
        drop(wal);
        let (wal, recovered) = Wal::open(&dir).unwrap();
        assert_eq!(recovered[0].iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(wal.torn_tail_bytes, 0, "zeros are not damage");
        let end = std::fs::metadata(&seg).unwrap().len();
        assert!(end < logical + PREALLOCATE_BYTES, "the zeros are cut on open, appends resume at the end");
        drop(wal);
        // A crash inside the room: half a record written over the zeros, then zeros.
        let mut bytes = std::fs::read(&seg).unwrap();
        let record_bytes = bytes[logical as usize..].to_vec();
        bytes.extend_from_slice(&record_bytes[..record_bytes.len() / 2]);
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(&seg, &bytes).unwrap();
        let (mut wal, recovered) = Wal::open(&dir).unwrap();
        assert_eq!(recovered[0].len(), 2);
        assert_eq!(wal.torn_tail_bytes, (record_bytes.len() / 2 + 4096) as u64, "the torn write is cut");
        wal.append(p, &record(RecordKind::Delta, 1, 2, 100)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        drop(wal);
        let (_, recovered) = Wal::open(&dir).unwrap();
        assert_eq!(recovered[0].iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_corrupt_middle_is_an_error_naming_the_file() {
        let dir = temp("torn");
        let (mut wal, _) = Wal::open(&dir).unwrap();
        let p = CompartmentKind::Preparation;
        for i in 0..4 {
            let kind = if i == 0 { RecordKind::Image } else { RecordKind::Delta };
            wal.append(p, &record(kind, 1, i, 100)).unwrap();
        }
        wal.commit().unwrap();
        drop(wal);
        let seg = segment_path(&dir.join(STATE_DIR), 0);
        let full = std::fs::read(&seg).unwrap();
        // Torn: the last record half-written.
        std::fs::write(&seg, &full[..full.len() - 50]).unwrap();
        let (wal, recovered) = Wal::open(&dir).unwrap();
        assert_eq!(recovered[0].len(), 3);
        assert!(wal.torn_tail_bytes > 0);
        drop(wal);
        // Garbage appended after a valid log (a torn header): cut too.
        let cut = std::fs::read(&seg).unwrap();
        let mut junk = cut.clone();
        junk.extend_from_slice(&[0xff; 5]);
        std::fs::write(&seg, &junk).unwrap();
        assert_eq!(Wal::open(&dir).unwrap().1[0].len(), 3);
        // A flipped byte in the first record, with good records after it: an error.
        let mut bad = cut.clone();
        bad[RECORD_HEADER + 20] ^= 1;
        std::fs::write(&seg, &bad).unwrap();
        let err = Wal::open(&dir).unwrap_err();
        assert!(matches!(&err, WalError::Corrupt { path, offset: 0, .. } if *path == seg), "{err}");
        assert!(err.to_string().contains("wal-00000000000000000000.log"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_segments_go_once_every_compartment_has_a_later_image() {
        let dir = temp("compact");
        let (mut wal, _) = Wal::open(&dir).unwrap();
        let big = (SEGMENT_BYTES / 2) as usize;
        for kind in CompartmentKind::ALL {
            wal.append(kind, &record(RecordKind::Image, 1, 0, 16)).unwrap();
        }
        wal.append(CompartmentKind::Execution, &record(RecordKind::Delta, 1, 1, big)).unwrap();
        wal.append(CompartmentKind::Execution, &record(RecordKind::Delta, 1, 2, big)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        assert_eq!(wal.segment_count(), 2, "rolled over");
        wal.append(CompartmentKind::Preparation, &record(RecordKind::Image, 2, 1, 16)).unwrap();
        wal.append(CompartmentKind::Confirmation, &record(RecordKind::Image, 2, 1, 16)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        assert_eq!(wal.segment_count(), 2, "Execution's image is still in the first segment");
        wal.append(CompartmentKind::Execution, &record(RecordKind::Image, 2, 3, 16)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        assert_eq!(wal.segment_count(), 1);
        drop(wal);
        let (_, recovered) = Wal::open(&dir).unwrap();
        assert!(recovered.iter().all(|r| r.len() == 1 && r[0].epoch == 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// SPEC §10, the whole-cluster restart liveness bug of issue 13: logged batch frames
    /// come back on open, and a segment holding a batch above the stable checkpoint stays
    /// even when every compartment has a later image.
    #[test]
    fn batches_come_back_and_stay_until_the_stable_checkpoint_passes_them() {
        let dir = temp("batches");
        let (mut wal, _) = Wal::open(&dir).unwrap();
        let big = (SEGMENT_BYTES / 2) as usize;
        for kind in CompartmentKind::ALL {
            wal.append(kind, &record(RecordKind::Image, 1, 0, 16)).unwrap();
        }
        wal.append_batch(7, b"batch seven").unwrap();
        wal.append(CompartmentKind::Execution, &record(RecordKind::Delta, 1, 1, big)).unwrap();
        wal.append(CompartmentKind::Execution, &record(RecordKind::Delta, 1, 2, big)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        assert_eq!(wal.segment_count(), 2, "rolled over");
        for kind in CompartmentKind::ALL {
            wal.append(kind, &record(RecordKind::Image, 2, 3, 16)).unwrap();
        }
        wal.set_low(6);
        wal.commit().unwrap();
        wal.compact().unwrap();
        assert_eq!(wal.segment_count(), 2, "batch 7 is above the stable checkpoint: its segment stays");
        drop(wal);
        let (mut wal, recovered) = Wal::open(&dir).unwrap();
        assert!(recovered.iter().all(|r| r.len() == 1 && r[0].epoch == 2));
        assert_eq!(wal.take_recovered_batches(), vec![(7, b"batch seven".to_vec())]);
        assert!(wal.take_recovered_batches().is_empty(), "handed out once");
        wal.set_low(7);
        wal.append(CompartmentKind::Preparation, &record(RecordKind::Delta, 2, 4, 16)).unwrap();
        wal.commit().unwrap();
        wal.compact().unwrap();
        assert_eq!(wal.segment_count(), 1, "stable at 7: the old segment goes");
        drop(wal);
        let (mut wal, _) = Wal::open(&dir).unwrap();
        assert!(wal.take_recovered_batches().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Logs written before batches were logged held `(CompartmentKind, SealedState)`
    /// payloads: they still open, as the compartment variants of [`Entry`].
    #[test]
    fn a_log_of_the_previous_format_still_opens() {
        let state = record(RecordKind::Image, 1, 0, 16);
        for kind in CompartmentKind::ALL {
            let old = to_bytes(&(kind, &state));
            assert_eq!(old, to_bytes(&Entry::sealed(kind, &state)), "{kind}");
        }
    }

    #[test]
    fn the_lock_refuses_a_second_holder_and_the_counter_persists() {
        let dir = temp("lock");
        let lock = lock_dir(&dir).unwrap();
        assert!(matches!(lock_dir(&dir), Err(WalError::Locked(_))));
        drop(lock);
        assert!(lock_dir(&dir).is_ok());
        let mut c = SoftwareCounter::open(&dir, CompartmentKind::Execution).unwrap();
        assert_eq!(c.read(), 0);
        assert_eq!(c.advance_to(5).unwrap(), 5);
        assert_eq!(c.advance_to(3).unwrap(), 5, "never lowered");
        assert_eq!(c.advance_to(9).unwrap(), 9);
        drop(c);
        assert_eq!(SoftwareCounter::open(&dir, CompartmentKind::Execution).unwrap().read(), 9);
        assert_eq!(SoftwareCounter::open(&dir, CompartmentKind::Preparation).unwrap().read(), 0);
        // A write torn by a crash spoils one slot: the other holds the value before it.
        let path = dir.join("counter-execution");
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 24);
        bytes[COUNTER_SLOT + 3] ^= 0xff; // the slot holding 9 (the second write)
        std::fs::write(&path, &bytes).unwrap();
        let mut c = SoftwareCounter::open(&dir, CompartmentKind::Execution).unwrap();
        assert_eq!(c.read(), 5);
        assert_eq!(c.advance_to(6).unwrap(), 6, "the spoilt slot is the next written");
        drop(c);
        assert_eq!(SoftwareCounter::open(&dir, CompartmentKind::Execution).unwrap().read(), 6);
        // A counter file of the previous format (one slot) still opens.
        let mut one = 7u64.to_be_bytes().to_vec();
        one.extend_from_slice(&crc32fast::hash(&7u64.to_be_bytes()).to_be_bytes());
        std::fs::write(&path, &one).unwrap();
        assert_eq!(SoftwareCounter::open(&dir, CompartmentKind::Execution).unwrap().read(), 7);
        std::fs::write(&path, [0u8; 12]).unwrap();
        assert!(matches!(SoftwareCounter::open(&dir, CompartmentKind::Execution), Err(WalError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
