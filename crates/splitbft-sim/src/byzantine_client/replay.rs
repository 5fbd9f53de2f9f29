//! Its own earlier requests sent again and again to every replica: each executes at most
//! once (SPEC §4.3 dedup), and the retransmissions must not slow anyone else down.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::{Base, Sent, To};

/// Old requests replayed per turn.
const REPLAYS: usize = 4;

pub(super) fn act(base: &mut Base, rng: &mut ChaCha8Rng) -> Vec<Sent> {
    let t = base.next_t();
    let op = Base::op(rng);
    let mut out = vec![base.genuine(t, &op)];
    for _ in 0..REPLAYS {
        let old = base.sent[rng.random_range(0..base.sent.len())].clone();
        out.push(Sent { to: To::All, request: old, issued: None });
    }
    out
}
