//! `splitbft`: Byzantine fault-tolerant replication with compartmentalised replicas.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod sim_sweep;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use splitbft::clusterfile::{
    ClusterFile, client_key_path, enclave_key_path, group_key_path, read_group_key, read_key, write_group_key,
    write_key,
};
use splitbft::demo::{self, DemoOptions};
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_broker::{NodeConfig, spawn_node};
use splitbft_client::{Client, ClientOptions, verify_attestation};
use splitbft_enclave::{Backend, ReplicaSecrets};
use splitbft_types::attest::SoftwarePlatform;
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
    #[command(subcommand)]
    command: Command,
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
        /// Directory for this replica's sealed ledger blocks (`ledger.blocks`); required
        /// with `--app ledger`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
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
    /// Address the replicas listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of replica 0; replica i listens on base-port + i.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
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
    /// List keys starting with PREFIX.
    Scan {
        prefix: String,
        /// At most this many entries (0 = the server's maximum).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        Command::Replica { config, id, backend, app, data_dir } => replica(&config, id, backend, app, data_dir).await,
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
        base_port,
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
    let addresses = (0..replicas)
        .map(|i| {
            let port = base_port.checked_add(i as u16).context("--base-port too high for this many replicas")?;
            Ok(SocketAddr::new(host, port))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Software attestation (SPEC §6): keygen is the "platform". It signs one report per
    // Execution enclave for the Execution code linked into this binary, then forgets its key.
    let platform = SoftwarePlatform::new(cluster_id, SecretKey::from_seed(splitbft::os_seed()));
    let measurement = splitbft_execution::CODE_IDENTITY.measurement();
    let file = ClusterFile::new(&secrets, addresses, batch_timeout_ms, &platform, measurement);
    for r in 0..replicas {
        let replica = ReplicaId(r as u32);
        for kind in CompartmentKind::ALL {
            write_key(&enclave_key_path(out, replica, kind), secrets.enclave(replica, kind))?;
        }
        write_group_key(&group_key_path(out, replica), &secrets.execution_group)?;
    }
    for (c, key) in secrets.clients.iter().enumerate() {
        write_key(&client_key_path(out, ClientId(c as u32)), key)?;
    }
    let path = out.join("cluster.toml");
    file.save(&path)?;
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

async fn replica(
    config_path: &Path,
    id: u32,
    backend: Backend,
    app: splitbft::AppKind,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    if app == splitbft::AppKind::Ledger && data_dir.is_none() {
        bail!("--app ledger needs --data-dir: the replica appends its sealed blocks there");
    }
    let file = ClusterFile::load(config_path)?;
    let protocol = file.protocol(config_path)?;
    let me = ReplicaId(id);
    let Some(entry) = file.replicas.get(id as usize) else {
        bail!("replica id {id} is not in {} ({} replicas)", config_path.display(), file.replicas.len());
    };
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
    let listener = tokio::net::TcpListener::bind(entry.address)
        .await
        .with_context(|| format!("listening on {}", entry.address))?;
    let mut node_config = NodeConfig::new(protocol, me, file.addresses(), backend);
    node_config.options.batch_timeout_us = file.batch_timeout_ms * 1000;
    node_config.data_dir = data_dir;
    let node = spawn_node(node_config, listener, secrets, app.build()?).await?;
    eprintln!("replica {id} listening on {} ({backend} backend); SIGINT or SIGTERM stops it", entry.address);
    wait_for_signal().await?;
    let report = node.shutdown().await;
    let view = report.enclaves.first().cloned().flatten().map_or(0, |s| s.view);
    eprintln!(
        "replica {id} stopped: view {view}, {} requests ordered, {} executed, {} state transfers",
        report.broker_counter("requests_ordered"),
        report.broker_counter("requests_executed"),
        report.broker_counter("state_transfers_completed"),
    );
    if app == splitbft::AppKind::Ledger {
        eprintln!(
            "replica {id}: {} ledger blocks written, {} write errors",
            report.broker_counter("ledger_records_written"),
            report.broker_counter("ledger_write_errors") + report.broker_counter("ledger_flush_errors"),
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

async fn client(config_path: &Path, client_id: u32, timeout_s: u64, op: ClientOp) -> anyhow::Result<()> {
    let file = ClusterFile::load(config_path)?;
    let protocol = file.protocol(config_path)?;
    let id = ClientId(client_id);
    let Some(public) = protocol.clients.get(client_id as usize) else {
        bail!("client id {client_id} is not in {} ({} clients)", config_path.display(), protocol.clients.len());
    };
    let secret = read_key(&client_key_path(&config_dir(config_path), id), public)?;
    let options =
        ClientOptions { request_timeout: std::time::Duration::from_secs(timeout_s), ..ClientOptions::default() };
    let (verifier, expected) = file.attestation(config_path)?;
    // Every Execution enclave's report is checked before the session key leaves (SPEC §6).
    let attested = verify_attestation(&protocol, &verifier, &expected)?;
    let client = Client::connect(protocol, file.addresses(), id, secret, options).await?;
    client.register(attested).await.context("registering a session")?;
    let op = match op {
        ClientOp::Put { key, value } => KvOp::Put { key: key.into_bytes(), value: value.into_bytes() },
        ClientOp::Get { key } => KvOp::Get { key: key.into_bytes() },
        ClientOp::Delete { key } => KvOp::Delete { key: key.into_bytes() },
        ClientOp::Scan { prefix, limit } => KvOp::Scan { prefix: prefix.into_bytes(), limit },
    };
    let result =
        KvResult::decode(&client.invoke(op.encode()).await?).context("the cluster returned an undecodable result")?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match result {
        KvResult::Value(Some(v)) => println!("{}", text(&v)),
        KvResult::Value(None) => bail!("key not found"),
        KvResult::Stored { previous } => {
            println!("OK{}", previous.map(|p| format!(" (was {})", text(&p))).unwrap_or_default())
        }
        KvResult::Deleted { previous: Some(p) } => println!("deleted (was {})", text(&p)),
        KvResult::Deleted { previous: None } => println!("deleted (was absent)"),
        KvResult::Cas { swapped, .. } => println!("{}", if swapped { "swapped" } else { "not swapped" }),
        KvResult::Entries(entries) => {
            for (k, v) in entries {
                println!("{}\t{}", text(&k), text(&v));
            }
        }
        KvResult::Error(e) => bail!("the cluster refused the operation: {e}"),
    }
    Ok(())
}
