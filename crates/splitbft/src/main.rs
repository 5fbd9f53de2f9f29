//! `splitbft`: Byzantine fault-tolerant replication with compartmentalised replicas.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod sim_sweep;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use splitbft::clusterfile::{
    ClusterFile, client_key_path, enclave_key_path, group_key_path, read_group_key, read_key, read_transport_key,
    transport_key_path, write_group_key, write_key, write_transport_key,
};
use splitbft::demo::{self, DemoOptions};
use splitbft::hostport::HostPort;
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_broker::{NodeConfig, ProcessField, spawn_node};
use splitbft_client::{Client, ClientOptions};
use splitbft_enclave::{Backend, ReplicaSecrets};
use splitbft_types::attest::SoftwarePlatform;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};

#[derive(Parser)]
#[command(
    name = "splitbft",
    version,
    about = "SplitBFT: PBFT with replicas split into Preparation, Confirmation and Execution compartments"
)]
struct Cli {
    /// Log line format on stderr (the level comes from RUST_LOG, default warn; per-view
    /// and per-sequence-number spans are at debug).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a cluster: DIR/cluster.toml plus one key file per enclave and client.
    Keygen(KeygenArgs),
    /// Run one replica (broker + its three compartments) until SIGINT/SIGTERM.
    Replica {
        /// Path of cluster.toml (key files are read from keys/ beside it).
        #[arg(long)]
        config: PathBuf,
        /// Replica id.
        #[arg(long)]
        id: u32,
        /// Compartment hosting.
        #[arg(long, default_value = "thread")]
        backend: Backend,
        /// Replicated application (every replica of a cluster must run the same one).
        #[arg(long, value_enum, default_value = "kv")]
        app: splitbft::AppKind,
        /// This replica's data directory: sealed compartment state (SPEC §10) and ledger
        /// blocks (`ledger.blocks`). Default: `<directory of --config>/data/replica-<id>`.
        /// Locked: a second process on it is refused.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep no sealed compartment state: a restarted replica starts from genesis (the
        /// comparison for measurements; ledger blocks still go to `--data-dir` if given).
        #[arg(long)]
        no_durable: bool,
        /// Test only (process backend): KIND:PROBE makes that compartment's first process
        /// try a forbidden system call (socket or open) after its first input.
        #[arg(long, hide = true, value_parser = splitbft::compartment::parse_probe)]
        test_probe: Vec<(CompartmentKind, splitbft_enclave::sandbox::Probe)>,
        /// Serve /metrics and /healthz here (default: this replica's `metrics` in cluster.toml).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Bind this address instead of the advertised one in cluster.toml (e.g. 0.0.0.0:7400
        /// behind NAT); peers and clients still dial the advertised address.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Serve the replicated key-value store to Redis clients (RESP2/RESP3).
    Gateway {
        /// Path of cluster.toml (client keys are read from keys/ beside it).
        #[arg(long)]
        config: PathBuf,
        /// Address Redis clients connect to.
        #[arg(long, default_value = "127.0.0.1:6379")]
        listen: SocketAddr,
        /// Serve the gateway's /metrics and /healthz here.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// First client identity; sessions use ids C, C+1, ...
        #[arg(long, default_value_t = 0)]
        client_id: u32,
        /// Cluster sessions to spread commands over (each keeps up to W requests in flight).
        #[arg(long, default_value_t = 4)]
        sessions: u32,
        /// A command's cluster requests give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
    /// Print every replica's view, last executed, stable checkpoint and health.
    Status {
        /// Path of cluster.toml (replicas' `metrics` addresses are scraped).
        #[arg(long)]
        config: PathBuf,
        /// Print one JSON object per replica instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one compartment as a sandboxed process (started by `replica --backend process`).
    #[command(hide = true)]
    Enclave(splitbft::compartment::EnclaveArgs),
    /// Run one key-value operation against a running cluster.
    Client {
        /// Path of cluster.toml (the client key is read from keys/ beside it).
        #[arg(long)]
        config: PathBuf,
        /// Client identity to use.
        #[arg(long, default_value_t = 0)]
        client_id: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        #[command(subcommand)]
        op: ClientOp,
    },
    /// Run seeds of the deterministic simulator and check safety and liveness.
    Sim(sim_sweep::SimArgs),
    /// Inspect the sealed ledger blocks replicas wrote (SPEC §7).
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Start a local cluster in this process and run a closed-loop KV workload.
    Demo {
        #[command(flatten)]
        options: DemoOptions,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Run the paper's experiment matrix against SplitBFT and the PBFT baseline: writes
    /// results.csv, summary.json and PNG plots to OUT/<UTC timestamp>/.
    Bench(splitbft::bench::BenchArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Number of replicas (3f + 1).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Number of client identities.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Host the replicas listen on (an IP address or a DNS name).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// One host per replica, IP addresses or DNS names (replica i on the i-th, every one at --base-port): a
    /// cluster across hosts. Writes one directory per replica (DIR/replica-I: cluster.toml
    /// and only that replica's keys) and DIR/clients (cluster.toml and the client keys).
    #[arg(long, value_delimiter = ',', conflicts_with = "host")]
    hosts: Vec<String>,
    /// Port of replica 0; replica i listens on base-port + i.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Give replica i a metrics address (same host, this port + i) in cluster.toml.
    #[arg(long)]
    metrics_base_port: Option<u16>,
    /// Batch size B.
    #[arg(long, default_value_t = 200)]
    batch: u32,
    /// Batch timeout in milliseconds.
    #[arg(long, default_value_t = 10)]
    batch_timeout_ms: u64,
    /// Checkpoint interval K (the log window L is 2K).
    #[arg(long, default_value_t = splitbft_types::config::DEFAULT_CHECKPOINT_INTERVAL)]
    checkpoint_interval: u64,
    /// Ops and results in clear (still authenticated under session keys): for baselines
    /// and debugging (SPEC §6).
    #[arg(long)]
    no_confidential: bool,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Decrypt and walk replicas' block chains; check links, heights and agreement.
    Verify {
        /// Path of cluster.toml; each replica's Execution key is read from keys/ beside it.
        #[arg(long)]
        config: PathBuf,
        /// Replica whose chain to check (repeat, pairing each with a --data-dir).
        #[arg(long = "replica", required = true)]
        replicas: Vec<u32>,
        /// That replica's data directory (holding ledger.blocks), in --replica order.
        #[arg(long = "data-dir", required = true)]
        data_dirs: Vec<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ClientOp {
    /// Store VALUE under KEY.
    Put { key: String, value: String },
    /// Print the value under KEY.
    Get { key: String },
    /// Remove KEY.
    Delete { key: String },
    /// Add BY (default 1) to the decimal integer under KEY, atomically; print the sum.
    Incr {
        key: String,
        /// The amount to add (may be negative).
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
    /// List keys starting with PREFIX, page by page (SPEC §11: a page is bounded in entries
    /// and bytes; the next page starts at the key the last one names).
    Scan {
        prefix: String,
        /// At most this many entries in all (0 = every matching entry).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A compartment process sandboxes itself single-threaded: before any runtime exists.
    if let Command::Enclave(args) = &cli.command {
        return match splitbft::compartment::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(true).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen(args) => keygen(args),
        Command::Replica { config, id, backend, app, data_dir, no_durable, test_probe, metrics, listen } => {
            replica(&config, id, backend, app, data_dir, !no_durable, test_probe, metrics, listen).await
        }
        Command::Enclave(_) => unreachable!("handled before the runtime starts"),
        Command::Gateway { config, listen, metrics, client_id, sessions, timeout_s } => {
            gateway(&config, listen, metrics, client_id, sessions, timeout_s).await
        }
        Command::Status { config, json } => status(&config, json).await,
        Command::Ledger(LedgerCommand::Verify { config, replicas, data_dirs, json }) => {
            ledger_verify(&config, &replicas, &data_dirs, json)
        }
        Command::Client { config, client_id, timeout_s, op } => client(&config, client_id, timeout_s, op).await,
        Command::Sim(args) => sim_sweep::sim(args),
        Command::Demo { mut options, json } => {
            options.progress = !json && demo::stderr_is_terminal();
            let summary = demo::run(options).await?;
            demo::print_summary(&summary);
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            if summary.errors > 0 {
                bail!("{} requests failed", summary.errors);
            }
            Ok(())
        }
        Command::Bench(args) => {
            let summary = splitbft::bench::run(&args).await?;
            splitbft::bench::print_table(&summary);
            if args.json {
                println!("{}", summary.json_line());
            }
            if summary.failed > 0 {
                bail!(
                    "{} of {} points failed (see the skipped column of results.csv)",
                    summary.failed,
                    summary.points.len()
                );
            }
            Ok(())
        }
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let KeygenArgs {
        replicas,
        clients,
        out,
        host,
        hosts,
        base_port,
        metrics_base_port,
        batch,
        batch_timeout_ms,
        checkpoint_interval,
        no_confidential,
    } = args;
    let out = out.as_path();
    let f = splitbft::fault_threshold(replicas)?;
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    let cluster_id = u64::from_le_bytes(splitbft::os_seed()[..8].try_into()?);
    let mut secrets = ClusterSecrets::generate(cluster_id, f, clients, splitbft::os_seed);
    secrets.config.max_batch = batch.max(1);
    if checkpoint_interval == 0 {
        bail!("--checkpoint-interval must be at least 1");
    }
    secrets.config.checkpoint_interval = checkpoint_interval;
    secrets.config.log_window = 2 * checkpoint_interval;
    secrets.config.confidential = !no_confidential;
    if !hosts.is_empty() && hosts.len() != replicas {
        bail!("--hosts names {} addresses for {replicas} replicas: give one per replica", hosts.len());
    }
    // One host per replica: every replica uses the same ports on its own host.
    let host_of = |i: usize| if hosts.is_empty() { (host.as_str(), i as u16) } else { (hosts[i].as_str(), 0) };
    let addresses = (0..replicas)
        .map(|i| {
            let (host, offset) = host_of(i);
            let port = base_port.checked_add(offset).context("--base-port too high for this many replicas")?;
            Ok(HostPort::new(host, port)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Software attestation (SPEC §6): keygen is the "platform". It signs one report per
    // Execution enclave for the Execution code linked into this binary, then forgets its key.
    let platform = SoftwarePlatform::new(cluster_id, SecretKey::from_seed(splitbft::os_seed()));
    // The measurement covers this executable: `replica --backend process` checks that its
    // Execution processes run this very binary.
    let measurement = splitbft::compartment::executable_measurement(&std::env::current_exe()?)?;
    let mut file = ClusterFile::new(&secrets, addresses, batch_timeout_ms, &platform, measurement);
    if let Some(port) = metrics_base_port {
        for (i, entry) in file.replicas.iter_mut().enumerate() {
            let (host, offset) = host_of(i);
            let port = port.checked_add(offset).context("--metrics-base-port too high for this many replicas")?;
            entry.metrics = Some(HostPort::new(host, port)?);
        }
    }
    // With --hosts each host gets a directory holding only its own secrets.
    let per_host = !hosts.is_empty();
    let replica_dir = |r: usize| if per_host { out.join(format!("replica-{r}")) } else { out.to_owned() };
    let clients_dir = if per_host { out.join("clients") } else { out.to_owned() };
    for r in 0..replicas {
        let replica = ReplicaId(r as u32);
        let dir = replica_dir(r);
        for kind in CompartmentKind::ALL {
            write_key(&enclave_key_path(&dir, replica, kind), secrets.enclave(replica, kind))?;
        }
        write_group_key(&group_key_path(&dir, replica), &secrets.execution_group)?;
        write_transport_key(&transport_key_path(&dir, replica), &secrets.transport[r])?;
        if per_host {
            file.save(&dir.join("cluster.toml"))?;
        }
    }
    for (c, key) in secrets.clients.iter().enumerate() {
        write_key(&client_key_path(&clients_dir, ClientId(c as u32)), key)?;
    }
    let path = clients_dir.join("cluster.toml");
    file.save(&path)?;
    if per_host {
        println!(
            "one directory per host: {}/replica-I (copy it to replica I's host), {} for clients",
            out.display(),
            clients_dir.display()
        );
    }
    println!(
        "wrote {} ({replicas} replicas, f = {f}, {clients} clients, confidential = {}) and keys in {}",
        path.display(),
        !no_confidential,
        out.join("keys").display()
    );
    println!(
        "attestation: software attestation (no TEE): {replicas} Execution reports signed by a provisioning key, \
         which was then discarded; measurement {}",
        hex::encode(measurement.0)
    );
    Ok(())
}

fn config_dir(config: &Path) -> PathBuf {
    config.parent().map(Path::to_owned).unwrap_or_default()
}

// The flags of `splitbft replica`, one argument each, as clap parsed them.
#[allow(clippy::too_many_arguments)]
async fn replica(
    config_path: &Path,
    id: u32,
    backend: Backend,
    app: splitbft::AppKind,
    data_dir: Option<PathBuf>,
    durable: bool,
    test_probe: Vec<(CompartmentKind, splitbft_enclave::sandbox::Probe)>,
    metrics: Option<SocketAddr>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let data_dir = match data_dir {
        Some(dir) => Some(dir),
        None if durable => Some(config_dir(config_path).join("data").join(format!("replica-{id}"))),
        None => None,
    };
    if app == splitbft::AppKind::Ledger && data_dir.is_none() {
        bail!("--app ledger needs --data-dir: the replica appends its sealed blocks there");
    }
    let file = ClusterFile::load(config_path)?;
    let protocol = file.protocol(config_path)?;
    let me = ReplicaId(id);
    let Some(entry) = file.replicas.get(id as usize) else {
        bail!("replica id {id} is not in {} ({} replicas)", config_path.display(), file.replicas.len());
    };
    let addresses = file.addresses()?;
    let bind = listen.unwrap_or(addresses[id as usize]);
    let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("listening on {bind}"))?;
    let transport =
        read_transport_key(&transport_key_path(&config_dir(config_path), me), &protocol.transport_keys[id as usize])?;
    let mut node_config = NodeConfig::new(protocol.clone(), me, addresses, backend, transport);
    node_config.options.batch_timeout_us = file.batch_timeout_ms * 1000;
    node_config.data_dir = data_dir.clone();
    node_config.durable = durable;
    app.check_limits(&protocol, node_config.max_frame_bytes)?;
    let node = if backend == Backend::Process {
        // Each compartment process reads its own key: this process never opens one.
        let launcher = splitbft::compartment::launcher(config_path, me, app, durable, test_probe)?;
        splitbft_broker::spawn_node_processes(node_config, listener, launcher).await?
    } else {
        if !test_probe.is_empty() {
            bail!("--test-probe needs --backend process");
        }
        let dir = config_dir(config_path);
        let keys = &protocol.replicas[id as usize];
        let secrets = ReplicaSecrets {
            keys: [
                read_key(&enclave_key_path(&dir, me, CompartmentKind::Preparation), &keys.preparation)?,
                read_key(&enclave_key_path(&dir, me, CompartmentKind::Confirmation), &keys.confirmation)?,
                read_key(&enclave_key_path(&dir, me, CompartmentKind::Execution), &keys.execution)?,
            ],
            execution_group: read_group_key(&group_key_path(&dir, me), &protocol.execution_group_key)?,
        };
        spawn_node(node_config, listener, secrets, app.build()?).await?
    };
    let metrics = match (metrics, &entry.metrics) {
        (Some(addr), _) => Some(addr),
        (None, Some(hp)) => Some(hp.resolve().with_context(|| format!("replica {id} metrics address {hp}"))?),
        (None, None) => None,
    };
    let metrics_task = match metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            eprintln!("replica {id} serving /metrics and /healthz on {addr}");
            Some(tokio::spawn(splitbft::metrics::serve_replica(listener, node.reporter(), id)))
        }
        None => None,
    };
    eprintln!(
        "replica {id} listening on {bind}, advertised as {} ({backend} backend); SIGINT or SIGTERM stops it",
        entry.address
    );
    match (&data_dir, durable) {
        (Some(dir), true) => {
            eprintln!("replica {id}: durable state in {} (software monotonic counter: trusts the host)", dir.display())
        }
        _ => eprintln!("replica {id}: no durable state (--no-durable): a restart begins from genesis"),
    }
    wait_for_signal().await?;
    if let Some(task) = metrics_task {
        task.abort();
    }
    let report = node.shutdown().await;
    let view = report.enclaves.first().cloned().flatten().map_or(0, |s| s.view);
    eprintln!(
        "replica {id} stopped: view {view}, {} requests ordered, {} executed, {} state transfers",
        report.broker_counter(Counter::RequestsOrdered),
        report.broker_counter(Counter::RequestsExecuted),
        report.broker_counter(Counter::StateTransfersCompleted),
    );
    eprintln!(
        "replica {id}: {} bytes of sealed state read from disk on start, {} bytes fetched by state transfer, {} state commits",
        report.broker_counter(Counter::StateRecoveredBytes),
        report.broker_counter(Counter::StateTransferBytes),
        report.broker_counter(Counter::StateCommits),
    );
    if backend == Backend::Process {
        eprintln!(
            "replica {id}: {} compartment process restarts ({} seccomp kills)",
            report.broker_counter(Counter::EnclaveRestarts),
            CompartmentKind::ALL.iter().map(|k| report.process_figure(*k, ProcessField::SeccompKills)).sum::<u64>(),
        );
    }
    if app == splitbft::AppKind::Ledger {
        eprintln!(
            "replica {id}: {} ledger blocks written, {} write errors",
            report.broker_counter(Counter::LedgerRecordsWritten),
            [Counter::LedgerWriteErrors, Counter::LedgerFlushErrors, Counter::LedgerSyncErrors]
                .map(|c| report.broker_counter(c))
                .iter()
                .sum::<u64>(),
        );
    }
    Ok(())
}

fn ledger_verify(config_path: &Path, replicas: &[u32], data_dirs: &[PathBuf], json: bool) -> anyhow::Result<()> {
    if replicas.len() != data_dirs.len() {
        bail!("give one --data-dir per --replica ({} replicas, {} data dirs)", replicas.len(), data_dirs.len());
    }
    let file = ClusterFile::load(config_path)?;
    let protocol = file.protocol(config_path)?;
    let dir = config_dir(config_path);
    let mut keys = Vec::new();
    for &id in replicas {
        let Some(public) = protocol.replicas.get(id as usize) else {
            bail!("replica id {id} is not in {} ({} replicas)", config_path.display(), protocol.replicas.len());
        };
        let path = enclave_key_path(&dir, ReplicaId(id), CompartmentKind::Execution);
        keys.push(read_key(&path, &public.execution)?);
    }
    let inputs: Vec<(ReplicaId, &splitbft_types::crypto::SecretKey, &Path)> = replicas
        .iter()
        .zip(&keys)
        .zip(data_dirs)
        .map(|((id, key), dir)| (ReplicaId(*id), key, dir.as_path()))
        .collect();
    let report = splitbft::ledger::verify_replicas(protocol.cluster_id, &inputs)?;
    for (id, chain) in &report.chains {
        let head = match (chain.head_height, &chain.head_hash) {
            (Some(h), Some(hash)) => format!("head height {h} hash {hash}"),
            _ => "no blocks".into(),
        };
        println!(
            "replica {id}: {} blocks, {} entries, {head}; {} records, {} byte-identical rewrites",
            chain.blocks, chain.entries, chain.records, chain.repeated
        );
        for (from, to) in &chain.gaps {
            println!(
                "replica {id}: gap: heights {from}..={to} were never written here (skipped by state transfer?); links across it are unchecked"
            );
        }
    }
    if report.chains.len() > 1 {
        println!("chains agree at every common height; {} heights are on every replica", report.common_heights);
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Connects client `client_id` to the cluster of `config_path` and registers a session.
async fn connect_session(config_path: &Path, client_id: u32, options: ClientOptions) -> anyhow::Result<Client> {
    splitbft::clusterfile::connect_client(config_path, client_id, options).await
}

async fn gateway(
    config_path: &Path,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    first_client: u32,
    sessions: u32,
    timeout_s: u64,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    if sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let file = ClusterFile::load(config_path)?;
    let protocol = file.protocol(config_path)?;
    let options = ClientOptions {
        // Each session keeps as many requests in flight as the cluster allows a client (W).
        outstanding: usize::try_from(protocol.client_window).unwrap_or(usize::MAX).min(1024),
        request_timeout: std::time::Duration::from_secs(timeout_s),
        ..ClientOptions::default()
    };
    let ids = first_client..first_client.checked_add(sessions).context("--client-id + --sessions overflows")?;
    let connects = ids.map(|id| connect_session(config_path, id, options.clone()));
    let clients = futures_util::future::try_join_all(connects).await?;
    let gateway = Arc::new(splitbft::gateway::Gateway::new(clients, protocol.n(), protocol.f as usize));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for Redis clients on {listen}"))?;
    let metrics_task = match metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            let gw = Arc::clone(&gateway);
            let handler = move |route| {
                let gw = Arc::clone(&gw);
                async move {
                    use splitbft::http::{OPENMETRICS, Response, Route};
                    match route {
                        Route::Metrics => {
                            gw.metrics.refresh_client(&gw.client_stats());
                            Response { status: 200, content_type: OPENMETRICS, body: gw.metrics.encode() }
                        }
                        Route::Health => Response {
                            status: 200,
                            content_type: "application/json",
                            body: "{\"healthy\":true}\n".into(),
                        },
                    }
                }
            };
            Some(tokio::spawn(splitbft::http::serve(listener, handler, Arc::default())))
        }
        None => None,
    };
    eprintln!("gateway serving Redis clients on {listen} with {sessions} cluster sessions; SIGINT or SIGTERM stops it");
    let serving = tokio::spawn(Arc::clone(&gateway).serve(listener));
    wait_for_signal().await?;
    serving.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    Ok(())
}

async fn status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let file = ClusterFile::load(config_path)?;
    let resolve = |r: &splitbft::clusterfile::ReplicaEntry| {
        let hp = r.metrics.as_ref()?;
        hp.resolve().map_err(|e| eprintln!("replica {} metrics address {hp}: {e}", r.id)).ok()
    };
    let targets: Vec<(u32, Option<SocketAddr>)> = file.replicas.iter().map(|r| (r.id, resolve(r))).collect();
    let rows = splitbft::status::collect(&targets).await;
    if json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        print!("{}", splitbft::status::table(&rows));
    }
    let down = rows.iter().filter(|r| !r.health.as_ref().is_some_and(|h| h.healthy)).count();
    let f = file.f as usize;
    if down > f {
        bail!("{down} replicas are down or unhealthy (more than f = {f}): the cluster cannot make progress");
    }
    Ok(())
}

async fn client(config_path: &Path, client_id: u32, timeout_s: u64, op: ClientOp) -> anyhow::Result<()> {
    let options =
        ClientOptions { request_timeout: std::time::Duration::from_secs(timeout_s), ..ClientOptions::default() };
    let client = connect_session(config_path, client_id, options).await?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let op = match op {
        ClientOp::Put { key, value } => KvOp::Put { key: key.into_bytes(), value: value.into_bytes() },
        ClientOp::Get { key } => KvOp::Get { key: key.into_bytes() },
        ClientOp::Delete { key } => KvOp::Delete { key: key.into_bytes() },
        ClientOp::Incr { key, by } => KvOp::Incr { key: key.into_bytes(), by },
        ClientOp::Scan { prefix, limit } => {
            let mut stream = std::pin::pin!(splitbft::scan(&client, prefix.into_bytes(), limit as usize));
            while let Some(page) = futures_util::StreamExt::next(&mut stream).await {
                for (k, v) in page? {
                    println!("{}\t{}", text(&k), text(&v));
                }
            }
            return Ok(());
        }
    };
    let result =
        KvResult::decode(&client.invoke(op.encode()).await?).context("the cluster returned an undecodable result")?;
    match result {
        KvResult::Value(Some(v)) => println!("{}", text(&v)),
        KvResult::Value(None) => bail!("key not found"),
        KvResult::Stored { previous } => {
            println!("OK{}", previous.map(|p| format!(" (was {})", text(&p))).unwrap_or_default())
        }
        KvResult::Deleted { previous: Some(p) } => println!("deleted (was {})", text(&p)),
        KvResult::Deleted { previous: None } => println!("deleted (was absent)"),
        KvResult::Cas { swapped, .. } => println!("{}", if swapped { "swapped" } else { "not swapped" }),
        KvResult::Incremented { value } => println!("{value}"),
        KvResult::Page { .. } => bail!("the cluster answered a non-scan op with a scan page"),
        KvResult::Error(e) => bail!("the cluster refused the operation: {e}"),
    }
    Ok(())
}
