//! Genuinely signed requests whose op is larger than the configured op limit (SPEC §11
//! "limits agree"): refused where they arrive, never ordered.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::{Base, Sent, To};

pub(super) fn act(base: &mut Base, rng: &mut ChaCha8Rng) -> Vec<Sent> {
    let t = base.next_t();
    let limit = base.config.max_op_bytes as usize;
    let op = vec![rng.random::<u8>(); limit + rng.random_range(1..1024usize)];
    let request = base.keys.request(t, op);
    vec![Sent { to: To::All, request, issued: None }]
}
