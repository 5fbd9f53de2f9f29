//! The enclave boundary (SPEC §5.1). Every call into a compartment crosses as bytes, like
//! an SGX ecall: a batch of encoded [`Input`](splitbft_types::boundary::Input)s in, encoded
//! outputs out. Backends:
//!
//! * [`Backend::Inline`]: a function call on the caller's thread. Deterministic; used by
//!   tests and the simulator.
//! * [`Backend::Thread`]: one OS thread per compartment fed by a bounded queue. The
//!   thread drains everything queued and handles it in one crossing ("switchless"
//!   batching), so the hand-off cost is paid per batch of inputs, not per message.
//! * [`Backend::Process`]: one sandboxed OS process per compartment, holding only its own
//!   key ([`process`] on the broker's side, [`sandbox`] on the compartment's). Crossings
//!   are the same byte batches, framed on a pipe.
//!
//! This crate holds no protocol logic: it instantiates compartments and moves bytes.

pub mod process;
pub mod sandbox;

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use splitbft_confirmation::Confirmation;
use splitbft_execution::Execution;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Compartment, Output};
use splitbft_types::config::ConfigError;
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::RestoreError;
use splitbft_types::session::GroupSecret;
use splitbft_types::{Application, CompartmentKind, ProtocolConfig, ReplicaId};

/// Crossings queued for a thread-backed compartment before [`EnclaveHandle::submit`]
/// blocks: enough to absorb a burst of a few thousand messages, small enough that a stuck
/// compartment pushes back on the broker instead of growing memory.
pub const THREAD_QUEUE_CROSSINGS: usize = 1024;

/// Most crossings a compartment thread merges into one call.
pub(crate) const MAX_MERGED_CROSSINGS: usize = 64;

/// How compartments are hosted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// Function calls on the caller's thread.
    #[default]
    Inline,
    /// One OS thread per compartment.
    Thread,
    /// One sandboxed OS process per compartment (see [`process`]).
    Process,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Inline => "inline",
            Backend::Thread => "thread",
            Backend::Process => "process",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inline" => Ok(Backend::Inline),
            "thread" => Ok(Backend::Thread),
            "process" => Ok(Backend::Process),
            other => Err(format!("unknown backend {other:?} (expected inline, thread or process)")),
        }
    }
}

/// Receives outputs of thread-backed compartments (called on the compartment's thread).
pub type OutputSink = std::sync::Arc<dyn Fn(CompartmentKind, Vec<Bytes>) + Send + Sync>;

/// Why enclaves could not start.
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OS refused a thread.
    #[error("cannot spawn compartment thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// A compartment refused its sealed state (SPEC §10): altered, rolled back or incomplete.
    #[error("{0} enclave refused its sealed state: {1}")]
    Restore(CompartmentKind, splitbft_types::durable::RestoreError),
    /// The process backend starts compartments from a [`process::ProcessLauncher`]
    /// ([`start_processes`]), never from secrets held by the broker.
    #[error("the process backend takes no secrets from the broker: use start_processes")]
    SecretsInBroker,
    /// An Execution compartment was built without the Execution group secret (SPEC §6).
    #[error("the Execution compartment needs the Execution group secret")]
    MissingGroupSecret,
}

/// One compartment behind the boundary.
pub trait EnclaveHandle: Send {
    /// Which compartment.
    fn kind(&self) -> CompartmentKind;

    /// Crosses the boundary with `inputs`. Inline: outputs are appended to `out` before it
    /// returns. Thread: outputs go to the [`OutputSink`] later and `out` is untouched.
    fn submit(&mut self, inputs: Vec<Bytes>, out: &mut Vec<Bytes>);

    /// The compartment's process, for the process backend.
    fn process_status(&self) -> Option<&Arc<process::ProcessStatus>> {
        None
    }

    /// Durable `process` backend only (SPEC §10): the sealed state the compartment's
    /// restarted process `incarnation` starts from (see [`process::RestartReport`]). The
    /// other backends never restart a compartment and ignore it.
    fn resume(&mut self, _incarnation: u64, _start: DurableStart) {}
}

/// A compartment called directly.
pub struct InlineEnclave {
    compartment: Box<dyn Compartment>,
}

impl InlineEnclave {
    /// Wraps a compartment.
    pub fn new(compartment: Box<dyn Compartment>) -> Self {
        InlineEnclave { compartment }
    }
}

impl EnclaveHandle for InlineEnclave {
    fn kind(&self) -> CompartmentKind {
        self.compartment.kind()
    }

    fn submit(&mut self, inputs: Vec<Bytes>, out: &mut Vec<Bytes>) {
        self.compartment.handle_encoded(&inputs, out);
    }
}

/// A compartment on its own OS thread.
pub struct ThreadEnclave {
    kind: CompartmentKind,
    tx: Option<Sender<Vec<Bytes>>>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadEnclave {
    /// Moves `compartment` to a new thread that sends its outputs to `sink`.
    pub fn spawn(mut compartment: Box<dyn Compartment>, sink: OutputSink) -> std::io::Result<Self> {
        let kind = compartment.kind();
        let (tx, rx): (Sender<Vec<Bytes>>, Receiver<Vec<Bytes>>) = crossbeam_channel::bounded(THREAD_QUEUE_CROSSINGS);
        let thread = std::thread::Builder::new().name(format!("enclave-{kind}")).spawn(move || {
            let mut outputs = Vec::new();
            while let Ok(mut inputs) = rx.recv() {
                // Merge whatever else is queued into this crossing.
                for _ in 0..MAX_MERGED_CROSSINGS {
                    match rx.try_recv() {
                        Ok(more) => inputs.extend(more),
                        Err(_) => break,
                    }
                }
                compartment.handle_encoded(&inputs, &mut outputs);
                if !outputs.is_empty() {
                    sink(kind, std::mem::take(&mut outputs));
                }
            }
        })?;
        Ok(ThreadEnclave { kind, tx: Some(tx), thread: Some(thread) })
    }
}

impl EnclaveHandle for ThreadEnclave {
    fn kind(&self) -> CompartmentKind {
        self.kind
    }

    fn submit(&mut self, inputs: Vec<Bytes>, _out: &mut Vec<Bytes>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(inputs) {
            Ok(()) => {}
            // Back-pressure: the compartment is behind; wait for room.
            Err(TrySendError::Full(inputs)) => {
                let _ = tx.send(inputs);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for ThreadEnclave {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The secret key material of one replica's three enclaves.
#[derive(Debug)]
pub struct ReplicaSecrets {
    /// Each enclave's Ed25519 key, in [`CompartmentKind::ALL`] order.
    pub keys: [SecretKey; 3],
    /// The Execution group key (SPEC §6): handed to the Execution enclave only.
    pub execution_group: GroupSecret,
}

/// Builds one compartment from its configuration and secrets (SPEC §4): what a
/// compartment process does for itself, and what the in-process backends do for all three.
/// `group` is the Execution group secret (Execution only); `app` is needed by every kind
/// (Preparation and Confirmation start from the genesis checkpoint it defines).
pub fn build_compartment(
    kind: CompartmentKind,
    config: &ProtocolConfig,
    me: ReplicaId,
    key: SecretKey,
    group: Option<GroupSecret>,
    app: Box<dyn Application>,
) -> Result<Box<dyn Compartment>, EnclaveError> {
    let genesis = Execution::genesis_digest(config, app.as_ref());
    Ok(match (kind, group) {
        (CompartmentKind::Preparation, _) => Box::new(Preparation::new(config.clone(), me, key, genesis)?),
        (CompartmentKind::Confirmation, _) => Box::new(Confirmation::new(config.clone(), me, key, genesis)?),
        (CompartmentKind::Execution, Some(group)) => Box::new(Execution::new(config.clone(), me, key, group, app)?),
        (CompartmentKind::Execution, None) => {
            return Err(EnclaveError::MissingGroupSecret);
        }
    })
}

/// [`build_compartment`] for a compartment process restarted without state (incarnation
/// above 0 of the `process` backend, which has no counter): Preparation and Confirmation
/// start behind the recovery fence (SPEC §10), since they may have signed things the dead
/// process took with it.
pub fn build_restarted_compartment(
    kind: CompartmentKind,
    config: &ProtocolConfig,
    me: ReplicaId,
    key: SecretKey,
    group: Option<GroupSecret>,
    app: Box<dyn Application>,
) -> Result<Box<dyn Compartment>, EnclaveError> {
    let genesis = Execution::genesis_digest(config, app.as_ref());
    Ok(match kind {
        CompartmentKind::Preparation => {
            let mut prep = Preparation::new(config.clone(), me, key, genesis)?;
            prep.fence(0);
            Box::new(prep)
        }
        CompartmentKind::Confirmation => {
            let mut conf = Confirmation::new(config.clone(), me, key, genesis)?;
            conf.fence(0);
            Box::new(conf)
        }
        CompartmentKind::Execution => build_compartment(kind, config, me, key, group, app)?,
    })
}

/// Builds one replica's three compartments behind `backend` (inline or thread), in
/// [`CompartmentKind::ALL`] order.
pub fn start_replica(
    config: &ProtocolConfig,
    me: ReplicaId,
    secrets: ReplicaSecrets,
    app: Box<dyn Application>,
    backend: Backend,
    sink: OutputSink,
) -> Result<[Box<dyn EnclaveHandle>; 3], EnclaveError> {
    if backend == Backend::Process {
        return Err(EnclaveError::SecretsInBroker);
    }
    let genesis = Execution::genesis_digest(config, app.as_ref());
    let ReplicaSecrets { keys: [prep_key, conf_key, exec_key], execution_group } = secrets;
    let compartments: [Box<dyn Compartment>; 3] = [
        Box::new(Preparation::new(config.clone(), me, prep_key, genesis)?),
        Box::new(Confirmation::new(config.clone(), me, conf_key, genesis)?),
        Box::new(Execution::new(config.clone(), me, exec_key, execution_group, app)?),
    ];
    let wrap = |c: Box<dyn Compartment>| -> Result<Box<dyn EnclaveHandle>, EnclaveError> {
        Ok(match backend {
            Backend::Inline => Box::new(InlineEnclave::new(c)),
            Backend::Thread | Backend::Process => Box::new(ThreadEnclave::spawn(c, sink.clone())?),
        })
    };
    let [p, c, e] = compartments;
    Ok([wrap(p)?, wrap(c)?, wrap(e)?])
}

/// How one compartment starts with durability on (SPEC §10).
#[derive(Clone, Debug, Default)]
pub struct DurableStart {
    /// Its latest sealed image and the deltas after it (empty: no state, a fresh start).
    pub records: Vec<splitbft_types::durable::SealedState>,
    /// The monotonic counter's value for this compartment.
    pub counter: u64,
}

/// A replica's three enclaves, in [`CompartmentKind::ALL`] order.
pub type Enclaves = [Box<dyn EnclaveHandle>; 3];

/// Like [`start_replica`], with sealed write-ahead state on: each compartment restores from
/// its own records (or starts fresh and emits its first image). Returns the enclaves and,
/// per compartment ([`CompartmentKind::ALL`] order), the encoded outputs of its restore
/// for the environment to route: Execution's local replay, and from each restored
/// compartment its view ([`splitbft_types::boundary::Event::Resumed`]) and a
/// Confirmation's pending ViewChange.
pub fn start_replica_durable(
    config: &ProtocolConfig,
    me: ReplicaId,
    secrets: ReplicaSecrets,
    app: Box<dyn Application>,
    backend: Backend,
    sink: OutputSink,
    start: [DurableStart; 3],
) -> Result<(Enclaves, [Vec<Bytes>; 3]), EnclaveError> {
    if backend == Backend::Process {
        return Err(EnclaveError::SecretsInBroker);
    }
    let genesis = Execution::genesis_digest(config, app.as_ref());
    let ReplicaSecrets { keys: [prep_key, conf_key, exec_key], execution_group } = secrets;
    let [p, c, e] = start;
    let (prep, prep_out) = restore_with_genesis(Restoring::Preparation, config, me, prep_key, genesis, &p)?;
    let (conf, conf_out) = restore_with_genesis(Restoring::Confirmation, config, me, conf_key, genesis, &c)?;
    let (exec, exec_out) =
        restore_with_genesis(Restoring::Execution(execution_group, app), config, me, exec_key, genesis, &e)?;
    let wrap = |c: Box<dyn Compartment>| -> Result<Box<dyn EnclaveHandle>, EnclaveError> {
        Ok(match backend {
            Backend::Inline => Box::new(InlineEnclave::new(c)),
            Backend::Thread | Backend::Process => Box::new(ThreadEnclave::spawn(c, sink.clone())?),
        })
    };
    Ok(([wrap(prep)?, wrap(conf)?, wrap(exec)?], [prep_out, conf_out, exec_out]))
}

/// One compartment restored from its sealed state (SPEC §10), as a compartment process of
/// the `process` backend does for itself ([`start_replica_durable`] does the same for all
/// three in this process). `group` is the Execution group secret (Execution only); `app`
/// defines the genesis checkpoint and, for Execution, is the application. Returns the
/// compartment and the encoded outputs of its restore, for the environment to route:
/// Execution's local replay (ledger blocks, checkpoints, snapshots it rebuilt) and, from a
/// compartment restored from its state, [`splitbft_types::boundary::Event::Resumed`] (and
/// a Confirmation's pending ViewChange).
pub fn restore_compartment(
    kind: CompartmentKind,
    config: &ProtocolConfig,
    me: ReplicaId,
    key: SecretKey,
    group: Option<GroupSecret>,
    app: Box<dyn Application>,
    start: &DurableStart,
) -> Result<(Box<dyn Compartment>, Vec<Bytes>), EnclaveError> {
    let genesis = Execution::genesis_digest(config, app.as_ref());
    let restoring = match (kind, group) {
        (CompartmentKind::Preparation, _) => Restoring::Preparation,
        (CompartmentKind::Confirmation, _) => Restoring::Confirmation,
        (CompartmentKind::Execution, Some(group)) => Restoring::Execution(group, app),
        (CompartmentKind::Execution, None) => return Err(EnclaveError::MissingGroupSecret),
    };
    restore_with_genesis(restoring, config, me, key, genesis, start)
}

/// Which compartment [`restore_with_genesis`] restores, with what only Execution needs.
enum Restoring {
    Preparation,
    Confirmation,
    Execution(GroupSecret, Box<dyn Application>),
}

fn restore_with_genesis(
    restoring: Restoring,
    config: &ProtocolConfig,
    me: ReplicaId,
    key: SecretKey,
    genesis: splitbft_types::msg::Digest,
    start: &DurableStart,
) -> Result<(Box<dyn Compartment>, Vec<Bytes>), EnclaveError> {
    let DurableStart { records, counter } = start;
    let (records, counter) = (&records[..], *counter);
    let encode =
        |outputs: Vec<Output>| outputs.iter().map(|o| Bytes::from(splitbft_types::codec::to_bytes(o))).collect();
    Ok(match restoring {
        Restoring::Preparation => {
            let (signer, resumed) = restore_signer(
                CompartmentKind::Preparation,
                key,
                records.is_empty(),
                |k| Preparation::restore(config.clone(), me, k, genesis, records, counter),
                |k| Preparation::new(config.clone(), me, k, genesis),
                |p: &mut Preparation| p.enable_durability(counter),
                Preparation::resumed,
            )?;
            (signer, encode(resumed))
        }
        Restoring::Confirmation => {
            let (signer, resumed) = restore_signer(
                CompartmentKind::Confirmation,
                key,
                records.is_empty(),
                |k| Confirmation::restore(config.clone(), me, k, genesis, records, counter),
                |k| Confirmation::new(config.clone(), me, k, genesis),
                |c: &mut Confirmation| c.enable_durability(counter),
                Confirmation::resumed,
            )?;
            (signer, encode(resumed))
        }
        Restoring::Execution(group, app) => {
            // An Execution whose state is refused as rolled back starts from no state and
            // catches up by state transfer: it signs no consensus message, and every reply
            // and checkpoint it signs follows from certified batches and a certified
            // snapshot, so it cannot equivocate (SPEC §10). Until then it answers recovery
            // queries with its low checkpoint and counts against `f`. Any other refusal
            // (altered, incomplete) stops the start.
            let rolled_back = match records.is_empty() {
                true => None,
                false => match Execution::check_sealed(config, me, &key, records, counter) {
                    Err(e @ RestoreError::RolledBack { .. }) => Some(e),
                    _ => None,
                },
            };
            if let Some(e) = &rolled_back {
                tracing::warn!(
                    %e,
                    "Execution's sealed state is refused (rolled back): starting it without state; state transfer brings it up to date"
                );
            }
            let exec_rolled_back = rolled_back.is_some();
            let (exec, replay) = if records.is_empty() || exec_rolled_back {
                let mut exec = Execution::new(config.clone(), me, key, group, app)?;
                exec.enable_durability(counter);
                (exec, Vec::new())
            } else {
                Execution::restore(config.clone(), me, key, group, app, records, counter)
                    .map_err(|err| EnclaveError::Restore(CompartmentKind::Execution, err))?
            };
            (Box::new(exec), encode(replay))
        }
    })
}

/// A signing compartment (Preparation, Confirmation) from its sealed state, with what it
/// tells the environment on resuming (`resumed`). A state older than the counter cannot be
/// proven fresh, and none at all after the counter moved means it was lost: the
/// compartment starts without it (`fresh`, which has nothing to tell), behind the recovery
/// fence (SPEC §10; `enable_durability` with a counter above 0). Any other refusal stops
/// the start.
fn restore_signer<C: Compartment + 'static>(
    kind: CompartmentKind,
    key: SecretKey,
    records_empty: bool,
    restore: impl FnOnce(SecretKey) -> Result<C, RestoreError>,
    fresh: impl FnOnce(SecretKey) -> Result<C, ConfigError>,
    enable_durability: impl FnOnce(&mut C),
    resumed: impl FnOnce(&C) -> Vec<Output>,
) -> Result<(Box<dyn Compartment>, Vec<Output>), EnclaveError> {
    let copy = SecretKey::from_seed(key.seed());
    Ok(match restore(copy) {
        Ok(c) => {
            let told = resumed(&c);
            (Box::new(c), told)
        }
        Err(e) if records_empty || matches!(e, RestoreError::RolledBack { .. }) => {
            let mut c = fresh(key)?;
            enable_durability(&mut c);
            (Box::new(c), Vec::new())
        }
        Err(e) => return Err(EnclaveError::Restore(kind, e)),
    })
}

/// Starts one replica's three compartment processes (SPEC §5.1 `process` backend), in
/// [`CompartmentKind::ALL`] order. Each reads its own key; the broker holds none. With
/// `durable` (SPEC §10; the launcher must then start them with durable state on), each
/// process starts from its sealed records, which it unseals itself.
pub fn start_processes(
    launcher: &process::ProcessLauncher,
    sink: OutputSink,
    notice: process::RestartNotice,
    durable: Option<[DurableStart; 3]>,
) -> Result<[Box<dyn EnclaveHandle>; 3], EnclaveError> {
    let mut durable = durable.map(|starts| starts.map(Some));
    let mut start = |kind: CompartmentKind| -> Result<Box<dyn EnclaveHandle>, EnclaveError> {
        let state = durable.as_mut().and_then(|starts| starts[kind.index()].take());
        Ok(Box::new(process::ProcessEnclave::spawn(kind, launcher.clone(), sink.clone(), notice.clone(), state)?))
    };
    Ok([
        start(CompartmentKind::Preparation)?,
        start(CompartmentKind::Confirmation)?,
        start(CompartmentKind::Execution)?,
    ])
}
