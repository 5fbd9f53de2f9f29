//! The recovery fence (SPEC §10 "Recovery fence"; Castro and Liskov, TOCS 2002, §4.3,
//! proactive recovery), the part Preparation and Confirmation share.
//!
//! A Preparation or Confirmation enclave that starts without state it can prove fresh
//! (no sealed state while the monotonic counter says it had one, a state older than the
//! counter, or a restart the environment reports without any counter) may have signed
//! PrePrepares, Prepares, Commits or ViewChanges it no longer remembers. It *recovers*:
//!
//! 1. The environment gives it a nonce ([`crate::boundary::Input::BeginRecovery`]; the
//!    compartment has no randomness). It sends a [`RecoveryQuery`] naming itself, its
//!    counter epoch and the nonce; the environment delivers it to the Execution enclave of
//!    every replica.
//! 2. Each Execution enclave answers with a [`RecoveryStatement`] it signs: the requester,
//!    epoch and nonce echoed, its own latest checkpoint and view. The fence keeps at most
//!    one statement per replica ([`Fence`] is `n` slots, whatever peers send) and only
//!    those echoing the current query.
//! 3. With `2f + 1` statements from distinct replicas it sets
//!    `H = max checkpoint + L` ([`Fence::horizon`]).
//! 4. It signs nothing (no PrePrepare, Prepare, Commit, ViewChange or NewView) until its
//!    own low watermark — a stable checkpoint it adopted from a certificate — is `>= H`;
//!    from then on every slot it can sign lies above `H`, and the fence lifts by itself.
//!
//! Why `H` covers everything the enclave may have signed before: it signed only for
//! `s <= h_old + L`, where `h_old` was a stable checkpoint, certified by `2f + 1`
//! Execution enclaves, so `f + 1` correct ones had executed `h_old` and report at least
//! that. Any `2f + 1` statements include one of them (`(2f + 1) + (f + 1) > 3f + 1`), so
//! `max >= h_old`. Taking the maximum is what safety needs; a faulty Execution enclave
//! that reports a huge checkpoint only delays the end of recovery (liveness, and the
//! recovering enclave counts against `f` meanwhile). Why statements are signed by
//! Execution, not by the environment or the requester's own kind: only Execution's
//! checkpoint is a lower bound on every certified low watermark (a correct Preparation may
//! never have been shown a certificate the victim saw). The nonce and epoch make a
//! statement answer one query: a host that recorded statements of an earlier recovery
//! (with lower checkpoints) cannot replay them into a later one.

use serde::{Deserialize, Serialize};

use crate::boundary::{Event, Output};
use crate::cert::{CertError, SignedBody, verify_signed};
use crate::config::{Keyring, ProtocolConfig};
use crate::counters::{Counter, Counters};
use crate::crypto::Purpose;
use crate::ids::{CompartmentKind, EnclaveId, ReplicaId, Seq, View};
use crate::msg::{Message, Signed};

/// A recovering enclave asks every replica's Execution enclave for its checkpoint and view.
/// Unsigned: a forged query costs an Execution enclave one signature, and the environment
/// rate-limits queries per peer; what protects the requester is the echoed nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecoveryQuery {
    /// The recovering enclave (its replica gets the answers).
    pub requester: EnclaveId,
    /// The requester's monotonic counter epoch (0 without a counter).
    pub epoch: u64,
    /// Fresh per query, chosen by the requester's environment.
    pub nonce: u64,
}

/// Execution(`replica`)'s signed answer to one [`RecoveryQuery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecoveryStatement {
    /// The query answered.
    pub query: RecoveryQuery,
    /// The answering replica.
    pub replica: ReplicaId,
    /// The answerer's latest checkpoint: the highest multiple of `K` it has executed up to.
    pub checkpoint: Seq,
    /// The answerer's view.
    pub view: View,
}

impl SignedBody for RecoveryStatement {
    const SIGNER: CompartmentKind = CompartmentKind::Execution;
    const PURPOSE: Purpose = Purpose::RecoveryStatement;
    fn signer(&self, _: &ProtocolConfig) -> ReplicaId {
        self.replica
    }
}

/// Why a statement was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatementReject {
    /// Not an answer to this enclave's current query (another enclave's, an older nonce or
    /// epoch: a replay), or no query is out.
    #[error("recovery statement answers another query")]
    NotMyQuery,
    /// The fence is not waiting for statements (not recovering, or `H` already set).
    #[error("recovery statement not needed")]
    NotNeeded,
    /// The replica already answered this query.
    #[error("duplicate recovery statement")]
    Duplicate,
    /// Signature or signer invalid.
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl StatementReject {
    /// The counter for this refusal.
    pub fn counter(&self) -> Counter {
        match self {
            StatementReject::NotMyQuery => Counter::RecoveryStatementNotMyQuery,
            StatementReject::NotNeeded => Counter::RecoveryStatementNotNeeded,
            StatementReject::Duplicate => Counter::RecoveryStatementDuplicate,
            StatementReject::Cert(CertError::BadSignature(_)) => Counter::RecoveryStatementBadSignature,
            StatementReject::Cert(_) => Counter::RecoveryStatementBadSigner,
        }
    }
}

/// The fence of one recovering enclave: the current query, at most one statement per
/// replica, and `H` once `2f + 1` are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    me: EnclaveId,
    epoch: u64,
    query: Option<RecoveryQuery>,
    /// Checkpoint reported per replica for the current query (`n` slots).
    statements: Vec<Option<Seq>>,
    horizon: Option<Seq>,
}

impl Fence {
    /// A fence for enclave `me`, whose counter epoch is `epoch` (0 without a counter).
    pub fn new(config: &ProtocolConfig, me: EnclaveId, epoch: u64) -> Self {
        assert!(matches!(me.kind, CompartmentKind::Preparation | CompartmentKind::Confirmation), "only signers fence");
        Fence { me, epoch, query: None, statements: vec![None; config.n()], horizon: None }
    }

    /// The fence as a sealed state recorded it (SPEC §10): still recovering, with `H` if it
    /// was known. A restart from a state sealed behind the fence stays behind it.
    pub fn resume(config: &ProtocolConfig, me: EnclaveId, epoch: u64, horizon: Option<Seq>) -> Self {
        Fence { horizon, ..Fence::new(config, me, epoch) }
    }

    /// Starts (or restarts, with a new nonce) the query, unless `H` is already known.
    /// Statements for an earlier nonce no longer count.
    pub fn begin(&mut self, nonce: u64) -> Option<RecoveryQuery> {
        if self.horizon.is_some() {
            return None;
        }
        let query = RecoveryQuery { requester: self.me, epoch: self.epoch, nonce };
        self.query = Some(query);
        self.statements.iter_mut().for_each(|s| *s = None);
        Some(query)
    }

    /// Counts a statement; returns `H` when this one completes `2f + 1`.
    pub fn on_statement(
        &mut self,
        config: &ProtocolConfig,
        keys: &Keyring,
        msg: &Signed<RecoveryStatement>,
    ) -> Result<Option<Seq>, StatementReject> {
        if self.horizon.is_some() {
            return Err(StatementReject::NotNeeded);
        }
        if self.query != Some(msg.body.query) {
            return Err(StatementReject::NotMyQuery);
        }
        let slot =
            self.statements.get(msg.body.replica.0 as usize).ok_or(CertError::UnknownReplica(msg.body.replica))?;
        if slot.is_some() {
            return Err(StatementReject::Duplicate);
        }
        let replica = verify_signed(config, keys, msg)?;
        self.statements[replica.0 as usize] = Some(msg.body.checkpoint);
        let heard: Vec<Seq> = self.statements.iter().flatten().copied().collect();
        if heard.len() < config.quorum() {
            return Ok(None);
        }
        let max = heard.into_iter().max().expect("a quorum is not empty");
        let horizon = max.saturating_add(config.log_window);
        self.horizon = Some(horizon);
        Ok(Some(horizon))
    }

    /// `H`, once `2f + 1` statements are in.
    pub fn horizon(&self) -> Option<Seq> {
        self.horizon
    }

    /// Whether the enclave, with low watermark `low`, has recovered: `H` is known and a
    /// stable checkpoint at or above it was adopted.
    pub fn lifted(&self, low: Seq) -> bool {
        self.horizon.is_some_and(|h| low >= h)
    }
}

/// Whether `fence` forbids signing a consensus message now (SPEC §10); a refusal is
/// counted as `SignaturesFenced`. Preparation and Confirmation ask before every signature.
pub fn refuses_to_sign(fence: &Option<Fence>, counters: &mut Counters) -> bool {
    if fence.is_some() {
        counters.bump(Counter::SignaturesFenced);
    }
    fence.is_some()
}

/// Recovery step 4: lifts the fence once the low watermark `low` reaches `H`. Returns
/// whether it lifted now, so the caller can drop what it accepted while fenced.
pub fn lift_if_recovered(fence: &mut Option<Fence>, low: Seq, counters: &mut Counters) -> bool {
    if !fence.as_ref().is_some_and(|f| f.lifted(low)) {
        return false;
    }
    *fence = None;
    counters.bump(Counter::RecoveriesCompleted);
    true
}

/// Recovery step 1 in a fenced compartment (Preparation and Confirmation share it): the
/// query with the environment's nonce, or a count if there is no fence.
pub fn begin_recovery(fence: &mut Option<Fence>, nonce: u64, counters: &mut Counters, out: &mut Vec<Output>) {
    let Some(query) = fence.as_mut().and_then(|f| f.begin(nonce)) else {
        return counters.bump(Counter::RecoveryQueryNotNeeded);
    };
    counters.bump(Counter::RecoveryQueriesSent);
    out.push(Output::Send(Message::RecoveryQuery(query)));
}

/// Recovery step 3 in a fenced compartment: counts a statement and, when it completes
/// `2f + 1`, reports `H` to the environment. Returns whether `H` was set now (the caller
/// then checks whether its low watermark already lifts the fence).
pub fn take_statement(
    fence: &mut Option<Fence>,
    config: &ProtocolConfig,
    keys: &Keyring,
    st: &Signed<RecoveryStatement>,
    counters: &mut Counters,
    out: &mut Vec<Output>,
) -> bool {
    let Some(fence) = fence.as_mut() else {
        counters.bump(Counter::RecoveryStatementNotNeeded);
        return false;
    };
    match fence.on_statement(config, keys, st) {
        Err(e) => {
            counters.bump(e.counter());
            false
        }
        Ok(None) => {
            counters.bump(Counter::RecoveryStatementsAccepted);
            false
        }
        Ok(Some(horizon)) => {
            counters.bump(Counter::RecoveryStatementsAccepted);
            out.push(Output::Event(Event::RecoveryHorizon { horizon }));
            true
        }
    }
}
