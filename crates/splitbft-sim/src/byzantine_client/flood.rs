//! Many genuine requests at once to every replica: the client may be slowed or refused,
//! correct clients must still complete (SPEC §1.1 liveness, §11 bounded buffers).

use rand_chacha::ChaCha8Rng;

use super::{Base, Sent, To};

/// Requests per turn.
const BURST: usize = 12;

pub(super) fn act(base: &mut Base, rng: &mut ChaCha8Rng) -> Vec<Sent> {
    (0..BURST)
        .map(|_| {
            let t = base.next_t();
            let op = Base::op(rng);
            let mut sent = base.genuine(t, &op);
            sent.to = To::All;
            sent
        })
        .collect()
}
