//! What crosses the enclave boundary (SPEC §5.1): encoded [`Input`]s in, encoded
//! [`Output`]s out. Both sides decode defensively; the environment is untrusted.

use serde::{Deserialize, Serialize};

use crate::ids::{Seq, View};
use crate::msg::Message;

/// One input to a compartment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A protocol message from a peer, a client or a local compartment.
    Message(Message),
    /// (Preparation at the primary) order this batch: `postcard`-encoded `Vec<Request>`.
    OrderBatch(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Report counters (answered with [`Output::Stats`]).
    QueryStats,
    /// (Confirmation) the environment suspects the primary of `view` (a request timer
    /// expired, or `f + 1` ViewChanges for higher views were seen): move to `view + 1`.
    Suspect(View),
    /// (Execution) a snapshot fetched from peers for checkpoint `seq`; restored only if its
    /// digest is the certified one (SPEC §4.3 state transfer).
    RestoreState {
        /// The checkpoint's sequence number.
        seq: Seq,
        /// The snapshot bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// (Preparation, Confirmation) while recovering (SPEC §10 recovery fence): ask every
    /// replica for its checkpoint and view, with this fresh nonce. The environment sends it
    /// at start and again, with a new nonce, while the enclave reports `recovering`.
    BeginRecovery {
        /// Chosen by the environment; statements must echo it.
        nonce: u64,
    },
}

/// One output of a compartment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// A message for the environment to route (SPEC §3 last column).
    Send(Message),
    /// A hint for the environment's liveness machinery (flow control, timers).
    Event(Event),
    /// Counters, in answer to [`Input::QueryStats`].
    Stats(Stats),
    /// (Execution) a record of the application sealed for this replica's storage (SPEC §7:
    /// a ledger block). The environment appends it to the replica's data directory; it can
    /// neither read nor alter it undetected (AEAD under a key only this Execution enclave
    /// derives, bound to cluster, replica and height).
    Persist {
        /// The record's height (a ledger block's position in the chain).
        height: u64,
        /// The AEAD ciphertext and tag.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// This compartment's safety state, sealed for the replica's storage (SPEC §10): the
    /// environment makes it durable before any other output of the same crossing leaves
    /// the replica.
    Sealed(crate::durable::SealedState),
}

/// Liveness hints for the environment. Safety never depends on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Preparation ordered a batch of `requests` at `seq` in `view`.
    Ordered {
        /// View.
        view: View,
        /// Assigned sequence number.
        seq: Seq,
        /// Requests admitted into the batch.
        requests: u32,
    },
    /// Preparation ordered nothing from an `OrderBatch` (every request was refused, or the
    /// log window is full and the environment should wait for a checkpoint).
    NotOrdered {
        /// The window `(h, h + L]` has no free sequence number.
        window_full: bool,
    },
    /// Execution executed `seq`.
    Executed {
        /// Sequence number.
        seq: Seq,
        /// Digest of the batch executed (the null batch's for a gap in a NewView).
        digest: crate::msg::Digest,
        /// Requests in it (including no-ops).
        requests: u32,
    },
    /// This compartment collected a checkpoint certificate and garbage-collected up to `seq`.
    Stable {
        /// New low watermark.
        seq: Seq,
    },
    /// (Confirmation) sent a ViewChange for `view` and stopped committing in older views.
    ViewChangeStarted {
        /// The view being moved to.
        view: View,
    },
    /// This compartment entered `view` (NewView accepted or built).
    ViewEntered {
        /// The view.
        view: View,
    },
    /// This compartment restarted from its sealed state (SPEC §10) in `view`: the
    /// environment, which restarted with it, learns where it is.
    Resumed {
        /// Its view.
        view: View,
        /// Whether it has entered `view` (false: a Confirmation between its ViewChange and
        /// the NewView).
        entered: bool,
        /// Its stable checkpoint (low watermark `h`).
        low: crate::ids::Seq,
    },
    /// (Execution) behind a certified checkpoint: fetch its snapshot from peers.
    StateNeeded {
        /// Checkpoint sequence number.
        seq: Seq,
        /// Certified state digest.
        digest: crate::msg::Digest,
    },
    /// (Execution) a snapshot offered with [`Input::RestoreState`] was refused.
    StateRejected {
        /// Checkpoint sequence number.
        seq: Seq,
    },
    /// (Execution) state restored up to `seq`.
    StateRestored {
        /// Checkpoint sequence number.
        seq: Seq,
    },
    /// (Execution) a snapshot taken for checkpoint `seq`, for the environment to serve to
    /// peers doing state transfer.
    Snapshot {
        /// Checkpoint sequence number.
        seq: Seq,
        /// Its digest.
        digest: crate::msg::Digest,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// (Preparation, Confirmation) the recovery fence has `2f + 1` statements: it now waits
    /// for a stable checkpoint at or above `horizon` (SPEC §10); stop re-asking.
    RecoveryHorizon {
        /// `H = max checkpoint + L`.
        horizon: Seq,
    },
    /// (Execution) a certified or re-proposed batch is missing: fetch it by digest.
    MissingBatch {
        /// Sequence number.
        seq: Seq,
        /// The batch digest.
        digest: crate::msg::Digest,
    },
}

/// A compartment's counters: accepted work and rejections by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `(counter name, value)`, sorted by name.
    pub counters: Vec<(String, u64)>,
    /// Log entries currently held (bounded by `L`).
    pub log_entries: u64,
    /// Low watermark `h`.
    pub low_watermark: Seq,
    /// Current view.
    pub view: View,
    /// Last executed sequence number (Execution only).
    pub last_executed: Seq,
    /// Behind the recovery fence (SPEC §10): signs nothing until it has recovered.
    pub recovering: bool,
}

impl Stats {
    /// Value of a counter (0 if absent).
    pub fn get(&self, counter: crate::counters::Counter) -> u64 {
        self.counters.iter().find(|(n, _)| n == counter.name()).map_or(0, |(_, v)| *v)
    }
}

/// A compartment: a deterministic state machine behind the enclave boundary (SPEC §4, §5.1).
pub trait Compartment: Send {
    /// Which compartment this is.
    fn kind(&self) -> crate::ids::CompartmentKind;

    /// Handles one decoded input, appending outputs.
    fn handle(&mut self, input: Input, out: &mut Vec<Output>);

    /// Counts an input that did not decode.
    fn count_malformed_input(&mut self);

    /// Called once at the end of every crossing: a compartment with durability on appends
    /// its sealed state change ([`Output::Sealed`], SPEC §10), one record per round.
    fn after_crossing(&mut self, _out: &mut Vec<Output>) {}

    /// One boundary crossing: decodes each input defensively, handles it, encodes every
    /// output. Undecodable inputs are counted and dropped.
    fn handle_encoded(&mut self, inputs: &[bytes::Bytes], out: &mut Vec<bytes::Bytes>) {
        let mut outputs = Vec::new();
        for input in inputs {
            match crate::codec::from_bytes::<Input>(input) {
                Ok(input) => self.handle(input, &mut outputs),
                Err(_) => self.count_malformed_input(),
            }
        }
        self.after_crossing(&mut outputs);
        out.extend(outputs.iter().map(|o| bytes::Bytes::from(crate::codec::to_bytes(o))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{CodecError, from_bytes, to_bytes};
    use crate::msg::Digest;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..200)
    }

    fn output() -> impl Strategy<Value = Output> {
        let digest = || any::<[u8; 32]>().prop_map(Digest);
        prop_oneof![
            (any::<u64>(), bytes()).prop_map(|(height, sealed)| Output::Persist { height, sealed }),
            (any::<u64>(), digest(), bytes()).prop_map(|(seq, digest, bytes)| Output::Event(Event::Snapshot {
                seq,
                digest,
                bytes
            })),
            (any::<u64>(), digest(), any::<u32>()).prop_map(|(seq, digest, requests)| Output::Event(Event::Executed {
                seq,
                digest,
                requests
            })),
            (any::<u64>(), any::<u64>()).prop_map(|(view, seq)| Output::Stats(Stats {
                counters: vec![("x".into(), seq)],
                view,
                ..Stats::default()
            })),
        ]
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            bytes().prop_map(Input::OrderBatch),
            any::<u64>().prop_map(Input::Suspect),
            (any::<u64>(), bytes()).prop_map(|(seq, bytes)| Input::RestoreState { seq, bytes }),
            Just(Input::QueryStats),
        ]
    }

    proptest! {
        #[test]
        fn outputs_round_trip_and_reject_truncation_and_trailing_bytes(output in output()) {
            let encoded = to_bytes(&output);
            prop_assert_eq!(from_bytes::<Output>(&encoded), Ok(output));
            for cut in 0..encoded.len() {
                prop_assert!(from_bytes::<Output>(&encoded[..cut]).is_err());
            }
            let mut longer = encoded;
            longer.push(0);
            prop_assert_eq!(from_bytes::<Output>(&longer), Err(CodecError::TrailingBytes(1)));
        }

        #[test]
        fn inputs_round_trip(input in input()) {
            prop_assert_eq!(from_bytes::<Input>(&to_bytes(&input)), Ok(input));
        }

        #[test]
        fn arbitrary_bytes_decode_to_a_value_or_an_error(bytes in bytes()) {
            let _ = from_bytes::<Output>(&bytes);
            let _ = from_bytes::<Input>(&bytes);
        }
    }
}
