//! A forked enclave (SPEC §1.1 "Restarts, rollback and clones"): the host runs two copies
//! of one enclave from the same state — both hold its key — and shows each different
//! inputs: each input goes to one copy, the other or both, as the seed draws. Whatever
//! either copy signs goes out. Without a trusted counter nothing inside an enclave can
//! tell it has a twin, so a fork counts against `f` of its kind: it is drawn as a faulty
//! enclave (`Strategy::Fork`), and the checkers ask of it only what they ask of any
//! faulty enclave.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splitbft_types::boundary::{Compartment, Input, Output};
use splitbft_types::{CompartmentKind, ReplicaId};

/// Two copies of one enclave behind one boundary.
pub struct Forked {
    copies: [Box<dyn Compartment>; 2],
    rng: ChaCha8Rng,
}

impl Forked {
    /// Two copies built from the same state; inputs split by a stream drawn from `seed`
    /// and the enclave's place.
    pub fn new(copies: [Box<dyn Compartment>; 2], seed: u64, replica: ReplicaId) -> Self {
        let kind = copies[0].kind().index() as u64;
        let stream = seed ^ (u64::from(replica.0) << 8) ^ kind ^ 0xf0_4c;
        Forked { copies, rng: ChaCha8Rng::seed_from_u64(stream) }
    }
}

impl Compartment for Forked {
    fn kind(&self) -> CompartmentKind {
        self.copies[0].kind()
    }

    fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        if input == Input::QueryStats {
            return self.copies[0].handle(input, out);
        }
        match self.rng.random_range(0..3u32) {
            0 => self.copies[0].handle(input, out),
            1 => self.copies[1].handle(input, out),
            _ => {
                self.copies[0].handle(input.clone(), out);
                self.copies[1].handle(input, out);
            }
        }
    }

    fn count_malformed_input(&mut self) {
        self.copies[0].count_malformed_input();
    }
}
