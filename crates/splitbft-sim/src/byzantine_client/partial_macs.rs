//! Genuinely signed requests whose authenticator verifies for some Preparation enclaves
//! only (the Aardvark "MAC attack" on PBFT): the primary may accept one that backups
//! refuse. Sent to the primary and, as a retransmission would be, to every replica.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_types::msg::Mac;

use super::{Base, Sent, To};

pub(super) fn act(base: &mut Base, rng: &mut ChaCha8Rng) -> Vec<Sent> {
    let t = base.next_t();
    let op = Base::op(rng);
    let mut sent = base.genuine(t, &op);
    let n = sent.request.auth.len();
    // Spoil at least one MAC and keep at least one valid.
    let keep = rng.random_range(0..n);
    for (i, mac) in sent.request.auth.iter_mut().enumerate() {
        if i != keep && (i == (keep + 1) % n || rng.random_bool(0.5)) {
            *mac = Mac([0xa5; 32]);
        }
    }
    let again = Sent { to: To::All, request: sent.request.clone(), issued: sent.issued.clone() };
    vec![sent, again]
}
