//! Scenario: a hostile host restarts one *correct* enclave without its state (SPEC §10
//! "Recovery fence"; issue 13). Zero faulty enclaves: the victim is the Preparation
//! enclave of the primary of view 0, restarted at a seed-drawn point of a workload, the
//! way a host that deletes (or rolls back and gets refused) its sealed state would. With
//! the fence it recovers behind it; with the fence disabled (this module's switch, nothing
//! in production turns it off) it assigns sequence numbers it already assigned and signs a
//! second PrePrepare for a `(v, s)` it signed before: the equivocation SPEC §10 forbids.
//!
//! The checker is per enclave and across the restart (unlike [`crate::run`]'s, which
//! forgets a restarted replica because amnesia there counts against `f`): every correct
//! Preparation's PrePrepares and Prepares and every correct Confirmation's Commits, by
//! `(v, s)`, must name one digest, before and after restarts. The run is the production
//! broker and compartments on [`LocalCluster`] (reliable FIFO network, simulated time), so
//! one seed replays exactly.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splitbft_apps::kv::{KvOp, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_enclave::InlineEnclave;
use splitbft_execution::Execution;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Input, Output};
use splitbft_types::codec::to_bytes;
use splitbft_types::crypto::{ClientKeys, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Digest, Message};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, View};

/// Checkpoint interval and log window of the scenario (small, so that recovery ends
/// within the run).
const K: u64 = 4;
const L: u64 = 8;
/// Client requests in a run.
const REQUESTS: u64 = 40;
/// Simulated time between two requests, in 10 ms ticks (batch timeout, request timers).
const TICKS_PER_REQUEST: usize = 20;
const TICK_US: u64 = 10_000;

/// What one run found.
#[derive(Clone, Debug)]
pub struct RestartReport {
    /// The seed.
    pub seed: u64,
    /// Replicas.
    pub n: usize,
    /// Whether the fence was on.
    pub fence: bool,
    /// Request after which the victim was restarted.
    pub restart_after: u64,
    /// A correct enclave signed two digests for one `(v, s)` (SPEC §9 P1/C1 across restarts).
    pub equivocations: Vec<String>,
    /// Highest sequence number executed by any replica.
    pub max_executed: Seq,
    /// The victim is still behind the fence at the end.
    pub victim_recovering: bool,
}

/// Signed `(kind, v, s) -> digest` of every enclave, across restarts.
type Signed = BTreeMap<(ReplicaId, CompartmentKind, &'static str, View, Seq), Digest>;

/// Runs one seed at `n` replicas; `fence` off is the sim-only switch that shows what the
/// fence prevents.
pub fn run_enclave_restart(seed: u64, n: usize, fence: bool) -> RestartReport {
    assert!(n == 4 || n == 7, "the scenario runs n = 4 or 7");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let f = ((n - 1) / 3) as u32;
    let mut secrets = ClusterSecrets::deterministic(seed, f, 1, seed);
    secrets.config.checkpoint_interval = K;
    secrets.config.log_window = L;
    let mut options = BrokerOptions::new(&secrets.config);
    options.batch_max = 1;
    options.view_change_timeout_us = 100_000;
    let mut cluster = LocalCluster::new(&secrets, || Box::new(KvStore::new()), options);
    let keyring = secrets.config.validate().expect("valid configuration");
    let client = ClientKeys::derive(&secrets.clients[0], &secrets.config, &keyring, ClientId(0));

    let signed: Rc<RefCell<(Signed, Vec<String>)>> = Rc::default();
    let sink = signed.clone();
    cluster.set_observer(move |replica, kind, output| {
        let (what, view, seq, digest) = match output {
            Output::Send(Message::Batch(b)) => {
                ("PrePrepare", b.pre_prepare.body.view, b.pre_prepare.body.seq, b.pre_prepare.body.digest)
            }
            Output::Send(Message::Prepare(p)) => ("Prepare", p.body.view, p.body.seq, p.body.digest),
            Output::Send(Message::Commit(c)) => ("Commit", c.body.view, c.body.seq, c.body.digest),
            _ => return,
        };
        let (seen, violations) = &mut *sink.borrow_mut();
        if *seen.entry((replica, kind, what, view, seq)).or_insert(digest) != digest {
            violations.push(format!("correct {replica} {kind} signed two {what}s at (v {view}, s {seq})"));
        }
    });

    // Before the first checkpoint falls out of the window, so the victim's old slots are
    // in its fresh window (0, L].
    let restart_after = rng.random_range(2..L);
    let victim = secrets.config.primary(0);
    for t in 1..=REQUESTS {
        let op = KvOp::Put { key: format!("k{t}").into_bytes(), value: vec![t as u8] }.encode();
        let request = client.request(t, op);
        for r in 0..n as u32 {
            cluster.client_sends(ReplicaId(r), &request);
        }
        for _ in 0..TICKS_PER_REQUEST {
            cluster.run(1_000_000);
            cluster.advance(TICK_US);
        }
        cluster.run(1_000_000);
        if t == restart_after {
            let secret = SecretKey::from_seed(secrets.enclave(victim, CompartmentKind::Preparation).seed());
            let genesis = Execution::genesis_digest(&secrets.config, &KvStore::new());
            let mut fresh = Preparation::new(secrets.config.clone(), victim, secret, genesis)
                .expect("the configuration validated above");
            if fence {
                // No counter in the simulator: the environment reports the restart.
                fresh.fence(0);
            }
            cluster.replace_enclave(
                victim,
                CompartmentKind::Preparation,
                Box::new(InlineEnclave::new(Box::new(fresh))),
            );
            let nonce = Input::BeginRecovery { nonce: rng.random() };
            cluster.enclave_input(victim, CompartmentKind::Preparation, Bytes::from(to_bytes(&nonce)));
        }
    }
    let max_executed =
        (0..n as u32).map(|r| cluster.stats(ReplicaId(r), CompartmentKind::Execution).last_executed).max().unwrap_or(0);
    let victim_recovering = cluster.stats(victim, CompartmentKind::Preparation).recovering;
    let equivocations = signed.borrow().1.clone();
    RestartReport { seed, n, fence, restart_after, equivocations, max_executed, victim_recovering }
}
