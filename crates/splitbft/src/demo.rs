//! `splitbft demo`: a local cluster in one process over real loopback TCP, driven by a
//! closed-loop key-value workload (the paper's: 10 clients × 40 outstanding, 10-byte
//! payloads).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use splitbft_broker::{NodeConfig, NodeHandle, NodeReport, spawn_node};
use splitbft_client::{Client, ClientOptions, verify_attestation};
use splitbft_enclave::{Backend, ReplicaSecrets};
use splitbft_types::attest::{ExpectedExecution, SoftwareAttestation, SoftwarePlatform};
use splitbft_types::cert::VerifiedCache;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};
use tokio::net::TcpListener;

use crate::AppKind;
use crate::workload::{self, OpMix, Stop, Workload};

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

impl Protocol {
    /// The name used in CSV, JSON and plots.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Splitbft => "splitbft",
            Protocol::Pbft => "pbft",
        }
    }
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
    /// With `--app ledger`: where replica I appends its sealed blocks
    /// (`DIR/replica-I/ledger.blocks`, beside `DIR/cluster.toml` and the Execution keys
    /// that `splitbft ledger verify` needs). Default: a new directory under the system
    /// temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Ops and results in clear, still authenticated under session keys (the baseline for
    /// the cost of confidentiality, SPEC §6).
    #[arg(long)]
    pub no_confidential: bool,
    /// Run without sealed write-ahead compartment state (SPEC §10), the comparison for its
    /// cost; by default every replica keeps it in `DATA_DIR/replica-I` (a temporary
    /// directory unless `--data-dir`).
    #[arg(long)]
    pub no_durable: bool,
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
    /// `process` backend: crossings into compartment processes and the inputs they carried,
    /// over every replica (None for the in-process backends).
    pub process_crossings: Option<(u64, u64)>,
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
    /// (`--app ledger` or durable) the run's data directory.
    pub data_dir: Option<String>,
    /// Sealed write-ahead state on (SPEC §10).
    pub durable: bool,
    /// Groups of rounds whose sealed state was committed with one fdatasync, summed over
    /// replicas (pipelined group commit: one group covers every round queued meanwhile).
    pub state_commits: u64,
    /// Rounds those groups covered, summed over replicas.
    pub state_rounds: u64,
    /// Log fsyncs per batch ordered, over all replicas (`state_commits` / batches).
    pub fsyncs_per_batch: f64,
    /// (`--app ledger`) sealed blocks the brokers wrote, summed over replicas.
    pub ledger_blocks_written: Option<u64>,
    /// (`--app ledger`) heights every replica's chain holds, checked to agree.
    pub ledger_common_blocks: Option<u64>,
    /// (`--app ledger`) the head hash of the longest chain after verification.
    pub ledger_head: Option<String>,
}

/// What a local cluster runs.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// SplitBFT or the PBFT baseline.
    pub protocol: Protocol,
    /// The replicated application.
    pub app: AppKind,
    /// Replicas (3f + 1).
    pub replicas: usize,
    /// Client identities.
    pub clients: usize,
    /// Batch size B.
    pub batch: u32,
    /// Batch timeout.
    pub batch_timeout_ms: u64,
    /// Compartment hosting.
    pub backend: Backend,
    /// Replica `i` persists sealed blocks in `data_dir/replica-i`; the directory also gets
    /// `cluster.toml` and the Execution keys, so `splitbft ledger verify` can check it.
    pub data_dir: Option<PathBuf>,
    /// Ops and results encrypted under session keys (SPEC §6); off only for the baseline.
    pub confidential: bool,
    /// Sealed write-ahead compartment state in each replica's data directory (SPEC §10);
    /// needs `data_dir`.
    pub durable: bool,
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
    /// With the process backend: the key directory the compartment processes read from
    /// (removed when the cluster is dropped).
    _keys_dir: Option<KeysDir>,
}

/// A temporary key directory for compartment processes, removed on drop.
struct KeysDir(PathBuf);

impl Drop for KeysDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `dir/cluster.toml` and every enclave key and group key (owner-only files), for
/// compartment processes to load themselves (SPEC §5.1 `process` backend).
fn write_process_keys(
    dir: &Path,
    secrets: &ClusterSecrets,
    addresses: &[SocketAddr],
    batch_timeout_ms: u64,
    platform: &SoftwarePlatform,
    measurement: splitbft_types::msg::Digest,
) -> anyhow::Result<PathBuf> {
    use crate::clusterfile::{enclave_key_path, group_key_path, write_group_key, write_key};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = dir.join("cluster.toml");
    crate::clusterfile::ClusterFile::new(
        secrets,
        addresses.iter().map(|a| (*a).into()).collect(),
        batch_timeout_ms,
        platform,
        measurement,
    )
    .save(&path)?;
    for i in 0..secrets.config.n() {
        let replica = ReplicaId(i as u32);
        for kind in CompartmentKind::ALL {
            write_key(&enclave_key_path(dir, replica, kind), secrets.enclave(replica, kind))?;
        }
        write_group_key(&group_key_path(dir, replica), &secrets.execution_group_secret())?;
    }
    Ok(path)
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
        let spec = ClusterSpec {
            protocol,
            app,
            replicas,
            clients,
            batch,
            batch_timeout_ms,
            backend,
            data_dir: None,
            confidential: true,
            durable: false,
        };
        Self::start_spec(&spec).await
    }

    /// Starts the cluster `spec` describes on loopback ports chosen by the OS.
    pub async fn start_spec(spec: &ClusterSpec) -> anyhow::Result<Self> {
        let ClusterSpec { protocol, app, replicas, clients, batch, batch_timeout_ms, backend, confidential, .. } =
            spec.clone();
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
        // Compartment processes run (and check) a binary: attest its measurement.
        let measurement = match backend {
            Backend::Process => crate::compartment::executable_measurement(&crate::compartment::enclave_program()?)?,
            _ => splitbft_execution::CODE_IDENTITY.measurement(),
        };
        let expected = secrets.execution_reports(&platform, measurement);
        let attestation = (SoftwareAttestation::new(cluster_id, platform.public()), expected);
        let mut listeners = Vec::new();
        for _ in 0..replicas {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?);
        }
        let addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
        if let Some(dir) = &spec.data_dir {
            write_verifier_files(dir, &secrets, &addresses, batch_timeout_ms, &platform)?;
        }
        let keys_dir = match backend {
            Backend::Process => {
                static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = format!("splitbft-keys-{}-{n}-{:x}", std::process::id(), cluster_id);
                let dir = KeysDir(std::env::temp_dir().join(name));
                let path = write_process_keys(&dir.0, &secrets, &addresses, batch_timeout_ms, &platform, measurement)?;
                Some((dir, path))
            }
            _ => None,
        };
        app.check_limits(&secrets.config, splitbft_types::wire::MAX_FRAME_BYTES)?;
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let me = ReplicaId(i as u32);
            let mut protocol_config = secrets.config.clone();
            if protocol == Protocol::Pbft {
                protocol_config.pbft_shared_verification = Some(Arc::new(VerifiedCache::default()));
            }
            let transport = secrets.transport[i].clone();
            let mut config = NodeConfig::new(protocol_config, me, addresses.clone(), backend, transport);
            config.options.batch_timeout_us = batch_timeout_ms * 1000;
            config.data_dir = spec.data_dir.as_ref().map(|d| replica_data_dir(d, me));
            config.durable = spec.durable;
            if let Some((_, path)) = &keys_dir {
                let launcher = crate::compartment::launcher(path, me, app, spec.durable, Vec::new())?;
                nodes.push(Some(splitbft_broker::spawn_node_processes(config, listener, launcher).await?));
                continue;
            }
            let keys = ReplicaSecrets {
                keys: CompartmentKind::ALL.map(|k| SecretKey::from_seed(secrets.enclave(me, k).seed())),
                execution_group: secrets.execution_group_secret(),
            };
            nodes.push(Some(spawn_node(config, listener, keys, app.build()?).await?));
        }
        Ok(LocalTcpCluster { nodes, addresses, secrets, attestation, _keys_dir: keys_dir.map(|(dir, _)| dir) })
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

    /// Stops every replica at once and collects their reports. (One at a time, the
    /// survivors of a busy cluster would see their primary go, start a view change with
    /// a log full of prepared certificates, and count it in the run's `view_changes`.)
    pub async fn shutdown(self) -> Vec<NodeReport> {
        let stopping: Vec<_> = self.nodes.into_iter().flatten().map(|node| tokio::spawn(node.shutdown())).collect();
        let mut reports = Vec::new();
        for task in stopping {
            reports.push(task.await.unwrap_or_default());
        }
        reports
    }
}

/// Replica `me`'s data directory inside a cluster directory.
pub fn replica_data_dir(dir: &Path, me: ReplicaId) -> PathBuf {
    dir.join(format!("replica-{}", me.0))
}

/// Writes `dir/cluster.toml` and each replica's Execution key (only those: the verifier
/// needs nothing else), so that `splitbft ledger verify --config dir/cluster.toml` works.
fn write_verifier_files(
    dir: &Path,
    secrets: &ClusterSecrets,
    addresses: &[SocketAddr],
    batch_timeout_ms: u64,
    platform: &SoftwarePlatform,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let measurement = splitbft_execution::CODE_IDENTITY.measurement();
    crate::clusterfile::ClusterFile::new(
        secrets,
        addresses.iter().map(|a| (*a).into()).collect(),
        batch_timeout_ms,
        platform,
        measurement,
    )
    .save(&dir.join("cluster.toml"))?;
    for i in 0..secrets.config.n() {
        let replica = ReplicaId(i as u32);
        let path = crate::clusterfile::enclave_key_path(dir, replica, CompartmentKind::Execution);
        crate::clusterfile::write_key(&path, secrets.enclave(replica, CompartmentKind::Execution))?;
    }
    Ok(())
}

/// A fresh directory under the system temporary directory for one demo or bench run.
pub(crate) fn fresh_run_dir() -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("splitbft-demo-{}-{stamp}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs the demo and returns its summary.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    if opts.clients == 0 || opts.outstanding == 0 {
        bail!("--clients and --outstanding must be at least 1");
    }
    let durable = !opts.no_durable;
    let data_dir = match (opts.app, &opts.data_dir) {
        (AppKind::Ledger, Some(dir)) => Some(dir.clone()),
        (AppKind::Kv, Some(dir)) if durable => Some(dir.clone()),
        (AppKind::Ledger, None) => Some(fresh_run_dir()?),
        (AppKind::Kv, Some(_)) => {
            bail!(
                "--data-dir is for --app ledger or durable state (the key-value store persists nothing with --no-durable)"
            )
        }
        (AppKind::Kv, None) if durable => Some(fresh_run_dir()?),
        (AppKind::Kv, None) => None,
    };
    let spec = ClusterSpec {
        protocol: opts.protocol,
        app: opts.app,
        replicas: opts.replicas,
        clients: opts.clients,
        batch: opts.batch,
        batch_timeout_ms: opts.batch_timeout_ms,
        backend: opts.backend,
        data_dir: data_dir.clone(),
        confidential: !opts.no_confidential,
        durable,
    };
    let cluster = LocalTcpCluster::start_spec(&spec).await?;
    let cluster_id = cluster.secrets.config.cluster_id;
    let execution_keys: Vec<SecretKey> = (0..opts.replicas)
        .map(|i| SecretKey::from_seed(cluster.secrets.enclave(ReplicaId(i as u32), CompartmentKind::Execution).seed()))
        .collect();
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
    let workload = Workload {
        clients: opts.clients,
        outstanding: opts.outstanding,
        payload: opts.payload,
        mix: OpMix::PutGet,
        stop: Stop::Requests(opts.requests),
        progress: opts.progress,
        record_completion_times: opts.crash_primary_after_ms.is_some(),
    };
    let outcome = workload::run(&cluster, &workload).await?;
    let (started, seconds, done_at) = (outcome.started, outcome.seconds, &outcome.completion_times);
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
    let final_view =
        running.iter().filter_map(|r| r.enclaves.first().cloned().flatten()).map(|s| s.view).max().unwrap_or(0);
    let view_changes = running.iter().map(|r| r.broker_counter(Counter::ViewsEntered)).max().unwrap_or(0);
    let rejected_inputs = reports
        .iter()
        .flat_map(|r| r.broker.iter().chain(r.enclaves.iter().flatten().flat_map(|s| s.counters.iter())))
        .filter(|(name, _)| is_rejection(name))
        .map(|(_, v)| v)
        .sum();
    let (mut ledger_blocks_written, mut ledger_common_blocks, mut ledger_head) = (None, None, None);
    if opts.app == AppKind::Ledger
        && let Some(dir) = &data_dir
    {
        ledger_blocks_written = Some(reports.iter().map(|r| r.broker_counter(Counter::LedgerRecordsWritten)).sum());
        let dirs: Vec<PathBuf> = (0..opts.replicas).map(|i| replica_data_dir(dir, ReplicaId(i as u32))).collect();
        let replicas: Vec<(ReplicaId, &SecretKey, &Path)> =
            (0..opts.replicas).map(|i| (ReplicaId(i as u32), &execution_keys[i], dirs[i].as_path())).collect();
        let verified = crate::ledger::verify_replicas(cluster_id, &replicas)
            .with_context(|| format!("verifying the ledger in {}", dir.display()))?;
        ledger_common_blocks = Some(verified.common_heights);
        ledger_head = verified.chains.iter().max_by_key(|(_, c)| c.head_height).and_then(|(_, c)| c.head_hash.clone());
    }
    // A key-value run's own temporary state directory has served its purpose (the ledger's
    // is kept: its summary names it for `ledger verify`).
    let data_dir = match data_dir {
        Some(dir) if opts.app == AppKind::Kv && opts.data_dir.is_none() => {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the demo's temporary data directory");
            }
            None
        }
        other => other,
    };
    let completed = outcome.completed;
    let state_commits: u64 = reports.iter().map(|r| r.broker_counter(Counter::StateCommits)).sum();
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
        errors: outcome.errors,
        seconds,
        throughput_ops_s: completed as f64 / seconds,
        p50_us: outcome.latencies.value_at_quantile(0.5),
        p99_us: outcome.latencies.value_at_quantile(0.99),
        avg_batch: crate::bench::average_batch(&reports),
        process_crossings: (opts.backend == Backend::Process).then(|| {
            let sum = |field| {
                reports.iter().flat_map(|r| CompartmentKind::ALL.map(|k| r.process_figure(k, field))).sum::<u64>()
            };
            (sum(splitbft_broker::ProcessField::Crossings), sum(splitbft_broker::ProcessField::Inputs))
        }),
        retransmissions: outcome.retransmissions,
        rejected_inputs,
        final_view,
        view_changes,
        crash_at_ms,
        stall_ms,
        recovery_ms,
        data_dir: data_dir.map(|d| d.display().to_string()),
        durable,
        state_commits,
        state_rounds: reports.iter().map(|r| r.broker_counter(Counter::StateRoundsCommitted)).sum(),
        fsyncs_per_batch: fsyncs_per_batch(&reports),
        ledger_blocks_written,
        ledger_common_blocks,
        ledger_head,
    })
}

/// Log `fdatasync`s, over every replica.
pub(crate) fn fsyncs(reports: &[NodeReport]) -> u64 {
    reports.iter().map(|r| r.broker_counter(Counter::StateCommits)).sum()
}

/// Log `fdatasync`s per batch ordered, over every replica.
pub(crate) fn fsyncs_per_batch(reports: &[NodeReport]) -> f64 {
    fsyncs(reports) as f64
        / reports.iter().map(|r| r.broker_counter(Counter::BatchesOrdered)).sum::<u64>().max(1) as f64
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
    if let Some((crossings, inputs)) = s.process_crossings {
        println!(
            "  crossings    {crossings} into compartment processes, {:.1} inputs each",
            inputs as f64 / crossings.max(1) as f64
        );
    }
    println!("  retransmits  {}, rejected inputs {}", s.retransmissions, s.rejected_inputs);
    println!("  views        final view {}, {} view change(s)", s.final_view, s.view_changes);
    if s.durable {
        println!(
            "  durable      sealed state fsync'd before outputs leave: {} group commits for {} rounds ({:.0}/s over all replicas, {:.2} per batch) in {}",
            s.state_commits,
            s.state_rounds,
            s.state_commits as f64 / s.seconds,
            s.fsyncs_per_batch,
            s.data_dir.as_deref().unwrap_or("temporary directories (removed)"),
        );
    } else {
        println!("  durable      off (--no-durable): a restarted replica starts from genesis");
    }
    if let (Some(dir), Some(written), Some(common)) = (&s.data_dir, s.ledger_blocks_written, s.ledger_common_blocks) {
        println!(
            "  ledger       {written} sealed blocks written in {dir}; chains verified, {common} heights on every replica"
        );
    }
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
