//! `splitbft enclave`: one compartment as its own sandboxed process (SPEC §5.1 `process`
//! backend), and the launcher with which a replica's broker starts three of them.
//!
//! The compartment process reads `cluster.toml` and its own key file (Execution: also the
//! group secret) itself, then sandboxes itself (`splitbft_enclave::sandbox`) before its first
//! input. The broker passes only paths: it never opens or maps a compartment secret. With
//! durable state (`--durable`, SPEC §10) the broker's first crossing is the compartment's
//! sealed records, which only this process's key opens.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use splitbft_enclave::process::ProcessLauncher;
use splitbft_enclave::sandbox::{Probe, serve_stdio};
use splitbft_types::{CompartmentKind, ReplicaId};

use splitbft_types::msg::Digest;

use crate::clusterfile::{ClusterFile, enclave_key_path, group_key_path, read_group_key, read_key};

/// The software measurement of an Execution compartment run from `program` (SPEC §6,
/// software attestation): SHA-256 over a domain tag, the Execution crate's code identity
/// and the bytes of the executable. `keygen` vouches for the binary it runs as; an
/// Execution compartment process measures the binary it actually runs from and refuses to
/// serve under a report for another one. Still software attestation: nothing but this
/// code checks it, and root on the host can swap both.
pub fn executable_measurement(program: &Path) -> anyhow::Result<Digest> {
    let bytes = std::fs::read(program).with_context(|| format!("measuring {}", program.display()))?;
    let identity = splitbft_execution::CODE_IDENTITY.measurement();
    let mut input = b"splitbft/v1/executable-measurement".to_vec();
    input.extend_from_slice(&identity.0);
    input.extend_from_slice(&Digest::of(&bytes).0);
    Ok(Digest::of(&input))
}

/// Environment variable naming the program to run as `PROGRAM enclave …` (default: this
/// executable). Test harnesses whose executable is not `splitbft` set it.
pub const ENCLAVE_PROGRAM_ENV: &str = "SPLITBFT_ENCLAVE_PROGRAM";

/// Arguments of `splitbft enclave`.
#[derive(clap::Args, Debug)]
pub struct EnclaveArgs {
    /// Path of cluster.toml (the key files are read from keys/ beside it).
    #[arg(long)]
    pub config: PathBuf,
    /// Replica id.
    #[arg(long)]
    pub id: u32,
    /// Which compartment.
    #[arg(long, value_parser = parse_kind)]
    pub kind: CompartmentKind,
    /// Replicated application (Preparation and Confirmation need its genesis checkpoint).
    #[arg(long, value_enum, default_value = "kv")]
    pub app: crate::AppKind,
    /// How many times this compartment was started before (0: first start). Without
    /// `--durable` a restarted compartment starts from its configuration, behind the
    /// recovery fence, and catches up (SPEC §4.3, §10).
    #[arg(long, default_value_t = 0)]
    pub incarnation: u64,
    /// Durable state (SPEC §10): the first crossing on stdin is this compartment's sealed
    /// records and counter value; it restores from them (whatever its incarnation) and
    /// seals its state as outputs from then on.
    #[arg(long)]
    pub durable: bool,
    /// Test only: try this forbidden system call (socket or open) after the first crossing,
    /// to show the kernel kills the process.
    #[arg(long, hide = true)]
    pub test_probe: Option<Probe>,
}

/// Parses a compartment name.
pub fn parse_kind(s: &str) -> Result<CompartmentKind, String> {
    CompartmentKind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("unknown compartment {s:?} (preparation, confirmation or execution)"))
}

/// Runs one compartment process: load configuration and key, sandbox, serve stdin/stdout.
/// Must run before any other thread exists (the sandbox restricts the calling thread and
/// seccomp is synchronised to all threads, but a runtime's threads would need syscalls the
/// filter forbids).
pub fn run(args: &EnclaveArgs) -> anyhow::Result<()> {
    let file = ClusterFile::load(&args.config)?;
    let protocol = file.protocol(&args.config)?;
    let me = ReplicaId(args.id);
    let Some(public) = protocol.replicas.get(args.id as usize) else {
        bail!("replica id {} is not in {}", args.id, args.config.display());
    };
    let dir = args.config.parent().map(Path::to_owned).unwrap_or_default();
    let expected = match args.kind {
        CompartmentKind::Preparation => &public.preparation,
        CompartmentKind::Confirmation => &public.confirmation,
        CompartmentKind::Execution => &public.execution,
    };
    let key = read_key(&enclave_key_path(&dir, me, args.kind), expected)?;
    let group = match args.kind {
        CompartmentKind::Execution => {
            // Its report (in cluster.toml) vouches for one binary: serve only from that one.
            let running = executable_measurement(Path::new("/proc/self/exe"))?;
            let (_, expected) = file.attestation(&args.config)?;
            if running != expected.measurement {
                bail!(
                    "this executable measures {} but the Execution enclaves are attested for {}: \
                     rerun keygen with this binary",
                    hex::encode(running.0),
                    hex::encode(expected.measurement.0)
                );
            }
            Some(read_group_key(&group_key_path(&dir, me), &protocol.execution_group_key)?)
        }
        _ => None,
    };
    let app = args.app.build()?;
    if args.durable {
        // SPEC §10: the broker's start crossing carries the sealed records; only this
        // process's key opens them. Restored state is as fresh as the host's storage; a
        // compartment without state (or with state below the counter) fences itself.
        let items = splitbft_enclave::sandbox::read_first_crossing().context("reading the start crossing")?;
        let start = splitbft_enclave::process::decode_start(&items)?;
        let (mut compartment, replay) =
            splitbft_enclave::restore_compartment(args.kind, &protocol, me, key, group, app, &start)
                .context("restoring the compartment from its sealed state")?;
        tracing::info!(
            kind = %args.kind, replica = args.id, incarnation = args.incarnation,
            records = start.records.len(), "compartment restored from its sealed state"
        );
        serve_stdio(compartment.as_mut(), args.test_probe, replay)
            .with_context(|| format!("{} compartment", args.kind))?;
        return Ok(());
    }
    let build = if args.incarnation > 0 {
        tracing::warn!(
            kind = %args.kind, replica = args.id, incarnation = args.incarnation,
            "compartment restarted from its configuration: behind the recovery fence (SPEC §10), \
             catching up through checkpoints and state transfer"
        );
        splitbft_enclave::build_restarted_compartment
    } else {
        splitbft_enclave::build_compartment
    };
    let mut compartment = build(args.kind, &protocol, me, key, group, app).context("building the compartment")?;
    serve_stdio(compartment.as_mut(), args.test_probe, Vec::new())
        .with_context(|| format!("{} compartment", args.kind))?;
    Ok(())
}

/// The program compartment processes run: [`ENCLAVE_PROGRAM_ENV`] or this executable.
pub fn enclave_program() -> anyhow::Result<PathBuf> {
    match std::env::var_os(ENCLAVE_PROGRAM_ENV) {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().context("locating this executable to start compartment processes"),
    }
}

/// A launcher that runs `PROGRAM enclave --config CONFIG --id ID --kind K --app APP` for
/// replica `id` (with `--durable` if `durable`: the broker then sends each process its
/// sealed state first). `probes` (tests only) are passed to a compartment's first start.
pub fn launcher(
    config: &Path,
    id: ReplicaId,
    app: crate::AppKind,
    durable: bool,
    probes: Vec<(CompartmentKind, Probe)>,
) -> anyhow::Result<ProcessLauncher> {
    let config = std::path::absolute(config).context("resolving the cluster file path")?;
    let program = enclave_program()?;
    let args = move |kind: CompartmentKind, incarnation: u64| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "enclave".into(),
            "--config".into(),
            config.clone().into_os_string(),
            "--id".into(),
            id.0.to_string().into(),
            "--kind".into(),
            kind.name().into(),
            "--app".into(),
            app.name().into(),
            "--incarnation".into(),
            incarnation.to_string().into(),
        ];
        if durable {
            args.push("--durable".into());
        }
        if incarnation == 0
            && let Some((_, probe)) = probes.iter().find(|(k, _)| *k == kind)
        {
            args.push("--test-probe".into());
            args.push(
                match probe {
                    Probe::Socket => "socket",
                    Probe::Open => "open",
                }
                .into(),
            );
        }
        args
    };
    Ok(ProcessLauncher { program, args: Arc::new(args) })
}

/// Parses `KIND:PROBE` (e.g. `preparation:socket`).
pub fn parse_probe(s: &str) -> Result<(CompartmentKind, Probe), String> {
    let (kind, probe) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected KIND:PROBE"))?;
    Ok((parse_kind(kind)?, probe.parse()?))
}
