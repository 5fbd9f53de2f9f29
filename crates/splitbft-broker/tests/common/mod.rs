//! Shared by the broker's cluster tests: client sessions (SPEC §6).
//!
//! These tests are about ordering, view changes and hostile input, not registration, so
//! every Execution enclave starts with every client's session installed (the
//! `test-support` shortcut; registration itself is tested in `splitbft-execution` and the
//! simulator). Fresh enclaves built by a restart get sessions only through state transfer.

#![allow(dead_code, reason = "each test file uses a subset")]

use splitbft_apps::kv::{KvResult, KvStore};
use splitbft_broker::local::LocalCluster;
use splitbft_enclave::InlineEnclave;
use splitbft_execution::Execution;
use splitbft_types::app::Application;
use splitbft_types::crypto::SecretKey;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::Reply;
use splitbft_types::session::{ClientSession, Opened};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};

/// Epoch of the installed sessions.
pub const EPOCH: u64 = 1;

/// Client `c`'s session key.
pub fn session_key(c: usize) -> [u8; 32] {
    [c as u8 + 1; 32]
}

/// Replaces every replica's Execution enclave by one holding every client's session, and
/// returns the clients' side of those sessions.
pub fn install_sessions(cluster: &mut LocalCluster, secrets: &ClusterSecrets) -> Vec<ClientSession> {
    install_sessions_with(cluster, secrets, || Box::new(KvStore::new()))
}

/// [`install_sessions`] for an Execution enclave running the application `app` builds.
pub fn install_sessions_with(
    cluster: &mut LocalCluster,
    secrets: &ClusterSecrets,
    app: impl Fn() -> Box<dyn Application>,
) -> Vec<ClientSession> {
    let config = &secrets.config;
    for r in 0..config.n() {
        install_sessions_at(cluster, secrets, ReplicaId(r as u32), app());
    }
    (0..config.clients.len())
        .map(|c| ClientSession::installed(config, ClientId(c as u32), EPOCH, session_key(c)))
        .collect()
}

/// Replaces replica `me`'s Execution enclave by a fresh one running `app` and holding every
/// client's session (what re-executing their Register requests would give it).
pub fn install_sessions_at(
    cluster: &mut LocalCluster,
    secrets: &ClusterSecrets,
    me: ReplicaId,
    app: Box<dyn Application>,
) {
    let config = &secrets.config;
    let secret = SecretKey::from_seed(secrets.enclave(me, CompartmentKind::Execution).seed());
    let mut e =
        Execution::new(config.clone(), me, secret, secrets.execution_group_secret(), app).expect("valid configuration");
    for c in 0..config.clients.len() {
        assert!(e.install_session(ClientId(c as u32), EPOCH, session_key(c)));
    }
    cluster.replace_enclave(me, CompartmentKind::Execution, Box::new(InlineEnclave::new(Box::new(e))));
}

/// The plaintext result of a reply (each replica seals with its own nonce).
pub fn result(sessions: &[ClientSession], reply: &Reply) -> Vec<u8> {
    match sessions[reply.client.0 as usize].open_reply(reply.timestamp, reply.replica, &reply.result) {
        Ok(Opened::Result(bytes)) => bytes,
        other => panic!("not a result: {other:?}"),
    }
}

/// The reply's result decoded as a KV result.
pub fn kv(sessions: &[ClientSession], reply: &Reply) -> KvResult {
    KvResult::decode(&result(sessions, reply)).expect("a KV result")
}

/// A test client: request authenticators plus its installed session.
#[derive(Clone, Debug)]
pub struct SealedClient {
    keys: splitbft_types::crypto::ClientKeys,
    session: std::sync::Arc<ClientSession>,
}

impl SealedClient {
    /// A request for `op` at `t`, the op sealed under the session (SPEC §6).
    pub fn request(&self, t: splitbft_types::Timestamp, op: Vec<u8>) -> splitbft_types::msg::Request {
        self.keys.request(t, self.session.seal_op(t, &op).expect("timestamp in the nonce space"))
    }

    /// Checks a reply's MAC.
    pub fn verify_reply(&self, reply: &Reply) -> Result<(), splitbft_types::crypto::CryptoError> {
        self.keys.verify_reply(reply)
    }

    /// A reply's plaintext result.
    pub fn open(&self, reply: &Reply) -> Vec<u8> {
        match self.session.open_reply(reply.timestamp, reply.replica, &reply.result) {
            Ok(Opened::Result(bytes)) => bytes,
            other => panic!("not a result: {other:?}"),
        }
    }
}

/// Installs sessions (see [`install_sessions`]) and returns sealing clients.
pub fn sealed_clients(cluster: &mut LocalCluster, secrets: &ClusterSecrets) -> Vec<SealedClient> {
    sealed_clients_with(cluster, secrets, || Box::new(KvStore::new()))
}

/// [`sealed_clients`] for Execution enclaves running the application `app` builds.
pub fn sealed_clients_with(
    cluster: &mut LocalCluster,
    secrets: &ClusterSecrets,
    app: impl Fn() -> Box<dyn Application>,
) -> Vec<SealedClient> {
    let keyring = secrets.config.validate().expect("valid configuration");
    install_sessions_with(cluster, secrets, app)
        .into_iter()
        .enumerate()
        .map(|(c, session)| SealedClient {
            keys: splitbft_types::crypto::ClientKeys::derive(
                &secrets.clients[c],
                &secrets.config,
                &keyring,
                ClientId(c as u32),
            ),
            session: std::sync::Arc::new(session),
        })
        .collect()
}

/// Plaintext result of a reply, by its client.
pub fn open(clients: &[SealedClient], reply: &Reply) -> Vec<u8> {
    clients[reply.client.0 as usize].open(reply)
}
