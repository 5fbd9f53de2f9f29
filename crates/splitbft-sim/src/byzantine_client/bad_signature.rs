//! Requests with valid MACs and a signature that does not verify: no correct Preparation
//! may order or prepare one (SPEC §6), so it never executes (it is not recorded as issued).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::{Base, Sent, To};

pub(super) fn act(base: &mut Base, rng: &mut ChaCha8Rng) -> Vec<Sent> {
    let t = base.next_t();
    let op = Base::op(rng);
    let mut sent = base.genuine(t, &op);
    let byte = rng.random_range(0..sent.request.sig.0.len());
    sent.request.sig.0[byte] ^= 1 << rng.random_range(0..8u32);
    // The MACs cover client, timestamp and op, not the signature: they still verify.
    base.sent.pop_back();
    vec![Sent { to: To::All, request: sent.request, issued: None }]
}
