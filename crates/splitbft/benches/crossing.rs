//! Crossing latency per enclave backend (SPEC §5.1): one round trip with one input
//! (`QueryStats`, answered with one `Stats` output) into a Preparation compartment, inline,
//! on its own thread, and in its own sandboxed process.
//!
//! Run with `cargo bench -p splitbft --bench crossing` (add `-- --quick` for a fast pass).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use splitbft::clusterfile::{ClusterFile, enclave_key_path, read_key};
use splitbft_enclave::process::{ProcessEnclave, RestartNotice};
use splitbft_enclave::{EnclaveHandle, InlineEnclave, OutputSink, ThreadEnclave, build_compartment};
use splitbft_types::boundary::Input;
use splitbft_types::codec::to_bytes;
use splitbft_types::{CompartmentKind, ReplicaId};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

fn compartment(config: &Path) -> Box<dyn splitbft_types::boundary::Compartment> {
    let file = ClusterFile::load(config).unwrap();
    let protocol = file.protocol(config).unwrap();
    let dir = config.parent().unwrap();
    let key =
        read_key(&enclave_key_path(dir, ReplicaId(0), CompartmentKind::Preparation), &protocol.replicas[0].preparation)
            .unwrap();
    build_compartment(
        CompartmentKind::Preparation,
        &protocol,
        ReplicaId(0),
        key,
        None,
        splitbft::AppKind::Kv.build().unwrap(),
    )
    .unwrap()
}

fn crossing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN).args(["keygen", "--out"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success());
    let config = dir.path().join("cluster.toml");
    let query = Bytes::from(to_bytes(&Input::QueryStats));
    let mut group = c.benchmark_group("crossing_round_trip_one_input");
    group.measurement_time(Duration::from_secs(3));

    let mut inline = InlineEnclave::new(compartment(&config));
    group.bench_function("inline", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            inline.submit(vec![query.clone()], &mut out);
            assert_eq!(out.len(), 1);
        })
    });

    let (tx, rx) = crossbeam_channel::unbounded::<Vec<Bytes>>();
    let sink: OutputSink = Arc::new(move |_, outs| {
        let _ = tx.send(outs);
    });
    let mut thread = ThreadEnclave::spawn(compartment(&config), sink.clone()).unwrap();
    group.bench_function("thread", |b| {
        b.iter(|| {
            thread.submit(vec![query.clone()], &mut Vec::new());
            assert_eq!(rx.recv().unwrap().len(), 1);
        })
    });

    let launcher = {
        // The bench executable is not `splitbft`: name the program the launcher runs.
        let mut l =
            splitbft::compartment::launcher(&config, ReplicaId(0), splitbft::AppKind::Kv, false, Vec::new()).unwrap();
        l.program = BIN.into();
        l
    };
    let notice: RestartNotice = Arc::new(|kind, report| panic!("{kind} compartment died: {}", report.exit));
    let mut process = ProcessEnclave::spawn(CompartmentKind::Preparation, launcher, sink, notice, None).unwrap();
    group.bench_function("process", |b| {
        b.iter(|| {
            process.submit(vec![query.clone()], &mut Vec::new());
            assert_eq!(rx.recv().unwrap().len(), 1);
        })
    });
    group.finish();
}

criterion_group!(benches, crossing);
criterion_main!(benches);
