//! Event counters: every rejected input is counted by reason (STYLE "safety in the small").
//!
//! Counters are typed: a [`Counter`] names one, so a misspelt name is a compile error rather
//! than a silent 0 (issue 16). The name of each is its stable wire and metrics name (it
//! crosses the enclave boundary in [`crate::boundary::Stats`] and becomes a Prometheus
//! series), so renaming one is a visible change.

use std::collections::BTreeMap;

macro_rules! counters {
    ($($variant:ident = $name:literal,)*) => {
        /// One counter of a compartment or of the broker.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Counter {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl Counter {
            /// Every counter, in name order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The counter's stable name (wire, logs, metrics).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    AcceptErrors = "accept_errors",
    BatchBadSignature = "batch_bad_signature",
    BatchDigestMismatch = "batch_digest_mismatch",
    BatchDuplicate = "batch_duplicate",
    BatchFramesUnverified = "batch_frames_unverified",
    BatchLate = "batch_late",
    BatchMalformed = "batch_malformed",
    BatchMalformedNoop = "batch_malformed_noop",
    BatchOutsideWindow = "batch_outside_window",
    BatchTooLarge = "batch_too_large",
    BatchTooManyCandidates = "batch_too_many_candidates",
    BatchWrongDigest = "batch_wrong_digest",
    BatchesCut = "batches_cut",
    BatchesExecuted = "batches_executed",
    BatchesFetched = "batches_fetched",
    BatchesLogged = "batches_logged",
    BatchesNotOrdered = "batches_not_ordered",
    BatchesOrdered = "batches_ordered",
    BatchesRefusedPrimaryFaulty = "batches_refused_primary_faulty",
    BatchesRestored = "batches_restored",
    BatchesRestoredUnverified = "batches_restored_unverified",
    BatchesServed = "batches_served",
    BehindStableCheckpoint = "behind_stable_checkpoint",
    CheckpointBadSignature = "checkpoint_bad_signature",
    CheckpointBadSigner = "checkpoint_bad_signer",
    CheckpointDuplicate = "checkpoint_duplicate",
    CheckpointNotAtInterval = "checkpoint_not_at_interval",
    CheckpointOutsideWindow = "checkpoint_outside_window",
    CheckpointsStable = "checkpoints_stable",
    ClientBadVersion = "client_bad_version",
    ClientFramesDropped = "client_frames_dropped",
    ClientMalformed = "client_malformed",
    ClientRequestWrongId = "client_request_wrong_id",
    ClientRequestsInadmissible = "client_requests_inadmissible",
    ClientRetransmissions = "client_retransmissions",
    ClientUnexpectedMessage = "client_unexpected_message",
    ClientUnknownKind = "client_unknown_kind",
    ClientsDisconnectedSlow = "clients_disconnected_slow",
    ClientsIdleClosed = "clients_idle_closed",
    CommitAfterCertificate = "commit_after_certificate",
    CommitBadSignature = "commit_bad_signature",
    CommitDuplicate = "commit_duplicate",
    CommitLate = "commit_late",
    CommitOutsideWindow = "commit_outside_window",
    CommitUnknownReplica = "commit_unknown_replica",
    CommitWrongView = "commit_wrong_view",
    CommitsSent = "commits_sent",
    ConnectionErrors = "connection_errors",
    ConnectionsBadHello = "connections_bad_hello",
    ConnectionsRefusedBusy = "connections_refused_busy",
    ConnectionsRefusedPerAddress = "connections_refused_per_address",
    ConnectionsReplaced = "connections_replaced",
    ConnectionsWithoutHello = "connections_without_hello",
    EnclaveOutputMalformed = "enclave_output_malformed",
    EnclaveOutputUnexpected = "enclave_output_unexpected",
    EnclaveRestartSuspects = "enclave_restart_suspects",
    EnclaveRestarts = "enclave_restarts",
    FetchBatchUnknown = "fetch_batch_unknown",
    FramesBadRecords = "frames_bad_records",
    FramesOversize = "frames_oversize",
    FramesUnauthenticated = "frames_unauthenticated",
    FutureMessagesDropped = "future_messages_dropped",
    FutureMessagesTooFarAhead = "future_messages_too_far_ahead",
    HandshakeBadIntroductions = "handshake_bad_introductions",
    HandshakeConnectionErrors = "handshake_connection_errors",
    HandshakeFramesOversize = "handshake_frames_oversize",
    HandshakeNoiseErrors = "handshake_noise_errors",
    HandshakeTimeouts = "handshake_timeouts",
    HandshakeUnprovenClients = "handshake_unproven_clients",
    HandshakeUnprovenReplicas = "handshake_unproven_replicas",
    HandshakeWrongResponder = "handshake_wrong_responder",
    LedgerFlushErrors = "ledger_flush_errors",
    LedgerRecordsAlreadyStored = "ledger_records_already_stored",
    LedgerRecordsWithoutDataDir = "ledger_records_without_data_dir",
    LedgerRecordsWritten = "ledger_records_written",
    LedgerSyncErrors = "ledger_sync_errors",
    LedgerSyncs = "ledger_syncs",
    LedgerTornTailCut = "ledger_torn_tail_cut",
    LedgerWriteErrors = "ledger_write_errors",
    MalformedInput = "malformed_input",
    NewViewBadCertificate = "new_view_bad_certificate",
    NewViewBadCheckpoint = "new_view_bad_checkpoint",
    NewViewBadPrepared = "new_view_bad_prepared",
    NewViewBadQuorum = "new_view_bad_quorum",
    NewViewBadSignature = "new_view_bad_signature",
    NewViewOld = "new_view_old",
    NewViewPrePrepareOutsideWindow = "new_view_pre_prepare_outside_window",
    NewViewPrePrepareWrongView = "new_view_pre_prepare_wrong_view",
    NewViewSenderRefused = "new_view_sender_refused",
    NewViewWrongO = "new_view_wrong_o",
    NewViewsSent = "new_views_sent",
    OrderBatchMalformed = "order_batch_malformed",
    OrderBatchNotPrimary = "order_batch_not_primary",
    OrderBatchWindowFull = "order_batch_window_full",
    PeerBadVersion = "peer_bad_version",
    PeerFramesDropped = "peer_frames_dropped",
    PeerMalformed = "peer_malformed",
    PeerReconnects = "peer_reconnects",
    PeerRequestNotPrimary = "peer_request_not_primary",
    PeerResends = "peer_resends",
    PeerResendsDeferred = "peer_resends_deferred",
    PeerUnexpectedReply = "peer_unexpected_reply",
    PeerUnknownKind = "peer_unknown_kind",
    PeersDisconnectedSlow = "peers_disconnected_slow",
    PrePrepareBadSignature = "pre_prepare_bad_signature",
    PrePrepareConflicting = "pre_prepare_conflicting",
    PrePrepareDuplicate = "pre_prepare_duplicate",
    PrePrepareOutsideWindow = "pre_prepare_outside_window",
    PrePrepareOwn = "pre_prepare_own",
    PrePrepareWithoutBatch = "pre_prepare_without_batch",
    PrePrepareWrongView = "pre_prepare_wrong_view",
    PrepareBadSignature = "prepare_bad_signature",
    PrepareDuplicate = "prepare_duplicate",
    PrepareFromPrimary = "prepare_from_primary",
    PrepareLate = "prepare_late",
    PrepareOutsideWindow = "prepare_outside_window",
    PrepareUnknownReplica = "prepare_unknown_replica",
    PrepareWrongView = "prepare_wrong_view",
    PreparesSent = "prepares_sent",
    RecordSealFailed = "record_seal_failed",
    RecordsSealed = "records_sealed",
    RecoveriesCompleted = "recoveries_completed",
    RecoveriesStarted = "recoveries_started",
    RecoveryQueriesSent = "recovery_queries_sent",
    RecoveryQueriesThrottled = "recovery_queries_throttled",
    RecoveryQueryNotFromSender = "recovery_query_not_from_sender",
    RecoveryQueryNotNeeded = "recovery_query_not_needed",
    RecoveryQueryUnknownReplica = "recovery_query_unknown_replica",
    RecoveryRetries = "recovery_retries",
    RecoveryStatementBadSignature = "recovery_statement_bad_signature",
    RecoveryStatementBadSigner = "recovery_statement_bad_signer",
    RecoveryStatementDuplicate = "recovery_statement_duplicate",
    RecoveryStatementNotForUs = "recovery_statement_not_for_us",
    RecoveryStatementNotMyQuery = "recovery_statement_not_my_query",
    RecoveryStatementNotNeeded = "recovery_statement_not_needed",
    RecoveryStatementsAccepted = "recovery_statements_accepted",
    RecoveryStatementsSent = "recovery_statements_sent",
    RegisterBadNoop = "register_bad_noop",
    RegisterStaleEpochNoop = "register_stale_epoch_noop",
    RepliesResent = "replies_resent",
    RequestAlreadyOrdered = "request_already_ordered",
    RequestAlreadyPending = "request_already_pending",
    RequestAuthMissing = "request_auth_missing",
    RequestAuthWrongLength = "request_auth_wrong_length",
    RequestBadAuthenticator = "request_bad_authenticator",
    RequestDuplicateNoop = "request_duplicate_noop",
    RequestMacFailedSignatureOk = "request_mac_failed_signature_ok",
    RequestMalformed = "request_malformed",
    RequestMalformedNoop = "request_malformed_noop",
    RequestNoSessionNoop = "request_no_session_noop",
    RequestNotAuthenticNoop = "request_not_authentic_noop",
    RequestOpTooLarge = "request_op_too_large",
    RequestOverBatchLimit = "request_over_batch_limit",
    RequestStaleSessionNoop = "request_stale_session_noop",
    RequestTimestampOutOfRange = "request_timestamp_out_of_range",
    RequestUnknownClient = "request_unknown_client",
    RequestUnknownClientNoop = "request_unknown_client_noop",
    RequestWrongModeNoop = "request_wrong_mode_noop",
    RequestsBadSignatureDropped = "requests_bad_signature_dropped",
    RequestsDroppedQueueFull = "requests_dropped_queue_full",
    RequestsExecuted = "requests_executed",
    RequestsForwarded = "requests_forwarded",
    RequestsOrdered = "requests_ordered",
    RequestsUntracked = "requests_untracked",
    ResendRequestsThrottled = "resend_requests_throttled",
    RestoreMalformed = "restore_malformed",
    RestoreNotAuthentic = "restore_not_authentic",
    RestoreNotNeeded = "restore_not_needed",
    RestoreWrongDigest = "restore_wrong_digest",
    RestoredFromSealedState = "restored_from_sealed_state",
    RetransmissionNotCached = "retransmission_not_cached",
    RetransmissionNotExecuted = "retransmission_not_executed",
    SealedStateWithoutDurability = "sealed_state_without_durability",
    SessionsRegistered = "sessions_registered",
    SignatureBatches = "signature_batches",
    SignaturesFenced = "signatures_fenced",
    SnapshotBelowStable = "snapshot_below_stable",
    SnapshotsEvicted = "snapshots_evicted",
    StateChunkDuplicate = "state_chunk_duplicate",
    StateChunkInconsistent = "state_chunk_inconsistent",
    StateChunkUnexpected = "state_chunk_unexpected",
    StateChunksEncoded = "state_chunks_encoded",
    StateCommits = "state_commits",
    StateRecoveredBytes = "state_recovered_bytes",
    StateRequestUnknown = "state_request_unknown",
    StateRequestsSent = "state_requests_sent",
    StateRequestsThrottled = "state_requests_throttled",
    StateRoundsCommitted = "state_rounds_committed",
    StateRoundsSubmitted = "state_rounds_submitted",
    StateTornTailCut = "state_torn_tail_cut",
    StateTransferBytes = "state_transfer_bytes",
    StateTransfersCompleted = "state_transfers_completed",
    StateTransfersRejected = "state_transfers_rejected",
    StateTransfersStarted = "state_transfers_started",
    StateWriteErrors = "state_write_errors",
    StatesRestored = "states_restored",
    StatesServed = "states_served",
    SuspectStale = "suspect_stale",
    SuspectsFPlusOne = "suspects_f_plus_one",
    SuspectsHeldForQuorum = "suspects_held_for_quorum",
    SuspectsTimer = "suspects_timer",
    UnexpectedInput = "unexpected_input",
    ViewChangeBadCertificate = "view_change_bad_certificate",
    ViewChangeBadCheckpoint = "view_change_bad_checkpoint",
    ViewChangeBadPrepared = "view_change_bad_prepared",
    ViewChangeBadSignature = "view_change_bad_signature",
    ViewChangeDuplicate = "view_change_duplicate",
    ViewChangeFullChecks = "view_change_full_checks",
    ViewChangeOld = "view_change_old",
    ViewChangeSenderRefused = "view_change_sender_refused",
    ViewChangeUnknownReplica = "view_change_unknown_replica",
    ViewChangesAccepted = "view_changes_accepted",
    ViewChangesSent = "view_changes_sent",
    ViewChangesStarted = "view_changes_started",
    ViewsEntered = "views_entered",
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Counter values; a counter never bumped reads 0.
#[derive(Clone, Debug, Default)]
pub struct Counters(BTreeMap<Counter, u64>);

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(&mut self, counter: Counter) {
        *self.0.entry(counter).or_default() += 1;
    }

    /// Adds `by` to `counter`.
    pub fn add(&mut self, counter: Counter, by: u64) {
        *self.0.entry(counter).or_default() += by;
    }

    /// Current value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(&counter).copied().unwrap_or(0)
    }

    /// The counters bumped so far, sorted by name (the form [`crate::boundary::Stats`] carries).
    pub fn to_vec(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self.0.iter().map(|(k, v)| (k.name().to_owned(), *v)).collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_sorted_and_snake_case() {
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "registry not in strict name order: {names:?}");
        for name in names {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
        }
    }

    #[test]
    fn unbumped_reads_zero_and_bumps_add_up() {
        let mut c = Counters::default();
        assert_eq!(c.get(Counter::PreparesSent), 0);
        c.bump(Counter::PreparesSent);
        c.add(Counter::PreparesSent, 2);
        assert_eq!(c.get(Counter::PreparesSent), 3);
        assert_eq!(c.to_vec(), vec![("prepares_sent".to_owned(), 3)]);
    }
}
