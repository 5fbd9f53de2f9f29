//! The `process` backend (SPEC §5.1): each compartment in its own sandboxed OS process
//! holding only its own key. The broker side spawns the compartment program, writes
//! crossings to its stdin and reads crossings from its stdout — the same byte boundary as
//! [`crate::InlineEnclave`] and [`crate::ThreadEnclave`], framed for a pipe.
//!
//! A compartment process that dies (a crash, `kill -9`, or the kernel's seccomp filter
//! killing it for a forbidden system call) is logged, counted and started again; the
//! replica keeps its other two compartments meanwhile. The broker is told
//! ([`RestartNotice`]). Without durable state the new process starts from its configuration
//! (see [`ProcessLauncher`]'s `incarnation`) and catches up through checkpoints and state
//! transfer (SPEC §4.3). With durable state (SPEC §10) every process, the first and each
//! restarted one, gets a *start crossing* before its first ordinary input: the sealed
//! records the broker holds for it and the monotonic counter's value
//! ([`start_crossing`]); it unseals them with its own key and resumes from them. The broker
//! hands the records over ([`crate::EnclaveHandle::resume`]) only once it has stored
//! everything the dead process sent, so the new one resumes from the latest state anything
//! that left the replica was recorded in.

use std::ffi::OsString;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use splitbft_types::CompartmentKind;

use splitbft_types::durable::SealedState;

use crate::{DurableStart, EnclaveHandle, MAX_MERGED_CROSSINGS, OutputSink, THREAD_QUEUE_CROSSINGS};

/// Most items (inputs or outputs) in one crossing. A crossing merges at most
/// [`MAX_MERGED_CROSSINGS`] submissions of at most a few thousand inputs each.
pub const MAX_CROSSING_ITEMS: usize = 1 << 20;
/// Largest item: a state-transfer snapshot (at most 1 GiB, the broker's `MAX_STATE_BYTES`)
/// plus its encoding.
pub const MAX_ITEM_BYTES: usize = (1 << 30) + (1 << 20);
/// Largest crossing in bytes.
pub const MAX_CROSSING_BYTES: u64 = 2 * (1 << 30);
/// Pause before starting a compartment again after it died, so a compartment that dies at
/// once does not spin the host.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between restarts: the pause doubles each time a process dies without
/// having answered anything (it cannot start: a wrong key path, a binary that does not
/// match its attestation), and resets once one answers.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// The start crossing of a durable compartment process (SPEC §10): the counter value, then
/// one item per sealed record (its latest image and the deltas after it).
pub fn start_crossing(start: &DurableStart) -> Vec<Bytes> {
    let mut items = Vec::with_capacity(start.records.len() + 1);
    items.push(Bytes::from(splitbft_types::codec::to_bytes(&start.counter)));
    items.extend(start.records.iter().map(|r| Bytes::from(splitbft_types::codec::to_bytes(r))));
    items
}

/// Why a start crossing was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No counter item.
    #[error("the start crossing is empty")]
    Empty,
    /// An item does not decode.
    #[error("start crossing item {0} does not decode: {1}")]
    Malformed(usize, splitbft_types::codec::CodecError),
}

/// Decodes a start crossing (from the untrusted broker: every item is checked; the records'
/// authenticity is the compartment's restore's business).
pub fn decode_start(items: &[Bytes]) -> Result<DurableStart, StartError> {
    let (first, rest) = items.split_first().ok_or(StartError::Empty)?;
    let counter = splitbft_types::codec::from_bytes(first).map_err(|e| StartError::Malformed(0, e))?;
    let records = rest
        .iter()
        .enumerate()
        .map(|(i, r)| splitbft_types::codec::from_bytes::<SealedState>(r).map_err(|e| StartError::Malformed(i + 1, e)))
        .collect::<Result<_, _>>()?;
    Ok(DurableStart { records, counter })
}

/// Why a crossing could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly between crossings.
    #[error("end of stream")]
    Closed,
    /// The stream failed or ended inside a crossing.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A count or length over its limit: the stream cannot be trusted any further.
    #[error("{what} {value} over the limit {limit}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
}

/// Writes one crossing: item count, then each item's length and bytes (little-endian u32s).
pub fn write_crossing(w: &mut impl Write, items: &[Bytes]) -> std::io::Result<()> {
    w.write_all(&(items.len() as u32).to_le_bytes())?;
    for item in items {
        w.write_all(&(item.len() as u32).to_le_bytes())?;
        w.write_all(item)?;
    }
    w.flush()
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads one crossing, checking every count and length against its limit before
/// allocating: the other side is not trusted (either way).
pub fn read_crossing(r: &mut impl Read) -> Result<Vec<Bytes>, FrameError> {
    let mut first = [0u8; 4];
    // A clean end is EOF before the first byte of a crossing.
    let mut got = 0;
    while got < 4 {
        match r.read(&mut first[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let count = u32::from_le_bytes(first) as usize;
    if count > MAX_CROSSING_ITEMS {
        return Err(FrameError::TooLarge { what: "items", value: count as u64, limit: MAX_CROSSING_ITEMS as u64 });
    }
    let mut items = Vec::with_capacity(count.min(4096));
    let mut total = 0u64;
    for _ in 0..count {
        let len = read_u32(r)? as usize;
        total += len as u64;
        if len > MAX_ITEM_BYTES {
            return Err(FrameError::TooLarge { what: "item bytes", value: len as u64, limit: MAX_ITEM_BYTES as u64 });
        }
        if total > MAX_CROSSING_BYTES {
            return Err(FrameError::TooLarge { what: "crossing bytes", value: total, limit: MAX_CROSSING_BYTES });
        }
        // Read into the spare capacity: no zeroing of what the read overwrites anyway.
        let mut item = Vec::with_capacity(len);
        (&mut *r).take(len as u64).read_to_end(&mut item)?;
        if item.len() != len {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        items.push(Bytes::from(item));
    }
    Ok(items)
}

/// How the broker starts a compartment process. The program reads its own configuration
/// and key (the broker passes paths, never secrets) and sandboxes itself before its
/// first input.
#[derive(Clone)]
pub struct ProcessLauncher {
    /// The compartment program (e.g. the `splitbft` binary, run as `splitbft enclave …`).
    pub program: PathBuf,
    /// Arguments for one compartment's `incarnation` (0 at start, +1 per restart).
    pub args: Arc<dyn Fn(CompartmentKind, u64) -> Vec<OsString> + Send + Sync>,
}

impl std::fmt::Debug for ProcessLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessLauncher").field("program", &self.program).finish_non_exhaustive()
    }
}

/// Called (on the compartment's supervising thread) when a compartment process died and
/// a new one was started: the broker must not expect answers to inputs the dead one had,
/// and should help the new one catch up.
pub type RestartNotice = Arc<dyn Fn(CompartmentKind, RestartReport) + Send + Sync>;

/// One compartment process death and restart.
#[derive(Clone, Debug)]
pub struct RestartReport {
    /// How the old process ended (e.g. killed by `SIGSYS`: the seccomp filter).
    pub exit: String,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Process id of the new one (0 if it could not be started yet).
    pub new_pid: u32,
    /// Restarts of this compartment so far: the new process's incarnation. With durable
    /// state it waits for its start crossing, [`crate::EnclaveHandle::resume`] with this
    /// number.
    pub restarts: u64,
}

/// Observable state of a compartment process (for reports and tests).
#[derive(Debug, Default)]
pub struct ProcessStatus {
    /// Current process id (0 while none runs).
    pub pid: AtomicU32,
    /// Deaths followed by a restart.
    pub restarts: AtomicU64,
    /// Of those, deaths by `SIGSYS` (the seccomp filter's kill).
    pub seccomp_kills: AtomicU64,
    /// Crossings written to it.
    pub crossings: AtomicU64,
    /// Inputs in those crossings (÷ crossings = inputs per crossing).
    pub inputs: AtomicU64,
    /// Crossings it answered with (any incarnation).
    pub answers: AtomicU64,
    /// Crossings dropped while a restarted durable process waited for its state (beyond
    /// [`THREAD_QUEUE_CROSSINGS`] held).
    pub dropped: AtomicU64,
}

/// A compartment in its own process, supervised by a broker thread.
pub struct ProcessEnclave {
    kind: CompartmentKind,
    tx: Option<Sender<Vec<Bytes>>>,
    /// Durable state only: each process's start state, by incarnation.
    starts: Option<Sender<(u64, DurableStart)>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<ProcessStatus>,
}

impl ProcessEnclave {
    /// Starts the compartment process and its supervisor. Fails if the first process
    /// cannot be spawned (a wrong program path should stop the replica, not loop). With
    /// `durable` (SPEC §10) the first process starts from that state, and every restarted
    /// one waits for the state [`EnclaveHandle::resume`] hands it.
    pub fn spawn(
        kind: CompartmentKind,
        launcher: ProcessLauncher,
        sink: OutputSink,
        notice: RestartNotice,
        durable: Option<DurableStart>,
    ) -> std::io::Result<Self> {
        let status = Arc::new(ProcessStatus::default());
        let first = spawn_child(&launcher, kind, 0)?;
        status.pid.store(first.id(), Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(THREAD_QUEUE_CROSSINGS);
        let (starts, starts_rx) = match durable {
            Some(start) => {
                // One start per incarnation at most is ever queued unread: a bounded channel
                // of a few is plenty, and `resume` never blocks on it.
                let (tx, rx) = crossbeam_channel::bounded(MAX_QUEUED_STARTS);
                let _ = tx.send((0, start));
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let supervisor = Supervisor { kind, launcher, sink, notice, status: status.clone(), rx, starts: starts_rx };
        let thread =
            std::thread::Builder::new().name(format!("enclave-{kind}-proc")).spawn(move || supervisor.run(first))?;
        Ok(ProcessEnclave { kind, tx: Some(tx), starts, thread: Some(thread), status })
    }

    /// The compartment process's state.
    pub fn status(&self) -> &Arc<ProcessStatus> {
        &self.status
    }
}

impl EnclaveHandle for ProcessEnclave {
    fn kind(&self) -> CompartmentKind {
        self.kind
    }

    fn submit(&mut self, inputs: Vec<Bytes>, _out: &mut Vec<Bytes>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(inputs) {
            Ok(()) => {}
            Err(TrySendError::Full(inputs)) => {
                let _ = tx.send(inputs);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn process_status(&self) -> Option<&Arc<ProcessStatus>> {
        Some(&self.status)
    }

    fn resume(&mut self, incarnation: u64, start: DurableStart) {
        if let Some(starts) = &self.starts
            && starts.try_send((incarnation, start)).is_err()
        {
            // Only if the supervisor is gone or several restarts went unserved: the newest
            // restart sends its own.
            tracing::warn!(kind = %self.kind, incarnation, "start state for a restarted compartment dropped");
        }
    }
}

impl Drop for ProcessEnclave {
    fn drop(&mut self) {
        self.tx.take();
        self.starts.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pipe capacity asked for each direction (Linux's default is 64 KiB, and
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default, caps what an unprivileged process may
/// ask): a batched crossing (a PrePrepare with its batch, sealed state) fits whole, so the
/// writer does not block and wake up once per 64 KiB while the reader drains it.
pub const PIPE_BYTES: usize = 1 << 20;

fn spawn_child(launcher: &ProcessLauncher, kind: CompartmentKind, incarnation: u64) -> std::io::Result<Child> {
    let child = Command::new(&launcher.program)
        .args((launcher.args)(kind, incarnation))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // Best effort: a smaller pipe is slower, not wrong.
    if let Some(stdin) = &child.stdin {
        let _ = rustix::pipe::fcntl_setpipe_size(stdin, PIPE_BYTES);
    }
    if let Some(stdout) = &child.stdout {
        let _ = rustix::pipe::fcntl_setpipe_size(stdout, PIPE_BYTES);
    }
    Ok(child)
}

struct Supervisor {
    kind: CompartmentKind,
    launcher: ProcessLauncher,
    sink: OutputSink,
    notice: RestartNotice,
    status: Arc<ProcessStatus>,
    rx: Receiver<Vec<Bytes>>,
    /// Durable state only: start states by incarnation.
    starts: Option<Receiver<(u64, DurableStart)>>,
}

/// Start states queued for a durable compartment's supervisor.
const MAX_QUEUED_STARTS: usize = 8;

enum Ended {
    /// The broker dropped the handle: stop the compartment.
    Shutdown,
    /// The process died (or its pipes broke).
    Died,
}

impl Supervisor {
    fn run(self, first: Child) {
        let mut child = Some(first);
        let mut incarnation = 0u64;
        let mut backoff = RESTART_BACKOFF;
        loop {
            let Some(mut current) = child.take() else {
                // Starting it failed last time: try again unless the broker is gone.
                // Inputs meanwhile are lost, like those a dead process had.
                if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = self.rx.recv_timeout(RESTART_BACKOFF) {
                    return;
                }
                match spawn_child(&self.launcher, self.kind, incarnation) {
                    Ok(c) => {
                        self.status.pid.store(c.id(), Ordering::Relaxed);
                        (self.notice)(self.kind, self.report("restarted after a failed start".into(), None, c.id()));
                        child = Some(c);
                    }
                    Err(e) => tracing::error!(kind = %self.kind, error = %e, "cannot start compartment process"),
                }
                continue;
            };
            // SPEC §10: a durable compartment's process gets its state before anything else.
            let mut held = Vec::new();
            let start = match &self.starts {
                None => None,
                Some(starts) => match self.await_start(starts, incarnation, &mut held) {
                    Some(start) => Some(start),
                    None => {
                        // The broker is gone: the process sees its input close and exits.
                        drop(current.stdin.take());
                        let _ = current.wait();
                        self.status.pid.store(0, Ordering::Relaxed);
                        return;
                    }
                },
            };
            let (ended, answered) = self.serve(&mut current, start, held);
            backoff = if answered { RESTART_BACKOFF } else { (backoff * 2).min(MAX_RESTART_BACKOFF) };
            match ended {
                Ended::Shutdown => {
                    // Its stdin is closed: it sees EOF and exits.
                    let _ = current.wait();
                    self.status.pid.store(0, Ordering::Relaxed);
                    return;
                }
                Ended::Died => {
                    let _ = current.kill();
                    let exit = current.wait();
                    self.status.pid.store(0, Ordering::Relaxed);
                    let (text, signal) = describe(exit);
                    self.status.restarts.fetch_add(1, Ordering::Relaxed);
                    if signal == Some(libc::SIGSYS) {
                        self.status.seccomp_kills.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::error!(kind = %self.kind, exit = %text, "compartment process died; restarting it");
                    std::thread::sleep(backoff);
                    incarnation += 1;
                    match spawn_child(&self.launcher, self.kind, incarnation) {
                        Ok(c) => {
                            self.status.pid.store(c.id(), Ordering::Relaxed);
                            (self.notice)(self.kind, self.report(text, signal, c.id()));
                            child = Some(c);
                        }
                        Err(e) => {
                            tracing::error!(kind = %self.kind, error = %e, "cannot restart compartment process");
                            (self.notice)(self.kind, self.report(text, signal, 0));
                        }
                    }
                }
            }
        }
    }

    fn report(&self, exit: String, signal: Option<i32>, new_pid: u32) -> RestartReport {
        RestartReport { exit, signal, new_pid, restarts: self.status.restarts.load(Ordering::Relaxed) }
    }

    /// Waits for the start state of `incarnation` (older ones are stale: a process that died
    /// before it was served). Inputs arriving meanwhile are kept, at most
    /// [`THREAD_QUEUE_CROSSINGS`] crossings (the broker waits for room beyond that, and it
    /// must not: it sends the start state), and go to the process after its start. `None`
    /// when the broker has stopped.
    fn await_start(
        &self,
        starts: &Receiver<(u64, DurableStart)>,
        incarnation: u64,
        held: &mut Vec<Vec<Bytes>>,
    ) -> Option<Vec<Bytes>> {
        loop {
            crossbeam_channel::select! {
                recv(starts) -> msg => match msg {
                    Ok((n, start)) if n == incarnation => return Some(start_crossing(&start)),
                    Ok(_) => {}
                    Err(_) => return None,
                },
                recv(self.rx) -> msg => match msg {
                    Ok(inputs) => {
                        if held.len() >= THREAD_QUEUE_CROSSINGS {
                            // Lost like inputs a dead process had; the protocol repairs it.
                            held.remove(0);
                            self.status.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        held.push(inputs);
                    }
                    Err(_) => return None,
                },
            }
        }
    }

    /// Moves crossings to and from one process until it dies or the broker stops; also
    /// says whether it answered anything. `start` (durable state) is written first, then
    /// `held` inputs.
    fn serve(&self, child: &mut Child, start: Option<Vec<Bytes>>, held: Vec<Vec<Bytes>>) -> (Ended, bool) {
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return (Ended::Died, false);
        };
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered_reader = answered.clone();
        let (died_tx, died_rx) = crossbeam_channel::bounded::<()>(1);
        let (kind, sink, status) = (self.kind, self.sink.clone(), self.status.clone());
        let reader = std::thread::Builder::new().name(format!("enclave-{kind}-out")).spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, stdout);
            loop {
                match read_crossing(&mut r) {
                    Ok(outputs) => {
                        answered_reader.store(true, Ordering::Relaxed);
                        status.answers.fetch_add(1, Ordering::Relaxed);
                        if !outputs.is_empty() {
                            sink(kind, outputs);
                        }
                    }
                    Err(FrameError::Closed) => break,
                    Err(e) => {
                        tracing::error!(%kind, error = %e, "compartment process wrote a malformed crossing");
                        break;
                    }
                }
            }
            let _ = died_tx.send(());
        });
        let reader = match reader {
            Ok(r) => r,
            Err(_) => return (Ended::Died, false),
        };
        let mut w: BufWriter<ChildStdin> = BufWriter::with_capacity(1 << 16, stdin);
        let held: Vec<Bytes> = held.into_iter().flatten().collect();
        let first = start.into_iter().chain((!held.is_empty()).then_some(held));
        let mut failed = false;
        for crossing in first {
            if write_crossing(&mut w, &crossing).is_err() {
                failed = true;
                break;
            }
            self.status.crossings.fetch_add(1, Ordering::Relaxed);
            self.status.inputs.fetch_add(crossing.len() as u64, Ordering::Relaxed);
        }
        let ended = loop {
            if failed {
                break Ended::Died;
            }
            crossbeam_channel::select! {
                recv(self.rx) -> msg => match msg {
                    Ok(mut inputs) => {
                        for _ in 0..MAX_MERGED_CROSSINGS {
                            match self.rx.try_recv() {
                                Ok(more) => inputs.extend(more),
                                Err(_) => break,
                            }
                        }
                        if write_crossing(&mut w, &inputs).is_err() {
                            break Ended::Died;
                        }
                        self.status.crossings.fetch_add(1, Ordering::Relaxed);
                        self.status.inputs.fetch_add(inputs.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => break Ended::Shutdown,
                },
                recv(died_rx) -> _ => break Ended::Died,
            }
        };
        drop(w);
        if matches!(ended, Ended::Died) {
            let _ = child.kill();
        }
        let _ = reader.join();
        (ended, answered.load(Ordering::Relaxed))
    }
}

fn describe(exit: std::io::Result<ExitStatus>) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Ok(status) => match status.signal() {
            Some(libc::SIGSYS) => ("killed by SIGSYS (seccomp: forbidden system call)".into(), Some(libc::SIGSYS)),
            Some(libc::SIGKILL) => ("killed by SIGKILL".into(), Some(libc::SIGKILL)),
            Some(sig) => (format!("killed by signal {sig}"), Some(sig)),
            None => (format!("exited with {status}"), None),
        },
        Err(e) => (format!("wait failed: {e}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings_round_trip() {
        let items = vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from(vec![7u8; 70_000])];
        let mut buf = Vec::new();
        write_crossing(&mut buf, &items).unwrap();
        write_crossing(&mut buf, &[]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_crossing(&mut r).unwrap(), items);
        assert!(read_crossing(&mut r).unwrap().is_empty());
        assert!(matches!(read_crossing(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn start_crossings_round_trip_and_refuse_malformed_items() {
        use splitbft_types::durable::RecordKind;
        let record = |index| SealedState { kind: RecordKind::Delta, epoch: 3, index, sealed: vec![index as u8; 40] };
        let start = DurableStart { records: vec![record(1), record(2)], counter: 3 };
        let items = start_crossing(&start);
        assert_eq!(items.len(), 3);
        let back = decode_start(&items).unwrap();
        assert_eq!((back.records, back.counter), (start.records, start.counter));
        assert!(matches!(decode_start(&[]), Err(StartError::Empty)));
        let mut bad = items.clone();
        bad[2] = Bytes::from_static(&[0xff; 3]);
        assert!(matches!(decode_start(&bad), Err(StartError::Malformed(2, _))));
        let mut trailing = items[0].to_vec();
        trailing.push(0);
        assert!(matches!(decode_start(&[Bytes::from(trailing)]), Err(StartError::Malformed(0, _))));
    }

    #[test]
    fn truncated_and_oversize_crossings_are_errors_not_allocations() {
        let mut buf = Vec::new();
        write_crossing(&mut buf, &[Bytes::from_static(b"hello")]).unwrap();
        for cut in 1..buf.len() {
            assert!(matches!(read_crossing(&mut &buf[..cut]), Err(FrameError::Io(_))), "cut {cut}");
        }
        let huge_count = (u32::MAX).to_le_bytes();
        assert!(matches!(read_crossing(&mut &huge_count[..]), Err(FrameError::TooLarge { what: "items", .. })));
        let mut huge_item = 1u32.to_le_bytes().to_vec();
        huge_item.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_crossing(&mut &huge_item[..]), Err(FrameError::TooLarge { what: "item bytes", .. })));
    }
}
