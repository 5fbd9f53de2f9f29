//! The tokio driver of one replica: TCP to peers and clients, length-prefixed frames with a
//! size limit, one coalescing writer per connection, and the [`BrokerCore`] plus the three
//! compartments behind the enclave boundary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use splitbft_enclave::process::ProcessLauncher;
use splitbft_enclave::{
    Backend, DurableStart, EnclaveHandle, ReplicaSecrets, start_processes, start_replica, start_replica_durable,
};
use splitbft_transport::{Identity, SecureWrite, initiate, respond};
use splitbft_types::boundary::Stats;
use splitbft_types::counters::Counter;
use splitbft_types::keys::TransportSecret;
use splitbft_types::limits::Limits;
use splitbft_types::wire::{Hello, MAX_FRAME_BYTES};
use splitbft_types::{Application, ClientId, CompartmentKind, ProtocolConfig, ReplicaId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::commit::{Committer, MAX_ROUNDS_IN_FLIGHT, Pipeline, Round, Submitted, Synced, Writer};
use crate::core::{Action, BrokerCore, BrokerOptions};
use crate::drive::drive;
use crate::store::BlockFile;
use crate::wal::{DirLock, MonotonicCounter, SoftwareCounter, Wal, WalError, lock_dir};
use splitbft_types::durable::SealedState;

/// Frames queued per outgoing connection; when full, frames to that peer or client are
/// dropped (and counted) instead of stalling the replica: a slow or dead peer must not
/// hold up the others, and retransmission repairs the loss.
pub const CONNECTION_QUEUE_FRAMES: usize = 16 * 1024;
/// Network events queued for the core; readers wait when it is full (TCP back-pressure).
pub const CORE_QUEUE_EVENTS: usize = 8 * 1024;
/// Events the core handles before it crosses into the compartments.
const EVENTS_PER_ROUND: usize = 512;
/// Frames one writer coalesces into one flush.
const FRAMES_PER_FLUSH: usize = 256;
/// Bytes queued for one peer (SPEC §11 byte budget): a few full out-logs' worth. Beyond
/// it frames are dropped and counted, and retransmission repairs the loss.
pub const PEER_QUEUE_BYTES: usize = 256 * 1024 * 1024;
/// Bytes queued for one client connection: replies for a full window of the largest
/// results, twice. Beyond it replies are dropped (the client retransmits).
pub const CLIENT_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Bytes of frames read from all connections and not yet handled by the core: readers wait
/// (TCP back-pressure) while it is spent. At least one largest frame (checked at start).
pub const CORE_QUEUE_BYTES: usize = 128 * 1024 * 1024;
/// A write that makes no progress for this long means the reader at the other end is not
/// reading: the connection is closed rather than buffered for without end (SPEC §11).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client connection with no frame for this long is closed (the client library
/// reconnects when it next sends).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections still in their handshake, in total: each costs a task, a socket and at most
/// one handshake message. Strangers cannot hold more than this many sockets.
pub const MAX_HANDSHAKING: usize = 256;
/// Connections still in their handshake from one IP address: fair admission, so one
/// address cannot take every handshake slot.
pub const MAX_HANDSHAKING_PER_ADDRESS: usize = 16;
/// Reconnection back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Static setup of one replica process.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The protocol configuration shared by all enclaves.
    pub protocol: ProtocolConfig,
    /// This replica.
    pub me: ReplicaId,
    /// Listening address of every replica, indexed by replica id.
    pub addresses: Vec<SocketAddr>,
    /// Broker tuning.
    pub options: BrokerOptions,
    /// How the compartments are hosted.
    pub backend: Backend,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Where sealed ledger blocks are appended (`ledger.blocks` inside it, SPEC §7).
    /// Without one, blocks the Execution enclave seals are counted and dropped.
    pub data_dir: Option<PathBuf>,
    /// Sealed write-ahead compartment state in `data_dir` (SPEC §10): every round's state
    /// is fsync'd before its outputs leave, and a restart resumes from it. Needs `data_dir`.
    pub durable: bool,
    /// This replica environment's transport secret (SPEC §11): its public half must be
    /// `protocol.transport_keys[me]`.
    pub transport: TransportSecret,
}

impl NodeConfig {
    /// A node with default broker options.
    pub fn new(
        protocol: ProtocolConfig,
        me: ReplicaId,
        addresses: Vec<SocketAddr>,
        backend: Backend,
        transport: TransportSecret,
    ) -> Self {
        NodeConfig {
            options: BrokerOptions::new(&protocol),
            protocol,
            me,
            addresses,
            backend,
            max_frame_bytes: MAX_FRAME_BYTES,
            data_dir: None,
            durable: false,
            transport,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Enclaves refused the configuration or could not start.
    #[error(transparent)]
    Enclave(#[from] splitbft_enclave::EnclaveError),
    /// The address list does not match the configuration.
    #[error("{addresses} addresses for {replicas} replicas")]
    Addresses {
        /// Addresses given.
        addresses: usize,
        /// Replicas configured.
        replicas: usize,
    },
    /// The write-ahead log, its lock or a counter could not be used.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Durability asked for without a data directory.
    #[error("durable state needs a data directory")]
    DurableWithoutDataDir,
    /// Two size limits disagree (SPEC §11): something could be accepted that cannot later
    /// be framed, replied to or transferred.
    #[error(transparent)]
    Limits(#[from] splitbft_types::limits::LimitsError),
    /// The configuration lacks transport keys, or this replica's secret is not its key.
    #[error("transport keys (SPEC §11): {0}")]
    Transport(&'static str),
    /// The data directory or its block file could not be opened.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// What the broker reports about each compartment process it supervises (SPEC §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessField {
    /// Its current process id.
    Pid,
    /// Times it was restarted after dying.
    Restarts,
    /// Deaths by SIGSYS (the seccomp filter killed it).
    SeccompKills,
    /// Enclave-boundary crossings served.
    Crossings,
    /// Inputs in those crossings.
    Inputs,
    /// Crossings it answered with.
    Answers,
    /// Crossings dropped while a restarted process waited for its sealed state.
    Dropped,
}

impl ProcessField {
    /// Every field.
    pub const ALL: [ProcessField; 7] = [
        ProcessField::Pid,
        ProcessField::Restarts,
        ProcessField::SeccompKills,
        ProcessField::Crossings,
        ProcessField::Inputs,
        ProcessField::Answers,
        ProcessField::Dropped,
    ];

    /// Name suffix in the report (`enclave_<kind>_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            ProcessField::Pid => "pid",
            ProcessField::Restarts => "restarts",
            ProcessField::SeccompKills => "seccomp_kills",
            ProcessField::Crossings => "crossings",
            ProcessField::Inputs => "inputs",
            ProcessField::Answers => "answers",
            ProcessField::Dropped => "crossings_dropped",
        }
    }
}

/// What a node reports when it stops.
#[derive(Clone, Debug, Default)]
pub struct NodeReport {
    /// Broker counters, sorted by name.
    pub broker: Vec<(String, u64)>,
    /// Compartment stats, in [`CompartmentKind::ALL`] order (missing if it did not answer).
    pub enclaves: Vec<Option<Stats>>,
    /// How long the requests this replica executed waited here (known to executed).
    pub request_latency: crate::latency::LatencyHistogram,
}

impl NodeReport {
    /// Value of a broker counter.
    pub fn broker_counter(&self, counter: Counter) -> u64 {
        self.broker.iter().find(|(n, _)| n == counter.name()).map_or(0, |(_, v)| *v)
    }

    /// A compartment process's supervision figure (`--backend process` only; 0 otherwise).
    pub fn process_figure(&self, kind: CompartmentKind, field: ProcessField) -> u64 {
        let name = format!("enclave_{kind}_{}", field.name());
        self.broker.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }
}

/// A frame's share of [`CORE_QUEUE_BYTES`], given back when the core has handled it.
type Budget = tokio::sync::OwnedSemaphorePermit;

enum Event {
    Peer(ReplicaId, Bytes, Budget),
    Client(ClientId, Bytes, Budget),
    ClientUp(ClientId, Outbox),
    PeerUp(ReplicaId),
    Count(Counter),
    Report(oneshot::Sender<NodeReport>),
}

/// Reads a running node's report; stops answering once the node has stopped.
#[derive(Clone, Debug)]
pub struct NodeReporter {
    events: mpsc::Sender<Event>,
}

impl NodeReporter {
    /// See [`NodeHandle::report`].
    pub async fn report(&self) -> Option<NodeReport> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Report(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Network events queued for the broker core and not yet handled (a gauge for metrics).
    pub fn queue_depth(&self) -> usize {
        self.events.max_capacity() - self.events.capacity()
    }
}

/// A running replica.
pub struct NodeHandle {
    events: mpsc::Sender<Event>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<NodeReport>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeHandle {
    /// Current counters without stopping. The compartments' stats are those of their last
    /// answer; each call also asks them again, so the next report is fresh (metrics scrapes).
    pub async fn report(&self) -> Option<NodeReport> {
        self.reporter().report().await
    }

    /// A cheap handle that reads reports while the node runs (for a metrics endpoint).
    pub fn reporter(&self) -> NodeReporter {
        NodeReporter { events: self.events.clone() }
    }

    /// Stops the replica (its broker, connections and compartments) and returns its report.
    pub async fn shutdown(mut self) -> NodeReport {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap_or_default()
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.task.abort();
    }
}

/// Starts a replica on `listener`: dials every peer, accepts peers and clients. The
/// compartments run in this process (`inline` or `thread` backend) from `secrets`.
pub async fn spawn_node(
    config: NodeConfig,
    listener: TcpListener,
    secrets: ReplicaSecrets,
    app: Box<dyn Application>,
) -> Result<NodeHandle, NodeError> {
    check_addresses(&config)?;
    // SPEC §11: refuse to start with limits that disagree, naming the two.
    Limits::new(&config.protocol, app.limits(), config.max_frame_bytes).check()?;
    let (out_tx, out_rx) = mpsc::unbounded_channel::<FromEnclave>();
    let sink: splitbft_enclave::OutputSink = Arc::new(move |kind, outputs| {
        let _ = out_tx.send(FromEnclave::Outputs(kind, outputs));
    });
    let (enclaves, durable, replay) = if config.durable {
        let dir = config.data_dir.as_ref().ok_or(NodeError::DurableWithoutDataDir)?;
        let (enclaves, durable, replay) = open_durable(&config, dir, secrets, app, sink)?;
        (enclaves, Some(durable), replay)
    } else {
        (start_replica(&config.protocol, config.me, secrets, app, config.backend, sink)?, None, Default::default())
    };
    start_driver(config, listener, enclaves, durable, replay, out_rx)
}

/// Starts a replica whose compartments run as sandboxed processes (SPEC §5.1 `process`
/// backend) started by `launcher`: each reads its own key, and this process holds none.
/// With `durable` (the launcher must start the processes with durable state on) the log is
/// kept here exactly as for the other backends; each compartment process gets its sealed
/// records at start and at every restart and unseals them itself (SPEC §10).
pub async fn spawn_node_processes(
    config: NodeConfig,
    listener: TcpListener,
    launcher: ProcessLauncher,
) -> Result<NodeHandle, NodeError> {
    check_addresses(&config)?;
    let (durable, starts) = if config.durable {
        let dir = config.data_dir.as_ref().ok_or(NodeError::DurableWithoutDataDir)?;
        let (mut durable, starts) = open_store(dir)?;
        // What a restarted process resumes from: the log's records since each latest image.
        durable.latest = Some(starts.clone().map(|s| s.records));
        (Some(durable), Some(starts))
    } else {
        (None, None)
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel::<FromEnclave>();
    let restart_tx = out_tx.clone();
    let sink: splitbft_enclave::OutputSink = Arc::new(move |kind, outputs| {
        let _ = out_tx.send(FromEnclave::Outputs(kind, outputs));
    });
    let notice: splitbft_enclave::process::RestartNotice = Arc::new(move |kind, report| {
        let _ = restart_tx.send(FromEnclave::Restarted(kind, report));
    });
    // What each restore says (Execution's local replay, the views resumed) is the first
    // crossing out of its process.
    let mut enclaves = start_processes(&launcher, sink, notice, starts)?;
    wait_until_answering(&mut enclaves).await;
    start_driver(config, listener, enclaves, durable, Default::default(), out_rx)
}

/// How long [`spawn_node_processes`] waits for its compartment processes to answer.
pub const PROCESS_START_WAIT: Duration = Duration::from_secs(30);

/// Waits until every compartment process has answered a stats query (its key loaded, its
/// measurement checked, its state restored, its sandbox on), at most
/// [`PROCESS_START_WAIT`]: like the in-process backends, whose compartments are built
/// before the replica starts, a replica does not take work its compartments cannot take
/// yet. Past the wait, or once one died, it starts anyway (the supervisors keep restarting
/// a process that cannot start, and the log says why).
async fn wait_until_answering(enclaves: &mut [Box<dyn EnclaveHandle>; 3]) {
    use std::sync::atomic::Ordering::Relaxed;
    let query = Bytes::from(splitbft_types::codec::to_bytes(&splitbft_types::boundary::Input::QueryStats));
    for enclave in enclaves.iter_mut() {
        enclave.submit(vec![query.clone()], &mut Vec::new());
    }
    let deadline = Instant::now() + PROCESS_START_WAIT;
    // One that died is restarted by its supervisor and, with durable state, waits for the
    // driver to hand it its state: do not wait for it here.
    let answered = |e: &dyn EnclaveHandle| {
        e.process_status().is_none_or(|s| s.answers.load(Relaxed) > 0 || s.restarts.load(Relaxed) > 0)
    };
    while !enclaves.iter().all(|e| answered(e.as_ref())) {
        if Instant::now() >= deadline {
            tracing::warn!("compartment processes did not all answer within {PROCESS_START_WAIT:?}: starting anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn check_addresses(config: &NodeConfig) -> Result<(), NodeError> {
    if config.max_frame_bytes > CORE_QUEUE_BYTES || config.max_frame_bytes > u32::MAX as usize {
        // A frame must fit the readers' byte budget, or its reader would wait for ever.
        return Err(NodeError::Transport("max_frame_bytes exceeds the core queue's byte budget"));
    }
    if config.addresses.len() != config.protocol.n() {
        return Err(NodeError::Addresses { addresses: config.addresses.len(), replicas: config.protocol.n() });
    }
    match config.protocol.transport_keys.get(config.me.0 as usize) {
        _ if config.protocol.transport_keys.len() != config.protocol.n() => {
            Err(NodeError::Transport("the configuration needs one transport key per replica"))
        }
        Some(key) if *key == config.transport.public() => Ok(()),
        _ => Err(NodeError::Transport("this replica's transport secret does not match its key in the configuration")),
    }
}

/// What the compartments' threads hand the driver.
enum FromEnclave {
    /// Outputs of one crossing.
    Outputs(CompartmentKind, Vec<Bytes>),
    /// A compartment process died and was started again.
    Restarted(CompartmentKind, splitbft_enclave::process::RestartReport),
}

fn start_driver(
    config: NodeConfig,
    listener: TcpListener,
    enclaves: [Box<dyn EnclaveHandle>; 3],
    durable: Option<Durable>,
    replay: [Vec<Bytes>; 3],
    out_rx: mpsc::UnboundedReceiver<FromEnclave>,
) -> Result<NodeHandle, NodeError> {
    let ledger = match &config.data_dir {
        Some(dir) => Some(BlockFile::open(dir).map_err(|source| NodeError::DataDir { path: dir.clone(), source })?),
        None => None,
    };
    let ledger_torn = ledger.as_ref().is_some_and(|l| l.torn_tail_bytes > 0);
    // Durable: the block file is written and synced with the round by the writer thread
    // (SPEC §10); otherwise the event loop appends and flushes it.
    let mut recovered_batches = Vec::new();
    let (ledger, writer) = match durable {
        Some(mut d) => {
            let (recovered_bytes, torn) = (d.wal.recovered_bytes, d.wal.torn_tail_bytes);
            recovered_batches = d.wal.take_recovered_batches();
            let counters = d.counters.each_ref().map(|c| c.read());
            let latest = d.latest.map(|records| Latest { records, counters });
            let committer = Committer::new(d.wal, d.counters, d.counter_paths, ledger);
            let (tx, rx) = mpsc::unbounded_channel();
            let writer = Writer::spawn(committer, move |synced| {
                let _ = tx.send(synced);
            })
            .map_err(|source| NodeError::DataDir { path: config.data_dir.clone().unwrap_or_default(), source })?;
            let pipeline = DurableDriver {
                writer: Some(writer),
                pipeline: Pipeline::default(),
                synced: Some(rx),
                _lock: d.lock,
                latest,
            };
            (None, Some((pipeline, recovered_bytes, torn)))
        }
        None => (ledger, None),
    };
    let (events_tx, events_rx) = mpsc::channel(CORE_QUEUE_EVENTS);
    let mut tasks = Vec::new();
    let mut peers = HashMap::new();
    for (i, addr) in config.addresses.iter().enumerate() {
        let peer = ReplicaId(i as u32);
        if peer == config.me {
            continue;
        }
        let (tx, rx) = Outbox::new(PEER_QUEUE_BYTES);
        peers.insert(peer, tx);
        let dial = Dial {
            me: config.me,
            peer,
            addr: *addr,
            cluster_id: config.protocol.cluster_id,
            peer_key: config.protocol.transport_keys[i],
            secret: config.transport.clone(),
            max_frame: config.max_frame_bytes,
        };
        tasks.push(tokio::spawn(dial_peer(dial, rx, events_tx.clone())));
    }
    let accept = Accept {
        protocol: Arc::new(config.protocol.clone()),
        secret: Arc::new(config.transport.clone()),
        max_frame: config.max_frame_bytes,
        budget: Arc::new(tokio::sync::Semaphore::new(CORE_QUEUE_BYTES)),
        handshaking: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKING)),
        per_address: Arc::default(),
        live: Arc::default(),
        next_connection: Arc::default(),
    };
    tasks.push(tokio::spawn(accept_loop(listener, events_tx.clone(), accept)));
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let mut core = BrokerCore::new(config.protocol.clone(), config.me, config.options.clone());
    if ledger_torn {
        core.count(Counter::LedgerTornTailCut);
    }
    // The batches this replica logged (SPEC §10): peers may need them to execute what
    // they certified before the restart.
    for (_, frame) in recovered_batches {
        core.restore_batch(Bytes::from(frame));
    }
    let ledger = ledger.map(|file| Ledger { file, error_logged: false });
    let durable = writer.map(|(d, recovered_bytes, torn)| {
        core.count_n(Counter::StateRecoveredBytes, recovered_bytes);
        if torn > 0 {
            core.count(Counter::StateTornTailCut);
        }
        d
    });
    let mut driver = Driver {
        core,
        enclaves,
        peers,
        clients: HashMap::new(),
        ledger,
        durable,
        start: Instant::now(),
        failed: false,
        resumes: Vec::new(),
    };
    for (kind, outputs) in CompartmentKind::ALL.into_iter().zip(replay) {
        // What each restore says (SPEC §10): the view it resumed in, a Confirmation's
        // pending ViewChange, Execution's local replay (ledger blocks, checkpoints and
        // snapshots it rebuilt).
        if !outputs.is_empty() {
            let mut actions = Vec::new();
            driver.core.on_enclave_outputs(kind, outputs, 0, &mut actions);
            driver.execute(&mut actions);
        }
    }
    {
        // SPEC §10 recovery fence: a compartment that started without fresh state asks for
        // statements; the nonce seed is the OS's randomness (std's hasher keys draw it).
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let mut actions = Vec::new();
        driver.core.begin_recovery(seed, &mut actions);
        driver.execute(&mut actions);
    }
    let task = tokio::spawn(driver.run(events_rx, out_rx, shutdown_rx));
    Ok(NodeHandle { events: events_tx, shutdown: Some(shutdown_tx), task, tasks })
}

fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(max_frame_bytes).new_codec()
}

struct Driver {
    core: BrokerCore,
    enclaves: [Box<dyn EnclaveHandle>; 3],
    peers: HashMap<ReplicaId, Outbox>,
    clients: HashMap<ClientId, Outbox>,
    ledger: Option<Ledger>,
    durable: Option<DurableDriver>,
    start: Instant,
    /// Storage failed: nothing more may leave this replica (SPEC §10 write-ahead).
    failed: bool,
    /// Restarted compartment processes (kind, incarnation) waiting for their sealed state.
    resumes: Vec<(CompartmentKind, u64)>,
}

/// The write-ahead state of a durable replica (SPEC §10), as opened.
struct Durable {
    wal: Wal,
    counters: [Box<dyn MonotonicCounter + Send>; 3],
    counter_paths: [PathBuf; 3],
    lock: DirLock,
    /// `process` backend: each compartment's records as read from the log, kept up to date
    /// for restarted compartment processes ([`Latest`]).
    latest: Option<[Vec<SealedState>; 3]>,
}

/// The event loop's side of the pipelined group commit ([`crate::commit`]).
struct DurableDriver {
    /// None once closed (shutdown).
    writer: Option<Writer>,
    /// Frames held until their round is durable.
    pipeline: Pipeline<Action>,
    /// The writer's reports (taken by the event loop).
    synced: Option<mpsc::UnboundedReceiver<Synced>>,
    /// Held for the process's life: a second replica on the directory is refused.
    _lock: DirLock,
    /// `process` backend: what a restarted compartment process resumes from.
    latest: Option<Latest>,
}

/// What a restarted compartment process resumes from (SPEC §10, `process` backend): each
/// compartment's records since its latest image, as in the log — appended ones included,
/// since they are durable before anything of their round (or of the restarted process's
/// later rounds) leaves — and each monotonic counter as of the last synced group (the
/// writer thread owns the counters; a record newer than its counter is not refused).
struct Latest {
    records: [Vec<SealedState>; 3],
    counters: [u64; 3],
}

impl Latest {
    /// Keeps a record appended to the log.
    fn remember(&mut self, kind: CompartmentKind, state: &SealedState) {
        crate::wal::keep_restorable(&mut self.records[kind.index()], state.clone());
    }

    /// What compartment `kind` resumes from now.
    fn start_of(&self, kind: CompartmentKind) -> DurableStart {
        DurableStart { records: self.records[kind.index()].clone(), counter: self.counters[kind.index()] }
    }
}

type Started = ([Box<dyn EnclaveHandle>; 3], Durable, [Vec<Bytes>; 3]);

/// Locks the data directory, reads the log and counters, and starts each compartment from
/// its own sealed state.
fn open_durable(
    config: &NodeConfig,
    dir: &std::path::Path,
    secrets: ReplicaSecrets,
    app: Box<dyn Application>,
    sink: splitbft_enclave::OutputSink,
) -> Result<Started, NodeError> {
    let (durable, start) = open_store(dir)?;
    let (enclaves, replay) =
        start_replica_durable(&config.protocol, config.me, secrets, app, config.backend, sink, start)?;
    Ok((enclaves, durable, replay))
}

/// Locks the data directory and reads the log and counters: the durable store and what
/// each compartment starts from (SPEC §10), whichever backend hosts them.
fn open_store(dir: &std::path::Path) -> Result<(Durable, [DurableStart; 3]), NodeError> {
    let lock = lock_dir(dir)?;
    let (wal, recovered) = Wal::open(dir)?;
    let counters = [
        SoftwareCounter::open(dir, CompartmentKind::Preparation)?,
        SoftwareCounter::open(dir, CompartmentKind::Confirmation)?,
        SoftwareCounter::open(dir, CompartmentKind::Execution)?,
    ];
    let counter_paths = CompartmentKind::ALL.map(|kind| SoftwareCounter::path(dir, kind));
    let [p, c, e] = recovered;
    let start = [
        DurableStart { records: p, counter: counters[0].read() },
        DurableStart { records: c, counter: counters[1].read() },
        DurableStart { records: e, counter: counters[2].read() },
    ];
    tracing::info!(
        dir = %dir.display(),
        records = start.iter().map(|s| s.records.len()).sum::<usize>(),
        "durable state: software monotonic counter (trusts the host)"
    );
    let counters = counters.map(|c| Box::new(c) as Box<dyn MonotonicCounter + Send>);
    Ok((Durable { wal, counters, counter_paths, lock, latest: None }, start))
}

/// The block file and whether an I/O error was already logged (they are all counted).
struct Ledger {
    file: BlockFile,
    error_logged: bool,
}

impl Ledger {
    /// Counts an I/O error (`what`) and logs the first one.
    fn failed(&mut self, core: &mut BrokerCore, what: Counter, error: &std::io::Error) {
        core.count(what);
        if !self.error_logged {
            self.error_logged = true;
            tracing::error!(path = %self.file.path().display(), %error, "{what}: ledger blocks are being lost");
        }
    }
}

impl Driver {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn on_from_enclave(&mut self, from: FromEnclave, now: u64, actions: &mut Vec<Action>) {
        match from {
            FromEnclave::Outputs(kind, outs) => self.core.on_enclave_outputs(kind, outs, now, actions),
            FromEnclave::Restarted(kind, report) => {
                tracing::error!(
                    %kind, exit = %report.exit, new_pid = report.new_pid, restarts = report.restarts,
                    "compartment process died and was restarted"
                );
                let resumes = self.durable.as_ref().is_some_and(|d| d.latest.is_some());
                self.core.on_enclave_restarted(kind, resumes, now, actions);
                if resumes {
                    // Its state is handed over after this round's records are appended:
                    // everything the dead process sent was received before this notice.
                    self.resumes.push((kind, report.restarts));
                }
            }
        }
    }

    /// Hands each restarted compartment process the state it resumes from (SPEC §10).
    fn resume_restarted(&mut self) {
        let Some(latest) = self.durable.as_ref().and_then(|d| d.latest.as_ref()) else { return };
        for (kind, incarnation) in self.resumes.drain(..) {
            let start = latest.start_of(kind);
            tracing::warn!(
                %kind, incarnation, records = start.records.len(),
                "restarted compartment process resumes from its sealed state"
            );
            self.enclaves[kind.index()].resume(incarnation, start);
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut outputs: mpsc::UnboundedReceiver<FromEnclave>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> NodeReport {
        let mut actions = Vec::new();
        let mut synced = self.durable.as_mut().and_then(|d| d.synced.take());
        loop {
            let wait = self.core.next_deadline_us().map(|at| Duration::from_micros(at.saturating_sub(self.now_us())));
            let sleep = async move {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            let next_synced = async {
                match synced.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let open = !self.disk_behind();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                report = next_synced => {
                    let Some(report) = report else {
                        // The writer thread ended without reporting an error: it panicked
                        // (a programmer error). Nothing more can be made durable.
                        tracing::error!("the write-ahead writer thread ended: stopping this replica, its unsynced rounds unsent");
                        self.core.count(Counter::StateWriteErrors);
                        break;
                    };
                    self.on_synced(report);
                    if let Some(rx) = synced.as_mut() {
                        while let Ok(report) = rx.try_recv() {
                            self.on_synced(report);
                        }
                    }
                }
                Some(from) = outputs.recv(), if open => {
                    let now = self.now_us();
                    self.on_from_enclave(from, now, &mut actions);
                    // Group commit: every compartment's outputs queued now share one fsync.
                    for _ in 0..EVENTS_PER_ROUND {
                        match outputs.try_recv() {
                            Ok(from) => self.on_from_enclave(from, now, &mut actions),
                            Err(_) => break,
                        }
                    }
                }
                Some(event) = events.recv(), if open => {
                    self.on_event(event, &mut actions);
                    for _ in 0..EVENTS_PER_ROUND {
                        match events.try_recv() {
                            Ok(event) => self.on_event(event, &mut actions),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep, if open => {
                    let now = self.now_us();
                    self.core.on_tick(now, &mut actions);
                }
            }
            self.execute(&mut actions);
            if self.failed {
                break;
            }
            self.resume_restarted();
        }
        // Let the writer finish the rounds it has and count what they wrote; their frames
        // no longer leave. The directory's lock goes only after the log is closed.
        self.peers.clear();
        self.clients.clear();
        if let Some(writer) = self.durable.as_mut().and_then(|d| d.writer.take()) {
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        if let Some(rx) = synced.as_mut() {
            while let Ok(report) = rx.try_recv() {
                self.on_synced(report);
            }
        }
        let report = self.final_report(&mut outputs).await;
        self.durable = None;
        report
    }

    fn on_event(&mut self, event: Event, actions: &mut Vec<Action>) {
        let now = self.now_us();
        match event {
            // The budget is given back once the core has handled the frame.
            Event::Peer(from, frame, _budget) => self.core.on_peer_frame(from, frame, now, actions),
            Event::Client(client, frame, _budget) => self.core.on_client_frame(client, frame, now, actions),
            Event::ClientUp(client, tx) => {
                self.clients.insert(client, tx);
            }
            Event::PeerUp(peer) => self.core.on_peer_up(peer, now, actions),
            Event::Count(what) => self.core.count(what),
            Event::Report(tx) => {
                let _ = tx.send(self.report());
                BrokerCore::query_stats(actions);
            }
        }
    }

    /// Carries out actions; inline compartments answer at once, so loop until quiet.
    ///
    /// With durability on this is one round of the write-ahead rule (SPEC §10): the sealed
    /// state records and ledger blocks of the round go to the writer thread, the round's
    /// network actions are held, and they leave when the writer reports the group that
    /// covers the round durable ([`Driver::on_synced`]) — meanwhile the loop carries on
    /// with the next rounds (pipelined group commit, [`crate::commit`]).
    fn execute(&mut self, actions: &mut Vec<Action>) {
        if self.failed {
            actions.clear();
            return;
        }
        let now = self.now_us();
        let (peers, clients, ledger) = (&self.peers, &self.clients, &mut self.ledger);
        let durable = self.durable.is_some();
        let mut latest = self.durable.as_mut().and_then(|d| d.latest.as_mut());
        let mut held = Vec::new();
        let mut round = Round::default();
        // Records appended to the buffer this round: counted as written once flushed.
        let mut appended = 0u64;
        drive(
            &mut self.core,
            &mut self.enclaves,
            std::mem::take(actions),
            now,
            |core, action| match action {
                Action::Persist { height, sealed } if durable => round.blocks.push((height, sealed)),
                Action::Persist { height, sealed } => match ledger.as_mut() {
                    Some(ledger) => match ledger.file.append_new(height, &sealed) {
                        Ok(true) => appended += 1,
                        Ok(false) => core.count(Counter::LedgerRecordsAlreadyStored),
                        Err(e) => ledger.failed(core, Counter::LedgerWriteErrors, &e),
                    },
                    None => core.count(Counter::LedgerRecordsWithoutDataDir),
                },
                Action::SealState(kind, state) if durable => {
                    if let Some(latest) = latest.as_mut() {
                        latest.remember(kind, &state);
                    }
                    round.records.push((kind, state))
                }
                Action::SealState(..) => core.count(Counter::SealedStateWithoutDurability),
                Action::LogBatch { seq, frame } if durable => round.batches.push((seq, frame)),
                Action::LogBatch { .. } => {}
                Action::Enclave(..) => unreachable!("drive crosses enclave inputs itself"),
                network if durable => held.push(network),
                network => send(core, peers, clients, network),
            },
            |_, _| {},
        );
        // One flush per drained round: many blocks per write syscall.
        if appended > 0
            && let Some(ledger) = self.ledger.as_mut()
        {
            match ledger.file.flush() {
                Ok(()) => self.core.count_n(Counter::LedgerRecordsWritten, appended),
                Err(e) => ledger.failed(&mut self.core, Counter::LedgerFlushErrors, &e),
            }
        }
        let Some(d) = self.durable.as_mut() else { return };
        round.low = self.core.stable();
        match d.pipeline.submit(!round.is_empty(), held) {
            Submitted::SendNow(frames) => {
                for action in frames {
                    send(&mut self.core, &self.peers, &self.clients, action);
                }
            }
            Submitted::Held => {}
            Submitted::Write(id) => {
                round.id = id;
                self.core.count(Counter::StateRoundsSubmitted);
                // A writer that stopped has reported (or is reporting) its error: the
                // round's frames stay held for ever and `on_synced` stops the replica.
                let _ = d.writer.as_ref().is_some_and(|w| w.submit(round));
            }
        }
    }

    /// The writer made a group durable (its held frames leave, in order), or failed (the
    /// replica stops with every held frame unsent: never a silent divergence).
    fn on_synced(&mut self, synced: Synced) {
        let Some(d) = self.durable.as_mut() else { return };
        match synced.result {
            Ok(group) => {
                let frames = d.pipeline.on_durable(group.upto);
                if let Some(latest) = d.latest.as_mut() {
                    latest.counters = group.counters;
                }
                self.core.count_n(Counter::StateCommits, group.wal_syncs);
                self.core.count_n(Counter::StateRoundsCommitted, group.rounds);
                self.core.count_n(Counter::LedgerSyncs, group.ledger_syncs);
                self.core.count_n(Counter::LedgerRecordsWritten, group.blocks_written);
                self.core.count_n(Counter::LedgerRecordsAlreadyStored, group.blocks_already_stored);
                for action in frames {
                    send(&mut self.core, &self.peers, &self.clients, action);
                }
            }
            Err(e) => {
                tracing::error!(
                    %e,
                    held_rounds = d.pipeline.in_flight(),
                    "sealed state could not be made durable: stopping this replica, its unsynced rounds unsent"
                );
                self.core.count(Counter::StateWriteErrors);
                match e {
                    WalError::Ledger { sync: true, .. } => self.core.count(Counter::LedgerSyncErrors),
                    WalError::Ledger { sync: false, .. } => self.core.count(Counter::LedgerWriteErrors),
                    _ => {}
                }
                self.failed = true;
            }
        }
    }

    /// Whether the disk is this many rounds behind: take no new input until it catches up.
    fn disk_behind(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.pipeline.in_flight() >= MAX_ROUNDS_IN_FLIGHT)
    }

    fn report(&self) -> NodeReport {
        let mut broker = self.core.counters().to_vec();
        for enclave in &self.enclaves {
            if let Some(status) = enclave.process_status() {
                use std::sync::atomic::Ordering::Relaxed;
                let kind = enclave.kind();
                for field in ProcessField::ALL {
                    let value = match field {
                        ProcessField::Pid => u64::from(status.pid.load(Relaxed)),
                        ProcessField::Restarts => status.restarts.load(Relaxed),
                        ProcessField::SeccompKills => status.seccomp_kills.load(Relaxed),
                        ProcessField::Crossings => status.crossings.load(Relaxed),
                        ProcessField::Inputs => status.inputs.load(Relaxed),
                        ProcessField::Answers => status.answers.load(Relaxed),
                        ProcessField::Dropped => status.dropped.load(Relaxed),
                    };
                    broker.push((format!("enclave_{kind}_{}", field.name()), value));
                }
            }
        }
        broker.sort();
        NodeReport {
            broker,
            enclaves: CompartmentKind::ALL.iter().map(|k| self.core.enclave_stats(*k).cloned()).collect(),
            request_latency: self.core.latency().clone(),
        }
    }

    async fn final_report(&mut self, outputs: &mut mpsc::UnboundedReceiver<FromEnclave>) -> NodeReport {
        let mut actions = Vec::new();
        BrokerCore::query_stats(&mut actions);
        // Stats answers produce no further actions; drop any protocol output now.
        self.peers.clear();
        self.clients.clear();
        self.execute(&mut actions);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while CompartmentKind::ALL.iter().any(|k| self.core.enclave_stats(*k).is_none()) {
            match tokio::time::timeout_at(deadline, outputs.recv()).await {
                Ok(Some(FromEnclave::Outputs(kind, outs))) => {
                    let now = self.now_us();
                    self.core.on_enclave_outputs(kind, outs, now, &mut actions);
                    actions.clear();
                }
                Ok(Some(FromEnclave::Restarted(..))) => {}
                _ => break,
            }
        }
        self.report()
    }
}

/// Hands a network action to the connection writers (frames to a full queue are dropped).
fn send(
    core: &mut BrokerCore,
    peers: &HashMap<ReplicaId, Outbox>,
    clients: &HashMap<ClientId, Outbox>,
    action: Action,
) {
    match action {
        Action::Broadcast(frame) => {
            for tx in peers.values() {
                if !tx.try_send(frame.clone()) {
                    core.count(Counter::PeerFramesDropped);
                }
            }
        }
        Action::Send(to, frame) => match peers.get(&to) {
            Some(tx) if tx.try_send(frame) => {}
            _ => core.count(Counter::PeerFramesDropped),
        },
        Action::Reply(to, frame) => match clients.get(&to) {
            Some(tx) if tx.try_send(frame) => {}
            _ => core.count(Counter::ClientFramesDropped),
        },
        Action::Persist { .. } | Action::SealState(..) | Action::LogBatch { .. } | Action::Enclave(..) => {
            unreachable!("storage and enclave actions are carried out by `execute`")
        }
    }
}

/// What the accepting side of every connection needs.
#[derive(Clone)]
struct Accept {
    protocol: Arc<ProtocolConfig>,
    secret: Arc<TransportSecret>,
    max_frame: usize,
    /// [`CORE_QUEUE_BYTES`], shared by every reader.
    budget: Arc<tokio::sync::Semaphore>,
    /// [`MAX_HANDSHAKING`] slots.
    handshaking: Arc<tokio::sync::Semaphore>,
    /// Handshakes in progress per remote address ([`MAX_HANDSHAKING_PER_ADDRESS`]).
    per_address: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    /// The live authenticated connection of each identity: a newer one closes it, so
    /// authenticated connections are bounded by `n` plus the configured clients.
    live: Arc<std::sync::Mutex<LiveConnections>>,
    next_connection: Arc<std::sync::atomic::AtomicU64>,
}

/// Per identity: the live connection's number and how to close it.
type LiveConnections = HashMap<Source, (u64, Arc<tokio::sync::Notify>)>;

/// A handshake slot; gives itself back when the handshake ends either way.
struct Handshaking {
    _slot: tokio::sync::OwnedSemaphorePermit,
    address: std::net::IpAddr,
    per_address: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut map = self.per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

impl Accept {
    /// Admits a new connection from `address` into the handshake, or says which limit
    /// refused it (SPEC §11 connection cap with fair admission).
    fn admit(&self, address: std::net::IpAddr) -> Result<Handshaking, Counter> {
        let mut map = self.per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(address).or_insert(0);
        if *count >= MAX_HANDSHAKING_PER_ADDRESS {
            return Err(Counter::ConnectionsRefusedPerAddress);
        }
        let slot = Arc::clone(&self.handshaking).try_acquire_owned().map_err(|_| Counter::ConnectionsRefusedBusy)?;
        *count += 1;
        Ok(Handshaking { _slot: slot, address, per_address: Arc::clone(&self.per_address) })
    }

    /// Registers the authenticated connection of `source`, closing the previous one.
    fn register(&self, source: Source) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, old)) = live.insert(source, (id, Arc::clone(&notify))) {
            old.notify_one();
        }
        (id, notify)
    }

    fn unregister(&self, source: Source, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if live.get(&source).is_some_and(|(current, _)| *current == id) {
            live.remove(&source);
        }
    }
}

async fn accept_loop(listener: TcpListener, events: mpsc::Sender<Event>, accept: Accept) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            let _ = events.send(Event::Count(Counter::AcceptErrors)).await;
            tokio::time::sleep(RECONNECT_MIN).await;
            continue;
        };
        let slot = match accept.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // Dropping the stream closes it at once: no task, no buffer.
                let _ = events.try_send(Event::Count(why));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, events.clone(), accept.clone(), slot));
    }
}

async fn serve_connection(stream: TcpStream, events: mpsc::Sender<Event>, accept: Accept, slot: Handshaking) {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, codec(accept.max_frame));
    let mut sink = FramedWrite::new(write, codec(accept.max_frame));
    // SPEC §11: nothing but the handshake until it proves who is at the other end.
    let (hello, session) = match respond(&mut frames, &mut sink, &accept.protocol, &accept.secret).await {
        Ok(done) => done,
        Err(e) => {
            let _ = events.send(Event::Count(e.counter())).await;
            return;
        }
    };
    drop(slot);
    // Every later frame is sealed with the session's keys: a record that does not
    // authenticate (altered, injected, replayed on the path) ends the connection.
    let (mut frames, sink) = session.secure(frames, sink, accept.max_frame);
    let source = match hello {
        Hello::Replica(r) => Source::Peer(r),
        Hello::Client(c) => Source::Client(c),
    };
    let (id, replaced) = accept.register(source);
    // A peer's connection carries frames one way only; its write half stays open (the
    // peer reads it to notice a closed connection) until this reader stops.
    let mut peer_sink = None;
    let mut writer = match source {
        Source::Peer(r) => {
            // A peer (re)connected: it may have missed what we sent (SPEC §5 out-log).
            let _ = events.send(Event::PeerUp(r)).await;
            peer_sink = Some(sink);
            None
        }
        Source::Client(c) => {
            let (tx, rx) = Outbox::new(CLIENT_QUEUE_BYTES);
            let _ = events.send(Event::ClientUp(c, tx)).await;
            Some(tokio::spawn(write_frames(sink, rx)))
        }
    };
    let idle = match source {
        Source::Peer(_) => None,
        Source::Client(_) => Some(CLIENT_IDLE_TIMEOUT),
    };
    loop {
        let next = async {
            match idle {
                Some(limit) => tokio::time::timeout(limit, frames.next()).await.map_err(|_| Counter::ClientsIdleClosed),
                None => Ok(frames.next().await),
            }
        };
        let writer_done = async {
            match writer.as_mut() {
                Some(handle) => handle.await.unwrap_or(WriteEnd::Closed),
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            frame = next => frame,
            end = writer_done => {
                writer = None;
                if end == WriteEnd::Stalled {
                    let _ = events.send(Event::Count(Counter::ClientsDisconnectedSlow)).await;
                }
                break;
            }
            _ = replaced.notified() => {
                let _ = events.send(Event::Count(Counter::ConnectionsReplaced)).await;
                break;
            }
        };
        let frame = match frame {
            Ok(Some(Ok(frame))) => frame.freeze(),
            Ok(Some(Err(e))) => {
                // Oversize, unauthenticated, or an I/O error: the stream cannot be resynchronised.
                let _ = events.send(Event::Count(e.counter())).await;
                break;
            }
            Ok(None) => break,
            Err(what) => {
                let _ = events.send(Event::Count(what)).await;
                break;
            }
        };
        // Frames are at most `max_frame` bytes, which fits the budget (checked at start).
        let Ok(budget) = Arc::clone(&accept.budget).acquire_many_owned(frame.len().max(1) as u32).await else {
            break;
        };
        let event = match source {
            Source::Peer(r) => Event::Peer(r, frame, budget),
            Source::Client(c) => Event::Client(c, frame, budget),
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    accept.unregister(source, id);
    if let Some(writer) = writer.take() {
        writer.abort();
    }
    drop(peer_sink);
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Peer(ReplicaId),
    Client(ClientId),
}

/// A connection's outgoing queue with a frame bound and a byte budget (SPEC §11).
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

/// The receiving end of an [`Outbox`], for its writer.
struct Inbox {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outbox {
    fn new(limit: usize) -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE_FRAMES);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Outbox { tx, queued: Arc::clone(&queued), limit }, Inbox { rx, queued })
    }

    /// Queues `frame` unless the queue is full by frames or by bytes.
    fn try_send(&self, frame: Bytes) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let len = frame.len();
        if self.queued.fetch_add(len, Relaxed) + len > self.limit {
            self.queued.fetch_sub(len, Relaxed);
            return false;
        }
        if self.tx.try_send(frame).is_err() {
            self.queued.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }
}

impl Inbox {
    async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        self.queued.fetch_sub(frame.len(), std::sync::atomic::Ordering::Relaxed);
        Some(frame)
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(frame.len(), std::sync::atomic::Ordering::Relaxed);
        Some(frame)
    }
}

type FrameSink = SecureWrite<tokio::net::tcp::OwnedWriteHalf>;

/// How a writer ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteEnd {
    /// The connection failed or the queue closed.
    Closed,
    /// A write made no progress for [`WRITE_TIMEOUT`]: the other end does not read.
    Stalled,
}

/// Writes `first` and every frame already queued, then flushes once: one syscall for
/// many frames (PERFORMANCE.md lesson 2). The whole must finish within [`WRITE_TIMEOUT`].
async fn write_coalesced(sink: &mut FrameSink, first: Bytes, rx: &mut Inbox) -> Result<(), WriteEnd> {
    let write = async {
        sink.feed(first).await?;
        for _ in 0..FRAMES_PER_FLUSH {
            match rx.try_recv() {
                Some(frame) => sink.feed(frame).await?,
                None => break,
            }
        }
        SinkExt::<Bytes>::flush(sink).await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteEnd::Closed),
        Err(_) => Err(WriteEnd::Stalled),
    }
}

/// Writes queued frames to a client until the connection fails or stalls.
async fn write_frames(mut sink: FrameSink, mut rx: Inbox) -> WriteEnd {
    while let Some(frame) = rx.recv().await {
        if let Err(end) = write_coalesced(&mut sink, frame, &mut rx).await {
            return end;
        }
    }
    WriteEnd::Closed
}

/// What the dialing side of one peer connection needs.
struct Dial {
    me: ReplicaId,
    peer: ReplicaId,
    addr: SocketAddr,
    cluster_id: u64,
    /// The peer's transport key: the handshake must prove the other end holds it.
    peer_key: [u8; 32],
    secret: TransportSecret,
    max_frame: usize,
}

async fn dial_peer(dial: Dial, mut rx: Inbox, events: mpsc::Sender<Event>) {
    let Dial { me, peer, addr, .. } = dial;
    let mut backoff = RECONNECT_MIN;
    loop {
        let Ok(stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut sink = FramedWrite::new(write, codec(dial.max_frame));
        let mut reader = FramedRead::new(read, codec(dial.max_frame));
        let me = Identity::Replica(me, &dial.secret);
        let session = match initiate(&mut reader, &mut sink, dial.cluster_id, &dial.peer_key, me).await {
            Ok(session) => session,
            Err(e) => {
                // Not the peer the configuration names, or it is not up yet: back off.
                tracing::debug!(%peer, %addr, %e, "peer handshake failed");
                let _ = events.send(Event::Count(e.counter())).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let mut sink: FrameSink = sink.map_encoder(|_| session.encoder(dial.max_frame));
        backoff = RECONNECT_MIN;
        let _ = events.send(Event::PeerUp(peer)).await;
        // Detect a closed peer: it never writes on this connection after the handshake, so
        // a read returning means the connection is gone.
        let read = reader.into_inner();
        let mut closed = Box::pin(async move {
            let mut buf = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut tokio::io::BufReader::new(read), &mut buf).await;
        });
        loop {
            tokio::select! {
                _ = &mut closed => break,
                frame = rx.recv() => {
                    let Some(frame) = frame else { return };
                    if let Err(end) = write_coalesced(&mut sink, frame, &mut rx).await {
                        if end == WriteEnd::Stalled {
                            let _ = events.send(Event::Count(Counter::PeersDisconnectedSlow)).await;
                        }
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
