//! SPEC §10 at start (`start_replica_durable`): an Execution whose sealed state is refused
//! as rolled back starts from no state (and catches up by state transfer) instead of
//! stopping the replica; a state that does not authenticate still stops it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use splitbft_apps::kv::KvStore;
use splitbft_enclave::{
    Backend, DurableStart, EnclaveError, EnclaveHandle, OutputSink, ReplicaSecrets, start_replica_durable,
};
use splitbft_types::boundary::{Input, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::{RecordKind, RestoreError, SealedState};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{CompartmentKind, ReplicaId};

const ME: ReplicaId = ReplicaId(2);

type Enclaves = [Box<dyn EnclaveHandle>; 3];

fn start(s: &ClusterSecrets, exec_records: Vec<SealedState>, exec_counter: u64) -> Result<Enclaves, EnclaveError> {
    let secrets = ReplicaSecrets {
        keys: CompartmentKind::ALL.map(|k| SecretKey::from_seed(s.enclave(ME, k).seed())),
        execution_group: s.execution_group_secret(),
    };
    let sink: OutputSink = Arc::new(|_, _| unreachable!("inline enclaves answer synchronously"));
    let fresh = || DurableStart { records: Vec::new(), counter: 0 };
    let start = [fresh(), fresh(), DurableStart { records: exec_records, counter: exec_counter }];
    let (enclaves, _replay) =
        start_replica_durable(&s.config, ME, secrets, Box::new(KvStore::new()), Backend::Inline, sink, start)?;
    Ok(enclaves)
}

/// Crosses into Execution once and returns the state records it sealed.
fn sealed_by_execution(enclaves: &mut Enclaves) -> Vec<SealedState> {
    let mut out = Vec::new();
    enclaves[CompartmentKind::Execution.index()].submit(vec![to_bytes(&Input::QueryStats).into()], &mut out);
    out.iter()
        .filter_map(|b| match from_bytes::<Output>(b).unwrap() {
            Output::Sealed(state) => Some(state),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rolled_back_execution_starts_without_state_and_an_altered_one_is_refused() {
    let s = ClusterSecrets::deterministic(9, 1, 1, 13);
    // A fresh Execution seals its first image.
    let mut first = start(&s, Vec::new(), 1).unwrap();
    let old = sealed_by_execution(&mut first);
    assert!(matches!(&old[..], [r] if r.kind == RecordKind::Image && r.epoch >= 1), "{old:?}");
    // The counter: every record made durable (SPEC §10). At it the state restores.
    let counter = old[0].index + 1;
    assert!(start(&s, old.clone(), counter).is_ok());
    // The counter moved on (later records were made durable): the old state is rolled
    // back. The replica still starts; its Execution has no state and seals a new image
    // whose index continues the sequence at the counter.
    let moved = counter + 1;
    let mut restarted =
        start(&s, old.clone(), moved).unwrap_or_else(|e| panic!("a rolled-back Execution stops the start: {e}"));
    let fresh = sealed_by_execution(&mut restarted);
    assert!(matches!(&fresh[..], [r] if r.kind == RecordKind::Image && r.index == moved), "{fresh:?}");
    // An altered state is not a rollback: the start fails, naming the compartment.
    let mut altered = old.clone();
    let last = altered[0].sealed.len() - 1;
    altered[0].sealed[last] ^= 1;
    match start(&s, altered, counter) {
        Err(EnclaveError::Restore(CompartmentKind::Execution, RestoreError::Unauthentic { .. })) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an altered Execution state was accepted"),
    }
}
