//! Any bytes a faulty primary or a client can put in a Request's `op`, and any reply
//! result a client receives, go through the session layer (SPEC §6) to a decision or a
//! typed error, never a panic; and a request that does not authenticate never executes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use splitbft_types::config::Keyring;
use splitbft_types::crypto::ClientKeys;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::session::{Admission, GroupSecret, Sessions, open_reply_body};
use splitbft_types::{ClientId, ReplicaId};

struct Setup {
    secrets: ClusterSecrets,
    keys: Keyring,
    group: GroupSecret,
    client: ClientKeys,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let secrets = ClusterSecrets::deterministic(1, 1, 1, 1);
        let keys = secrets.config.validate().expect("valid");
        let client = ClientKeys::derive(&secrets.clients[0], &secrets.config, &keys, ClientId(0));
        let group = secrets.execution_group_secret();
        Setup { secrets, keys, group, client }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let mut sessions = Sessions::new(1);
    sessions.install(ClientId(0), 1, [7; 32]);
    let request = s.client.request(5, data.to_vec());
    if let Admission::Execute(_) = sessions.admit(&s.secrets.config, &s.keys, &s.group, &request) {
        panic!("random bytes authenticated under a session key");
    }
    let _ = open_reply_body(None, ClientId(0), 5, ReplicaId(1), data);
});
