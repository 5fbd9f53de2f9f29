//! Cost of each compartment handler across the byte boundary (`Compartment::handle_encoded`)
//! for one batch of B = 200 KV puts with 10-byte values (f = 1, n = 4), and of the whole
//! 4-replica normal case for that batch through `LocalCluster`.
//!
//! Every iteration starts from fresh compartments (built in `iter_batched` setup, not
//! timed), so each measures the accepting path; a check outside the timed loop asserts the
//! expected outputs (PrePrepare, Prepare, Commit, Replies) so a rejection path cannot be
//! measured silently.
//!
//! Run with `cargo bench -p splitbft-broker --bench handlers` (add `-- --quick` for a fast
//! pass).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use splitbft_apps::kv::{KvOp, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_confirmation::Confirmation;
use splitbft_execution::Execution;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Compartment, Input, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{ClientKeys, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Commit, Digest, Message, Prepare, Request, Signed};
use splitbft_types::session::ClientSession;
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};

const CLUSTER: u64 = 7;
/// Requests per batch (the SPEC §2 default `B`).
const BATCH: usize = 200;
/// Bytes of each put's value.
const VALUE: usize = 10;
/// Clients issuing the batch (20 requests each, inside the per-client window `W` = 64).
const CLIENTS: usize = 10;

/// The primary and the backup whose compartments are measured.
const PRIMARY: ReplicaId = ReplicaId(0);
const BACKUP: ReplicaId = ReplicaId(1);

/// Session epoch and timestamp of every client's registration (SPEC §6).
const SESSION_EPOCH: u64 = 1;
const REGISTER_TIMESTAMP: u64 = 1;

/// Client `c`'s session key.
fn session_key(c: usize) -> [u8; 32] {
    [c as u8 + 1; 32]
}

/// The cluster's keys and genesis state: builds fresh compartments and clusters.
struct Setup {
    secrets: ClusterSecrets,
    genesis: Digest,
}

impl Setup {
    fn new() -> Setup {
        let secrets = ClusterSecrets::deterministic(CLUSTER, 1, CLIENTS, 42);
        let genesis = Execution::genesis_digest(&secrets.config, &KvStore::new());
        Setup { secrets, genesis }
    }

    fn secret(&self, me: ReplicaId, kind: CompartmentKind) -> SecretKey {
        SecretKey::from_seed(self.secrets.enclave(me, kind).seed())
    }

    fn preparation(&self, me: ReplicaId) -> Preparation {
        let secret = self.secret(me, CompartmentKind::Preparation);
        Preparation::new(self.secrets.config.clone(), me, secret, self.genesis).unwrap()
    }

    fn confirmation(&self, me: ReplicaId) -> Confirmation {
        let secret = self.secret(me, CompartmentKind::Confirmation);
        Confirmation::new(self.secrets.config.clone(), me, secret, self.genesis).unwrap()
    }

    /// An Execution enclave holding every client's session (installed: the measured batch
    /// is the sealed requests, not the registrations).
    fn execution(&self, me: ReplicaId) -> Execution {
        let secret = self.secret(me, CompartmentKind::Execution);
        let group = self.secrets.execution_group_secret();
        let mut e = Execution::new(self.secrets.config.clone(), me, secret, group, Box::new(KvStore::new())).unwrap();
        for c in 0..CLIENTS {
            assert!(e.install_session(ClientId(c as u32), SESSION_EPOCH, session_key(c)));
        }
        e
    }

    /// A 4-replica cluster whose clients registered their sessions through the protocol
    /// (SPEC §6), ready for the measured batch.
    fn cluster(&self) -> LocalCluster {
        let mut options = BrokerOptions::new(&self.secrets.config);
        options.batch_max = BATCH;
        // Cut only full batches: otherwise an idle primary cuts at the first request.
        options.eager_inflight = 0;
        let timeout = options.batch_timeout_us;
        let mut cluster = LocalCluster::new(&self.secrets, || Box::new(KvStore::new()), options);
        let keyring = self.secrets.config.validate().unwrap();
        for c in 0..CLIENTS {
            let id = ClientId(c as u32);
            let keys = ClientKeys::derive(&self.secrets.clients[c], &self.secrets.config, &keyring, id);
            let mut rng = ChaCha20Rng::seed_from_u64(c as u64);
            let (_, register) =
                ClientSession::register(&mut rng, &self.secrets.config, id, SESSION_EPOCH, session_key(c)).unwrap();
            cluster.client_sends(PRIMARY, &keys.request(REGISTER_TIMESTAMP, register));
        }
        cluster.run(usize::MAX);
        // The registrations are fewer than a full batch: let the batch timer cut them.
        cluster.advance(timeout + 1);
        cluster.run(usize::MAX);
        let registered = cluster.take_replies().len();
        assert_eq!(registered, 4 * CLIENTS, "every replica confirms every registration");
        cluster
    }

    /// `BATCH` signed requests: puts of `VALUE`-byte values, spread over the clients.
    fn requests(&self) -> Vec<Request> {
        let keyring = self.secrets.config.validate().unwrap();
        let clients: Vec<ClientKeys> = (0..CLIENTS)
            .map(|c| ClientKeys::derive(&self.secrets.clients[c], &self.secrets.config, &keyring, ClientId(c as u32)))
            .collect();
        (0..BATCH)
            .map(|i| {
                let op = KvOp::Put { key: format!("key-{i:05}").into_bytes(), value: vec![i as u8; VALUE] };
                let c = i % CLIENTS;
                let t = REGISTER_TIMESTAMP + 1 + (i / CLIENTS) as u64;
                let session =
                    ClientSession::installed(&self.secrets.config, ClientId(c as u32), SESSION_EPOCH, session_key(c));
                clients[c].request(t, session.seal_op(t, &op.encode()).unwrap())
            })
            .collect()
    }
}

/// The signed messages of one agreement round on the batch, produced once by running the
/// real compartments.
struct Round {
    /// `Input::OrderBatch` for the primary's Preparation.
    order_batch: Bytes,
    batch: BatchMsg,
    /// Prepares of replicas 1 and 2 (the `2f` a prepare certificate needs).
    prepares: Vec<Signed<Prepare>>,
    /// Commits of replicas 0, 1 and 2 (a commit certificate: `2f + 1`).
    commits: Vec<Signed<Commit>>,
}

fn input(input: &Input) -> Bytes {
    Bytes::from(to_bytes(input))
}

fn message(msg: Message) -> Bytes {
    input(&Input::Message(msg))
}

fn decode_outputs(out: &[Bytes]) -> Vec<Output> {
    out.iter().map(|o| from_bytes::<Output>(o).unwrap()).collect()
}

fn sent(out: &[Bytes]) -> Vec<Message> {
    decode_outputs(out)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn run(mut compartment: impl Compartment, inputs: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    compartment.handle_encoded(inputs, &mut out);
    out
}

impl Round {
    fn new(setup: &Setup, requests: &[Request]) -> Round {
        // (1) The primary orders the batch.
        let order_batch = input(&Input::OrderBatch(to_bytes(requests)));
        let batch = match sent(&run(setup.preparation(PRIMARY), std::slice::from_ref(&order_batch))).as_slice() {
            [Message::Batch(b)] => b.clone(),
            other => panic!("primary did not order the batch: {other:?}"),
        };
        assert_eq!(batch.pre_prepare.body.seq, 1);
        let mut round = Round { order_batch, batch, prepares: Vec::new(), commits: Vec::new() };

        // (2) Backups 1 and 2 prepare it.
        for r in [ReplicaId(1), ReplicaId(2)] {
            match sent(&run(setup.preparation(r), &[round.pre_prepare_input()])).as_slice() {
                [Message::Prepare(p)] => round.prepares.push(*p),
                other => panic!("backup {r} did not prepare: {other:?}"),
            }
        }

        // (3) Confirmation of replicas 0, 1, 2 commits on the prepare certificate.
        for r in [ReplicaId(0), ReplicaId(1), ReplicaId(2)] {
            match sent(&run(setup.confirmation(r), &round.confirmation_inputs())).as_slice() {
                [Message::Commit(c)] => round.commits.push(*c),
                other => panic!("confirmation of {r} did not commit: {other:?}"),
            }
        }
        round
    }

    /// What a backup's broker hands Preparation and Confirmation: the header alone.
    fn pre_prepare_input(&self) -> Bytes {
        message(Message::PrePrepare(self.batch.pre_prepare))
    }

    /// PrePrepare + 2 Prepares: a complete prepare certificate.
    fn confirmation_inputs(&self) -> Vec<Bytes> {
        let mut inputs = vec![self.pre_prepare_input()];
        inputs.extend(self.prepares.iter().map(|p| message(Message::Prepare(*p))));
        inputs
    }

    /// Batch + 3 Commits: the batch bytes and a commit certificate.
    fn execution_inputs(&self) -> Vec<Bytes> {
        let mut inputs = vec![message(Message::Batch(self.batch.clone()))];
        inputs.extend(self.commits.iter().map(|c| message(Message::Commit(*c))));
        inputs
    }
}

fn count_replies(out: &[Bytes]) -> usize {
    sent(out).iter().filter(|m| matches!(m, Message::Reply(_))).count()
}

/// Benchmarks one compartment handling `inputs` from a fresh state each iteration, after
/// checking once that the outputs pass `check`.
fn bench_compartment<C: Compartment>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    fresh: impl Fn() -> C,
    inputs: &[Bytes],
    check: impl Fn(&[Bytes]),
) {
    let mut compartment = fresh();
    let mut out = Vec::new();
    compartment.handle_encoded(inputs, &mut out);
    check(&out);

    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(BATCH as u64));
    // Fresh compartments per iteration make samples slow to collect: 50 fit in 3 s.
    g.sample_size(50);
    g.bench_function(name, |b| {
        b.iter_batched(
            || (fresh(), Vec::with_capacity(BATCH + 4)),
            |(mut compartment, mut out)| {
                compartment.handle_encoded(black_box(inputs), &mut out);
                // Returned, so the drop is not timed.
                (compartment, out)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn handlers(c: &mut Criterion) {
    let setup = Setup::new();
    let requests = setup.requests();
    let round = Round::new(&setup, &requests);

    // (a) Preparation at the primary: decode 200 requests, 200 MAC checks, hash, sign the
    // PrePrepare, encode the Batch output.
    bench_compartment(
        c,
        "handler/preparation",
        "primary_order_batch_200",
        || setup.preparation(PRIMARY),
        std::slice::from_ref(&round.order_batch),
        |out| assert!(matches!(sent(out).as_slice(), [Message::Batch(b)] if b.pre_prepare.body.seq == 1)),
    );

    // (b) Preparation at a backup: verify the PrePrepare, sign a Prepare.
    bench_compartment(
        c,
        "handler/preparation",
        "backup_pre_prepare",
        || setup.preparation(BACKUP),
        &[round.pre_prepare_input()],
        |out| assert!(matches!(sent(out).as_slice(), [Message::Prepare(p)] if p.body.replica == BACKUP)),
    );

    // (c) Confirmation: PrePrepare + 2 Prepares (3 verifies) -> Commit (1 sign).
    bench_compartment(
        c,
        "handler/confirmation",
        "pre_prepare_2_prepares_to_commit",
        || setup.confirmation(BACKUP),
        &round.confirmation_inputs(),
        |out| assert!(matches!(sent(out).as_slice(), [Message::Commit(c)] if c.body.replica == BACKUP)),
    );

    // (d) Execution: Batch (header verify + SHA-256) + 3 Commits (3 verifies) -> execute
    // 200 puts, 200 MACed replies.
    bench_compartment(
        c,
        "handler/execution",
        "batch_3_commits_to_200_replies",
        || setup.execution(BACKUP),
        &round.execution_inputs(),
        |out| {
            assert_eq!(count_replies(out), BATCH);
            let executed = decode_outputs(out).into_iter().any(|o| {
                matches!(o, Output::Event(splitbft_types::boundary::Event::Executed { seq: 1, requests, .. })
                    if requests as usize == BATCH)
            });
            assert!(executed, "execution did not report the batch executed");
        },
    );

    // (e) The whole normal case on 4 replicas (brokers, boundary crossings, every
    // compartment) for one batch: 200 client requests to replica 0 until quiescence.
    let send_all = |cluster: &mut LocalCluster| {
        for request in &requests {
            cluster.client_sends(PRIMARY, request);
        }
        cluster.run(usize::MAX)
    };
    {
        let mut cluster = setup.cluster();
        let batches_before: Vec<u64> = (0..4)
            .map(|r| cluster.stats(ReplicaId(r), CompartmentKind::Execution).get(Counter::BatchesExecuted))
            .collect();
        send_all(&mut cluster);
        let replies = cluster.take_replies();
        assert_eq!(replies.len(), 4 * BATCH, "every replica replies to every request");
        for r in 0..4 {
            let stats = cluster.stats(ReplicaId(r), CompartmentKind::Execution);
            assert_eq!(stats.get(Counter::RequestsExecuted), BATCH as u64);
            // The registrations went in an earlier batch (setup).
            let batches = stats.get(Counter::BatchesExecuted) - batches_before[r as usize];
            assert_eq!(batches, 1, "the requests went in one batch");
        }
    }
    let mut g = c.benchmark_group("cluster/normal_case");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("4_replicas_one_batch_200", |b| {
        b.iter_batched(
            || setup.cluster(),
            |mut cluster| {
                send_all(&mut cluster);
                cluster
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = handlers
}
criterion_main!(benches);
