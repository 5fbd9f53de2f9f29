//! `splitbft demo`: a local cluster in one process over real loopback TCP, driven by a
//! closed-loop key-value workload (the paper's: 10 clients × 40 outstanding, 10-byte
//! payloads).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_broker::{NodeConfig, NodeHandle, NodeReport, spawn_node};
use splitbft_client::{Client, ClientOptions, verify_attestation};
use splitbft_enclave::{Backend, ReplicaSecrets};
use splitbft_types::attest::{ExpectedExecution, SoftwareAttestation, SoftwarePlatform};
use splitbft_types::cert::VerifiedCache;
use splitbft_types::crypto::SecretKey;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};
use tokio::net::TcpListener;

use crate::AppKind;

/// Which protocol the demo cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// SplitBFT: three compartments per replica, each with its own key.
    Splitbft,
    /// The PBFT baseline (SPEC §8): one key per replica, its parts one trust domain that
    /// verifies each signature once, on the broker's thread.
    Pbft,
}

/// Demo parameters (the CLI flags).
#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// Protocol: splitbft, or the pbft baseline.
    #[arg(long, value_enum, default_value = "splitbft")]
    pub protocol: Protocol,
    /// Replicated application.
    #[arg(long, value_enum, default_value = "kv")]
    pub app: AppKind,
    /// Replicas (3f + 1).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Requests each client keeps outstanding.
    #[arg(long, default_value_t = 40)]
    pub outstanding: usize,
    /// Total requests.
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Payload (value) bytes per request.
    #[arg(long, default_value_t = 10)]
    pub payload: usize,
    /// Batch size B (1 = unbatched).
    #[arg(long, default_value_t = 200)]
    pub batch: u32,
    /// Batch timeout in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub batch_timeout_ms: u64,
    /// Compartment hosting: inline (function calls) or thread (one OS thread each).
    #[arg(long, default_value = "inline")]
    pub backend: Backend,
    /// Stop the primary replica this many milliseconds into the run (view change).
    #[arg(long)]
    pub crash_primary_after_ms: Option<u64>,
    /// Ops and results in clear, still authenticated under session keys (the baseline for
    /// the cost of confidentiality, SPEC §6).
    #[arg(long)]
    pub no_confidential: bool,
    /// Show progress on a terminal (set by the CLI, not a flag).
    #[arg(skip)]
    pub progress: bool,
}

/// The demo's result (printed as JSON with `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    /// `splitbft` or `pbft`.
    pub protocol: Protocol,
    /// `kv` or `ledger`.
    pub app: AppKind,
    /// Compartment backend.
    pub backend: String,
    /// Ops and results encrypted under client session keys (SPEC §6).
    pub confidential: bool,
    /// Replicas.
    pub replicas: usize,
    /// Clients.
    pub clients: usize,
    /// Outstanding per client.
    pub outstanding: usize,
    /// Requests issued.
    pub requests: u64,
    /// Requests answered with a non-error result.
    pub completed: u64,
    /// Requests that failed (timeout or error result).
    pub errors: u64,
    /// Wall-clock seconds of the workload.
    pub seconds: f64,
    /// Completed requests per second.
    pub throughput_ops_s: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// Requests per batch at the primary.
    pub avg_batch: f64,
    /// Client retransmissions.
    pub retransmissions: u64,
    /// Inputs rejected by any broker or compartment (counters whose name says so).
    pub rejected_inputs: u64,
    /// Highest view any running replica's Preparation enclave reached.
    pub final_view: u64,
    /// Views entered after view 0 (the most any running replica entered).
    pub view_changes: u64,
    /// When the primary was stopped, if it was (ms after the start).
    pub crash_at_ms: Option<f64>,
    /// Longest gap between completions after the crash (the stall the view change costs).
    pub stall_ms: Option<f64>,
    /// From the crash to the first completion after that stall.
    pub recovery_ms: Option<f64>,
}

/// A running in-process cluster.
pub struct LocalTcpCluster {
    /// Replica nodes (None once stopped).
    pub nodes: Vec<Option<NodeHandle>>,
    /// Listening addresses.
    pub addresses: Vec<SocketAddr>,
    /// All keys.
    pub secrets: ClusterSecrets,
    /// Software attestation of the Execution enclaves: the verifier and what it must find.
    pub attestation: (SoftwareAttestation, ExpectedExecution),
}

impl LocalTcpCluster {
    /// Starts `replicas` replicas running `protocol` on loopback ports chosen by the OS,
    /// confidential (SPEC §6).
    pub async fn start(
        protocol: Protocol,
        app: AppKind,
        replicas: usize,
        clients: usize,
        batch: u32,
        batch_timeout_ms: u64,
        backend: Backend,
    ) -> anyhow::Result<Self> {
        Self::start_with(protocol, app, replicas, clients, batch, batch_timeout_ms, backend, true).await
    }

    /// [`LocalTcpCluster::start`] with confidentiality on or off.
    #[allow(clippy::too_many_arguments, reason = "the demo's flags, passed through")]
    pub async fn start_with(
        protocol: Protocol,
        app: AppKind,
        replicas: usize,
        clients: usize,
        batch: u32,
        batch_timeout_ms: u64,
        backend: Backend,
        confidential: bool,
    ) -> anyhow::Result<Self> {
        let f = crate::fault_threshold(replicas)?;
        let cluster_id = u64::from_le_bytes(crate::os_seed()[..8].try_into()?);
        let mut secrets = match protocol {
            Protocol::Splitbft => ClusterSecrets::generate(cluster_id, f, clients, crate::os_seed),
            Protocol::Pbft => {
                if backend != Backend::Inline {
                    bail!("--protocol pbft runs each replica as one state machine: use --backend inline");
                }
                ClusterSecrets::generate_one_key_per_replica(cluster_id, f, clients, crate::os_seed)
            }
        };
        secrets.config.max_batch = batch.max(1);
        secrets.config.confidential = confidential;
        // Software attestation: this process plays the platform for its own enclaves.
        let platform = SoftwarePlatform::new(cluster_id, SecretKey::from_seed(crate::os_seed()));
        let expected = secrets.execution_reports(&platform, splitbft_execution::CODE_IDENTITY.measurement());
        let attestation = (SoftwareAttestation::new(cluster_id, platform.public()), expected);
        let mut listeners = Vec::new();
        for _ in 0..replicas {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?);
        }
        let addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let me = ReplicaId(i as u32);
            let mut protocol_config = secrets.config.clone();
            if protocol == Protocol::Pbft {
                protocol_config.pbft_shared_verification = Some(Arc::new(VerifiedCache::default()));
            }
            let mut config = NodeConfig::new(protocol_config, me, addresses.clone(), backend);
            config.options.batch_timeout_us = batch_timeout_ms * 1000;
            let keys = ReplicaSecrets {
                keys: CompartmentKind::ALL.map(|k| SecretKey::from_seed(secrets.enclave(me, k).seed())),
                execution_group: secrets.execution_group_secret(),
            };
            nodes.push(Some(spawn_node(config, listener, keys, app.build()?).await?));
        }
        Ok(LocalTcpCluster { nodes, addresses, secrets, attestation })
    }

    /// Connects client `id`, checks the Execution enclaves' attestation and registers a
    /// session (SPEC §6).
    pub async fn client(&self, id: usize, options: ClientOptions) -> anyhow::Result<Client> {
        let secret = SecretKey::from_seed(self.secrets.clients[id].seed());
        let (verifier, expected) = &self.attestation;
        let attested = verify_attestation(&self.secrets.config, verifier, expected)?;
        let client =
            Client::connect(self.secrets.config.clone(), self.addresses.clone(), ClientId(id as u32), secret, options)
                .await?;
        client.register(attested).await?;
        Ok(client)
    }

    /// Stops every replica and collects their reports.
    pub async fn shutdown(self) -> Vec<NodeReport> {
        let mut reports = Vec::new();
        for node in self.nodes.into_iter().flatten() {
            reports.push(node.shutdown().await);
        }
        reports
    }
}

/// Runs the demo and returns its summary.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    if opts.clients == 0 || opts.outstanding == 0 {
        bail!("--clients and --outstanding must be at least 1");
    }
    let cluster = LocalTcpCluster::start_with(
        opts.protocol,
        opts.app,
        opts.replicas,
        opts.clients,
        opts.batch,
        opts.batch_timeout_ms,
        opts.backend,
        !opts.no_confidential,
    )
    .await?;
    let window = cluster.secrets.config.client_window as usize;
    if opts.outstanding > window {
        bail!("--outstanding {} exceeds the per-client window W = {window}", opts.outstanding);
    }
    let mut cluster = cluster;
    let crash = match (opts.crash_primary_after_ms, cluster.nodes[0].take()) {
        (Some(ms), Some(primary)) => Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let at = Instant::now();
            (at, primary.shutdown().await)
        })),
        (None, primary) => {
            cluster.nodes[0] = primary;
            None
        }
        (Some(_), None) => None,
    };
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut workers = Vec::new();
    for c in 0..opts.clients {
        let options = ClientOptions { outstanding: opts.outstanding, ..ClientOptions::default() };
        let client = Arc::new(cluster.client(c, options).await.with_context(|| format!("connecting client {c}"))?);
        clients.push(client.clone());
        for lane in 0..opts.outstanding {
            let (client, issued, completed, errors) =
                (client.clone(), issued.clone(), completed.clone(), errors.clone());
            let (total, payload) = (opts.requests, opts.payload);
            workers.push(tokio::spawn(async move {
                let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant figures is valid");
                let mut done_at = Vec::new();
                let mut i = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < total {
                    // Alternate PUT and GET of this lane's keys (1,000 keys per lane).
                    let key = format!("c{c}-l{lane}-k{}", (i / 2) % 1000).into_bytes();
                    let op = if i.is_multiple_of(2) {
                        KvOp::Put { key, value: vec![b'v'; payload] }
                    } else {
                        KvOp::Get { key }
                    };
                    i += 1;
                    let t0 = Instant::now();
                    let ok = match client.invoke(op.encode()).await {
                        Ok(result) => !matches!(KvResult::decode(&result), Err(_) | Ok(KvResult::Error(_))),
                        Err(_) => false,
                    };
                    let _ = latencies.record(t0.elapsed().as_micros() as u64);
                    if ok {
                        done_at.push(Instant::now());
                    }
                    if ok { &completed } else { &errors }.fetch_add(1, Ordering::Relaxed);
                }
                (latencies, done_at)
            }));
        }
    }
    let progress = opts.progress.then(|| {
        let (completed, total) = (completed.clone(), opts.requests);
        tokio::spawn(async move {
            let mut stderr = std::io::stderr();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = completed.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let _ =
                    write!(stderr, "\r  {done:>9}/{total} requests  {:>9.0} ops/s  {secs:>6.1} s", done as f64 / secs);
                let _ = stderr.flush();
            }
        })
    });
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("valid histogram");
    let mut done_at = Vec::new();
    for worker in workers {
        let (hist, times) = worker.await.context("a workload task panicked")?;
        latencies.add(hist).context("merging latencies")?;
        done_at.extend(times);
    }
    done_at.sort_unstable();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let retransmissions = clients.iter().map(|c| c.stats().retransmissions).sum();
    drop(clients);
    let mut reports = cluster.shutdown().await;
    let running = reports.clone();
    let (mut crash_at_ms, mut stall_ms, mut recovery_ms) = (None, None, None);
    if let Some(crash) = crash {
        let (at, report) = crash.await.context("the crash task panicked")?;
        reports.push(report);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        crash_at_ms = Some(ms(at.duration_since(started)));
        // The longest gap between completions after the crash, and when it ended.
        let after: Vec<Instant> = std::iter::once(at).chain(done_at.iter().copied().filter(|t| *t >= at)).collect();
        if let Some(w) = after.windows(2).max_by_key(|w| w[1] - w[0]) {
            stall_ms = Some(ms(w[1] - w[0]));
            recovery_ms = Some(ms(w[1] - at));
        }
    }
    if std::env::var_os("SPLITBFT_DUMP_COUNTERS").is_some() {
        for (i, r) in reports.iter().enumerate() {
            eprintln!("report {i}: broker {:?}", r.broker);
            for s in r.enclaves.iter().flatten() {
                eprintln!("  view {} low {} executed {}: {:?}", s.view, s.low_watermark, s.last_executed, s.counters);
            }
        }
    }
    let ordered: u64 = reports.iter().map(|r| r.broker_counter("requests_ordered")).sum();
    let batches = reports.iter().map(|r| r.broker_counter("batches_ordered")).sum::<u64>().max(1);
    let final_view =
        running.iter().filter_map(|r| r.enclaves.first().cloned().flatten()).map(|s| s.view).max().unwrap_or(0);
    let view_changes = running.iter().map(|r| r.broker_counter("views_entered")).max().unwrap_or(0);
    let rejected_inputs = reports
        .iter()
        .flat_map(|r| r.broker.iter().chain(r.enclaves.iter().flatten().flat_map(|s| s.counters.iter())))
        .filter(|(name, _)| is_rejection(name))
        .map(|(_, v)| v)
        .sum();
    let completed = completed.load(Ordering::Relaxed);
    Ok(DemoSummary {
        protocol: opts.protocol,
        app: opts.app,
        backend: opts.backend.to_string(),
        confidential: !opts.no_confidential,
        replicas: opts.replicas,
        clients: opts.clients,
        outstanding: opts.outstanding,
        requests: opts.requests,
        completed,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        throughput_ops_s: completed as f64 / seconds,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        avg_batch: ordered as f64 / batches as f64,
        retransmissions,
        rejected_inputs,
        final_view,
        view_changes,
        crash_at_ms,
        stall_ms,
        recovery_ms,
    })
}

/// Counter names that record refused hostile or broken input — not the stale or duplicate
/// messages every run sees (late Prepares, old views during a view change).
fn is_rejection(name: &str) -> bool {
    ["malformed", "bad_", "unknown", "oversize", "unexpected", "wrong_digest", "wrong_o", "wrong_id", "wrong_length"]
        .iter()
        .any(|p| name.contains(p))
}

/// Human-readable summary.
pub fn print_summary(s: &DemoSummary) {
    println!(
        "splitbft demo: {:?} with {} replicas ({} backend), {} app, {}",
        s.protocol,
        s.replicas,
        s.backend,
        s.app.name(),
        if s.confidential {
            "confidential (ops and results AES-256-GCM under session keys; software attestation)"
        } else {
            "not confidential (ops and results authenticated, in clear)"
        }
    );
    println!("  workload     {} clients x {} outstanding, {} requests", s.clients, s.outstanding, s.requests);
    println!("  completed    {} ({} errors) in {:.2} s", s.completed, s.errors, s.seconds);
    println!("  throughput   {:.0} ops/s", s.throughput_ops_s);
    println!("  latency      p50 {:.3} ms, p99 {:.3} ms", s.p50_us as f64 / 1000.0, s.p99_us as f64 / 1000.0);
    println!("  batching     {:.1} requests per batch at the primary", s.avg_batch);
    println!("  retransmits  {}, rejected inputs {}", s.retransmissions, s.rejected_inputs);
    println!("  views        final view {}, {} view change(s)", s.final_view, s.view_changes);
    if let (Some(at), Some(stall), Some(recovery)) = (s.crash_at_ms, s.stall_ms, s.recovery_ms) {
        println!(
            "  crash        primary stopped at {at:.0} ms; longest stall {stall:.0} ms; serving again {recovery:.0} ms after the crash"
        );
    }
}

/// Whether progress should be drawn (stderr is a terminal).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
