//! Pipelined group commit (SPEC §10 write-ahead, BFT-SMaRt's parallel logging).
//!
//! The event loop hands each round's sealed state records and ledger blocks to a writer
//! thread and goes on with the next round; the writer appends every round queued since its
//! last sync and makes them durable together — the ledger's blocks with one `fdatasync`,
//! then the log's records with one — so a slow disk makes groups larger instead of
//! stalling the replica. A round's network frames are held ([`Pipeline`]) until the sync
//! covering its records has completed, and leave in round order: nothing a round produced
//! is seen outside before the state that records it is on disk. A round without records is
//! held behind the rounds still syncing (its outputs may depend on their state). Log
//! compaction runs after a group is reported, off the rounds' path ([`Committer::maintain`]).
//!
//! A storage error ends the writer: the rounds after it are never reported durable, so
//! their frames never leave, and the driver stops the replica.

use std::collections::VecDeque;
use std::path::PathBuf;

use bytes::Bytes;
use splitbft_types::durable::SealedState;
use splitbft_types::{CompartmentKind, Seq};

use crate::store::BlockFile;
use crate::wal::{MonotonicCounter, Wal, WalError};

/// Rounds handed to the writer and not yet durable. Past it the event loop waits for the
/// disk (back-pressure): held frames and queued records stay bounded. A few hundred rounds
/// cover a sync of tens of milliseconds at full load.
pub const MAX_ROUNDS_IN_FLIGHT: usize = 256;

/// What one round must make durable.
#[derive(Debug, Default)]
pub struct Round {
    /// Its number (from 1, consecutive), given by [`Pipeline::submit`].
    pub id: u64,
    /// Sealed state records, in the order the compartments emitted them.
    pub records: Vec<(CompartmentKind, SealedState)>,
    /// Sealed ledger blocks `(height, bytes)` (SPEC §7).
    pub blocks: Vec<(u64, Bytes)>,
    /// Verified batch frames `(seq, frame)` the broker cached this round.
    pub batches: Vec<(Seq, Bytes)>,
    /// The broker's stable checkpoint when the round ended: logged batches at or below it
    /// may be compacted away.
    pub low: Seq,
}

impl Round {
    /// Whether the round has anything to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.blocks.is_empty() && self.batches.is_empty()
    }
}

/// What one group commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupReport {
    /// The last round the group covered: it and every round before are durable.
    pub upto: u64,
    /// Rounds in the group.
    pub rounds: u64,
    /// `fdatasync`s of the log (0 or 1).
    pub wal_syncs: u64,
    /// `fdatasync`s of the ledger's block file (0 or 1).
    pub ledger_syncs: u64,
    /// Ledger blocks written.
    pub blocks_written: u64,
    /// Ledger blocks already stored (a restarted Execution re-seals the blocks it replays).
    pub blocks_already_stored: u64,
    /// Batch frames appended to the log.
    pub batches_logged: u64,
    /// Each monotonic counter after the group ([`CompartmentKind::ALL`] order).
    pub counters: [u64; 3],
}

/// The durable side of a replica: its log, its monotonic counters and its block file.
/// Owned by the writer thread.
pub struct Committer {
    wal: Wal,
    counters: [Box<dyn MonotonicCounter + Send>; 3],
    /// Where each counter lives (for errors).
    counter_paths: [PathBuf; 3],
    ledger: Option<BlockFile>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("wal", &self.wal.dir()).finish_non_exhaustive()
    }
}

impl Committer {
    /// A committer over an opened log, its counters (in [`CompartmentKind::ALL`] order)
    /// and, if the replica keeps one, its block file.
    pub fn new(
        wal: Wal,
        counters: [Box<dyn MonotonicCounter + Send>; 3],
        counter_paths: [PathBuf; 3],
        ledger: Option<BlockFile>,
    ) -> Self {
        Committer { wal, counters, counter_paths, ledger }
    }

    /// Appends every round of the group, then syncs once per file: the ledger first (an
    /// image in the group may drop the batches that could rebuild its blocks), then the
    /// log; then advances each counter to its compartment's last durable record index plus
    /// one (SPEC §10) — only now: a counter above the state on disk would refuse that state
    /// as rolled back.
    pub fn commit_group(&mut self, rounds: &[Round]) -> Result<GroupReport, WalError> {
        let mut report = GroupReport { rounds: rounds.len() as u64, ..GroupReport::default() };
        let mut ends = [0u64; 3];
        for round in rounds {
            assert!(round.id > report.upto, "rounds reach the writer in order");
            report.upto = round.id;
            for (height, sealed) in &round.blocks {
                let ledger = self.ledger.as_mut().ok_or(WalError::LedgerWithoutFile)?;
                match ledger.append_new(*height, sealed) {
                    Ok(true) => report.blocks_written += 1,
                    Ok(false) => report.blocks_already_stored += 1,
                    Err(source) => {
                        return Err(WalError::Ledger { path: ledger.path().to_owned(), source, sync: false });
                    }
                }
            }
            for (seq, frame) in &round.batches {
                self.wal.append_batch(*seq, frame)?;
                report.batches_logged += 1;
            }
            self.wal.set_low(round.low);
            for (kind, state) in &round.records {
                ends[kind.index()] = ends[kind.index()].max(state.index.saturating_add(1));
                self.wal.append(*kind, state)?;
            }
        }
        if report.blocks_written > 0
            && let Some(ledger) = self.ledger.as_mut()
        {
            ledger.sync().map_err(|source| WalError::Ledger { path: ledger.path().to_owned(), source, sync: true })?;
            report.ledger_syncs = 1;
        }
        if self.wal.dirty() {
            self.wal.commit()?;
            report.wal_syncs = 1;
        }
        for kind in CompartmentKind::ALL {
            let counter = &mut self.counters[kind.index()];
            report.counters[kind.index()] = counter
                .advance_to(ends[kind.index()])
                .map_err(|source| WalError::Io { path: self.counter_paths[kind.index()].clone(), source })?;
        }
        Ok(report)
    }

    /// Housekeeping after a group is reported durable: rolls and deletes log segments
    /// ([`Wal::compact`]). Nothing waits on it but the next group.
    pub fn maintain(&mut self) -> Result<(), WalError> {
        self.wal.compact()
    }
}

/// The writer's answer for one group.
#[derive(Debug)]
pub struct Synced {
    /// What the group made durable, or why it could not (the writer has stopped).
    pub result: Result<GroupReport, WalError>,
}

/// The writer thread: commits the rounds it is sent in groups and reports each group to
/// `done`. It stops after the first error (reporting it) or when every sender is gone.
pub struct Writer {
    tx: Option<crossbeam_channel::Sender<Round>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread over `committer`.
    pub fn spawn(mut committer: Committer, done: impl Fn(Synced) + Send + 'static) -> std::io::Result<Writer> {
        // Unbounded here; the event loop bounds it (MAX_ROUNDS_IN_FLIGHT).
        let (tx, rx) = crossbeam_channel::unbounded::<Round>();
        let thread = std::thread::Builder::new().name("splitbft-wal".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter().take(MAX_ROUNDS_IN_FLIGHT));
                let result = committer.commit_group(&group);
                let failed = result.is_err();
                done(Synced { result });
                // Compaction only once the group's frames may leave: it can take tens of
                // milliseconds (see `Wal::compact`).
                let failed = failed || committer.maintain().map_err(|e| done(Synced { result: Err(e) })).is_err();
                if failed {
                    // The log refuses everything from now on; rounds still queued are never
                    // reported durable, so their frames never leave (SPEC §10).
                    break;
                }
            }
        })?;
        Ok(Writer { tx: Some(tx), thread: Some(thread) })
    }

    /// Hands a round to the writer. False if the writer has stopped (after an error).
    pub fn submit(&self, round: Round) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(round).is_ok())
    }

    /// Lets the writer finish what it was given and waits for it (the log, its counters
    /// and the block file are closed when this returns).
    pub fn close(mut self) {
        self.close_inner();
    }

    fn close_inner(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close_inner();
    }
}

/// The frames of the rounds not yet durable, in round order (sans-IO: the driver sends
/// what it returns).
#[derive(Debug)]
pub struct Pipeline<F> {
    /// Rounds submitted and not yet durable, oldest first, each with the frames held
    /// until it is (a round without records shares the entry of the round before it).
    held: VecDeque<(u64, Vec<F>)>,
    /// The last round number given out.
    last: u64,
    /// Every round up to this one is durable.
    durable: u64,
}

impl<F> Default for Pipeline<F> {
    fn default() -> Self {
        Pipeline { held: VecDeque::new(), last: 0, durable: 0 }
    }
}

/// What to do with a round's frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted<F> {
    /// Nothing is waiting for the disk: send them now.
    SendNow(Vec<F>),
    /// They are held; hand the round (numbered `id`) to the writer.
    Write(u64),
    /// They are held behind rounds still syncing; nothing to write.
    Held,
}

impl<F> Pipeline<F> {
    /// Takes a round's frames; `has_records`: the round has state or blocks to write.
    pub fn submit(&mut self, has_records: bool, frames: Vec<F>) -> Submitted<F> {
        if has_records {
            self.last += 1;
            self.held.push_back((self.last, frames));
            return Submitted::Write(self.last);
        }
        match self.held.back_mut() {
            None => Submitted::SendNow(frames),
            Some((_, waiting)) => {
                waiting.extend(frames);
                Submitted::Held
            }
        }
    }

    /// Every round up to `upto` is durable: their frames, in order, to send.
    pub fn on_durable(&mut self, upto: u64) -> Vec<F> {
        assert!(upto <= self.last, "the writer reports only rounds it was given");
        self.durable = self.durable.max(upto);
        let mut out = Vec::new();
        while self.held.front().is_some_and(|(id, _)| *id <= self.durable) {
            let (_, frames) = self.held.pop_front().expect("checked");
            out.extend(frames);
        }
        out
    }

    /// Rounds handed to the writer and not yet durable.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_leave_only_when_their_round_is_durable_and_in_order() {
        let mut p = Pipeline::default();
        assert_eq!(p.submit(false, vec![0]), Submitted::SendNow(vec![0]), "nothing syncing: no wait");
        assert_eq!(p.submit(true, vec![1]), Submitted::Write(1));
        assert_eq!(p.submit(false, vec![2]), Submitted::Held, "behind round 1: may depend on its state");
        assert_eq!(p.submit(true, vec![3]), Submitted::Write(2));
        assert_eq!(p.submit(true, vec![4]), Submitted::Write(3));
        assert_eq!(p.in_flight(), 3);
        assert_eq!(p.on_durable(1), vec![1, 2]);
        assert_eq!(p.on_durable(1), Vec::<i32>::new());
        assert_eq!(p.on_durable(3), vec![3, 4], "a group covers every round up to its last");
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.submit(false, vec![5]), Submitted::SendNow(vec![5]));
    }
}
