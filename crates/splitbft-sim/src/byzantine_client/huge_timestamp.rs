//! Genuine requests at timestamps near `u64::MAX` (issue 11 finding 7: `low + 1` overflowed
//! in the client window). The client may lock itself out; nothing else changes.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::{Base, Sent};

pub(super) fn act(base: &mut Base, rng: &mut ChaCha8Rng) -> Vec<Sent> {
    let t = u64::MAX - rng.random_range(0..4u64);
    let op = Base::op(rng);
    let wire = match base.session.seal_op(t, &op) {
        Ok(wire) => wire,
        // The session layer refuses to seal at such a timestamp: send the op in clear.
        Err(_) => op.clone(),
    };
    let request = base.keys.request(t, wire.clone());
    let issued = if wire == op { None } else { Some(op) };
    vec![Sent { to: super::To::All, request, issued }]
}
