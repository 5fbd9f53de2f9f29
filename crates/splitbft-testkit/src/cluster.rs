//! Deterministic cluster secrets for compartment-level tests.

use splitbft_types::ClientId;
use splitbft_types::config::{Keyring, ProtocolConfig};
use splitbft_types::crypto::ClientKeys;
use splitbft_types::keys::ClusterSecrets;

/// A cluster's secrets, its validated keyring and every client's keys.
pub struct Fixture {
    /// Every enclave's and client's secrets plus the configuration.
    pub secrets: ClusterSecrets,
    /// The validated public keys.
    pub keys: Keyring,
    /// Client `c`'s keys at index `c`.
    pub clients: Vec<ClientKeys>,
}

impl Fixture {
    /// Secrets for cluster `cluster_id` with `f` and `clients` clients, derived from `seed`;
    /// `tune` adjusts the configuration (K, L, B, ...) before it is validated.
    pub fn new(cluster_id: u64, f: u32, clients: usize, seed: u64, tune: impl FnOnce(&mut ProtocolConfig)) -> Self {
        let mut secrets = ClusterSecrets::deterministic(cluster_id, f, clients, seed);
        tune(&mut secrets.config);
        let keys = secrets.config.validate().unwrap();
        let clients = (0..clients)
            .map(|c| ClientKeys::derive(&secrets.clients[c], &secrets.config, &keys, ClientId(c as u32)))
            .collect();
        Fixture { secrets, keys, clients }
    }
}
