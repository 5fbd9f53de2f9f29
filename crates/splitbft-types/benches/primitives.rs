//! Micro-benchmarks of the primitives every handler is built from: the wire codec, Ed25519,
//! HMAC-SHA256 request MACs, SHA-256 batch digests and the X25519+HKDF MAC key derivation.
//!
//! Run with `cargo bench -p splitbft-types --bench primitives` (add `-- --quick` for a
//! fast pass).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use splitbft_types::codec::{decode_message, encode_message, from_bytes, to_bytes};
use splitbft_types::crypto::{ClientKeys, MacKey, Purpose, SecretKey, request_mac, verify_request_mac};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Digest, Message, PrePrepare, Prepare, Request, Signed};
use splitbft_types::{ClientId, CompartmentKind, EnclaveId, ReplicaId};

const CLUSTER: u64 = 7;
/// Requests per batch (the SPEC §2 default `B`).
const BATCH: usize = 200;
/// Bytes of op per request.
const PAYLOAD: usize = 10;
/// Clients issuing the batch's requests.
const CLIENTS: usize = 10;

struct Fixture {
    secrets: ClusterSecrets,
    /// `BATCH` requests with `PAYLOAD`-byte ops and one MAC per Preparation enclave (n = 4).
    requests: Vec<Request>,
    /// `to_bytes(&requests)`: the batch as ordered and hashed.
    batch: Vec<u8>,
}

fn fixture() -> Fixture {
    let secrets = ClusterSecrets::deterministic(CLUSTER, 1, CLIENTS, 42);
    let keyring = secrets.config.validate().unwrap();
    let clients: Vec<ClientKeys> = (0..CLIENTS)
        .map(|c| ClientKeys::derive(&secrets.clients[c], &secrets.config, &keyring, ClientId(c as u32)))
        .collect();
    let requests: Vec<Request> = (0..BATCH)
        .map(|i| {
            let op = vec![i as u8; PAYLOAD];
            clients[i % CLIENTS].request((i / CLIENTS) as u64 + 1, op)
        })
        .collect();
    let batch = to_bytes(&requests);
    Fixture { secrets, requests, batch }
}

fn codec(c: &mut Criterion, fx: &Fixture) {
    let prep_key = fx.secrets.enclave(ReplicaId(1), CompartmentKind::Preparation);
    let body = Prepare { view: 0, seq: 1, digest: Digest::of(&fx.batch), replica: ReplicaId(1) };
    let prepare = Message::Prepare(Signed { body, sig: prep_key.sign(CLUSTER, Purpose::Prepare, &body) });
    let prepare_bytes = encode_message(&prepare);
    assert_eq!(decode_message(&prepare_bytes).unwrap(), prepare);

    let mut g = c.benchmark_group("codec/prepare");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| encode_message(black_box(&prepare))));
    g.bench_function("decode", |b| b.iter(|| decode_message(black_box(&prepare_bytes)).unwrap()));
    g.finish();

    // The Batch message as it travels between brokers: a signed header and the opaque bytes.
    let primary_key = fx.secrets.enclave(ReplicaId(0), CompartmentKind::Preparation);
    let header = PrePrepare { view: 0, seq: 1, digest: Digest::of(&fx.batch) };
    let batch_msg = Message::Batch(BatchMsg {
        pre_prepare: Signed { body: header, sig: primary_key.sign(CLUSTER, Purpose::PrePrepare, &header) },
        batch: fx.batch.clone(),
    });
    let batch_bytes = encode_message(&batch_msg);
    assert_eq!(decode_message(&batch_bytes).unwrap(), batch_msg);

    let mut g = c.benchmark_group("codec/batch_msg_200");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("encode", |b| b.iter(|| encode_message(black_box(&batch_msg))));
    g.bench_function("decode", |b| b.iter(|| decode_message(black_box(&batch_bytes)).unwrap()));
    g.finish();

    // The requests inside it, as the primary's Preparation and every Execution decode them.
    let mut g = c.benchmark_group("codec/requests_200");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("encode", |b| b.iter(|| to_bytes(black_box(&fx.requests))));
    g.bench_function("decode", |b| b.iter(|| from_bytes::<Vec<Request>>(black_box(&fx.batch)).unwrap()));
    g.finish();
}

fn ed25519(c: &mut Criterion, fx: &Fixture) {
    let key = fx.secrets.enclave(ReplicaId(1), CompartmentKind::Preparation);
    let public = key.public();
    let body = Prepare { view: 0, seq: 1, digest: Digest::of(&fx.batch), replica: ReplicaId(1) };
    let sig = key.sign(CLUSTER, Purpose::Prepare, &body);
    public.verify(CLUSTER, Purpose::Prepare, &body, &sig).unwrap();

    let mut g = c.benchmark_group("crypto/ed25519");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_prepare", |b| b.iter(|| key.sign(CLUSTER, Purpose::Prepare, black_box(&body))));
    g.bench_function("verify_strict_prepare", |b| {
        b.iter(|| public.verify(CLUSTER, Purpose::Prepare, black_box(&body), black_box(&sig)).unwrap())
    });
    g.finish();
}

fn hmac(c: &mut Criterion, fx: &Fixture) {
    // The MAC key Preparation(0) shares with client 0, pre-keyed once as in the enclave.
    let enclave = EnclaveId { replica: ReplicaId(0), kind: CompartmentKind::Preparation };
    let key: MacKey = fx.secrets.enclave(ReplicaId(0), CompartmentKind::Preparation).mac_key(
        &fx.secrets.clients[0].public(),
        CLUSTER,
        ClientId(0),
        enclave,
    );
    let request = &fx.requests[0];
    assert_eq!(request.client, ClientId(0));
    let mac = request_mac(&key, CLUSTER, request);
    assert_eq!(mac, request.auth[0], "client and enclave derive the same key");

    let mut g = c.benchmark_group("crypto/hmac_sha256_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tag", |b| b.iter(|| request_mac(&key, CLUSTER, black_box(request))));
    g.bench_function("verify", |b| {
        b.iter(|| verify_request_mac(&key, CLUSTER, black_box(request), black_box(&mac)).unwrap())
    });
    g.finish();
}

fn sha256(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("crypto/sha256_batch_200");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(format!("digest_{}_bytes", fx.batch.len()), |b| b.iter(|| Digest::of(black_box(&fx.batch))));
    g.finish();
}

fn mac_key_derivation(c: &mut Criterion, fx: &Fixture) {
    let enclave_secret: &SecretKey = fx.secrets.enclave(ReplicaId(0), CompartmentKind::Execution);
    let client_public = fx.secrets.clients[0].public();
    let enclave = EnclaveId { replica: ReplicaId(0), kind: CompartmentKind::Execution };

    let mut g = c.benchmark_group("crypto/mac_key_derivation");
    g.throughput(Throughput::Elements(1));
    g.bench_function("x25519_hkdf", |b| {
        b.iter(|| enclave_secret.mac_key(black_box(&client_public), CLUSTER, ClientId(0), enclave))
    });
    g.finish();
}

fn primitives(c: &mut Criterion) {
    let fx = fixture();
    codec(c, &fx);
    ed25519(c, &fx);
    hmac(c, &fx);
    sha256(c, &fx);
    mac_key_derivation(c, &fx);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = primitives
}
criterion_main!(benches);
