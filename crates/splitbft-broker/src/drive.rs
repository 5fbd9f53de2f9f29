//! The loop both drivers share: carry out a core's actions until nothing is left.

use bytes::Bytes;
use splitbft_enclave::EnclaveHandle;
use splitbft_types::CompartmentKind;

use crate::core::{Action, BrokerCore};

/// Runs `actions` to quiescence. Network actions go to `network`; enclave inputs cross the
/// boundary in one batch per compartment per round; outputs of inline compartments are
/// shown to `observe` (the simulator's checkers) and fed back into the core (thread-backed
/// ones answer later, through the driver). Client signatures of the requests the round
/// queued are checked first, in batches ([`BrokerCore::verify_queued`]).
pub fn drive(
    core: &mut BrokerCore,
    enclaves: &mut [Box<dyn EnclaveHandle>; 3],
    mut actions: Vec<Action>,
    now_us: u64,
    mut network: impl FnMut(&mut BrokerCore, Action),
    mut observe: impl FnMut(CompartmentKind, &[Bytes]),
) {
    loop {
        core.verify_queued(now_us, &mut actions);
        if actions.is_empty() {
            break;
        }
        let mut inputs: [Vec<Bytes>; 3] = Default::default();
        for action in actions.drain(..) {
            match action {
                Action::Enclave(kind, input) => inputs[kind.index()].push(input),
                other => network(core, other),
            }
        }
        for kind in CompartmentKind::ALL {
            let batch = std::mem::take(&mut inputs[kind.index()]);
            if batch.is_empty() {
                continue;
            }
            let mut outs = Vec::new();
            enclaves[kind.index()].submit(batch, &mut outs);
            if !outs.is_empty() {
                observe(kind, &outs);
                core.on_enclave_outputs(kind, outs, now_us, &mut actions);
            }
        }
    }
}
