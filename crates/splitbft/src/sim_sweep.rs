//! `splitbft sim`: sweeps of the deterministic simulator. Seeds run in a worker process
//! (this binary, `sim --worker`) that reports each seed as one JSON line: a seed that
//! makes a compartment allocate without bound aborts the process rather than panicking,
//! and an abort is a finding (a crash of every correct enclave that ran the input), so
//! the supervisor records the seed that was running, and starts a new worker after it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use splitbft_sim::{Protocol, Scenario};

/// Arguments of `splitbft sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Seeds per protocol, scenario and size (default 20, or unlimited with --duration).
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed (seeds S, S+1, ...); replay one run with --seed S --seeds 1.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these scenarios, comma-separated (default: every scenario, `Scenario::DEFAULT`).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Every scenario, including `random` and the named attacks.
    #[arg(long)]
    all_scenarios: bool,
    /// Only this trust model: splitbft or pbft (default: both).
    #[arg(long)]
    protocol: Option<Protocol>,
    /// Cluster sizes, comma-separated: 4, 7, 10 (default 4,7).
    #[arg(long, value_delimiter = ',')]
    replicas: Vec<usize>,
    /// Stop each protocol/scenario/size after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// End with one JSON object per protocol, scenario and size.
    #[arg(long)]
    json: bool,
    /// Simulator only: restarted enclaves start without the recovery fence (SPEC §10), to
    /// show what it prevents (`enclave-restart`, `random`); expect equivocations.
    #[arg(long, hide = true)]
    no_fence: bool,
    /// Internal: run the seeds in this process and print one JSON line per seed.
    #[arg(long, hide = true)]
    worker: bool,
}

/// One seed's outcome as the worker reports it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
struct SeedLine {
    seed: u64,
    safety: Vec<String>,
    validity: Vec<String>,
    liveness: Option<String>,
    faulty_replicas: usize,
    draw: String,
    #[serde(default)]
    start: bool,
}

/// Runs `splitbft sim`.
pub fn sim(args: SimArgs) -> anyhow::Result<()> {
    let scenarios = if args.all_scenarios {
        Scenario::ALL.to_vec()
    } else if args.scenario.is_empty() {
        Scenario::DEFAULT.to_vec()
    } else {
        args.scenario.clone()
    };
    let protocols = args.protocol.map_or_else(|| vec![Protocol::Splitbft, Protocol::Pbft], |p| vec![p]);
    let sizes = if args.replicas.is_empty() { vec![4, 7] } else { args.replicas.clone() };
    for n in &sizes {
        if !splitbft_sim::SIZES.contains(n) {
            bail!("--replicas {n}: the simulator runs 4, 7 or 10 replicas");
        }
    }
    let seeds = args.seeds.unwrap_or(if args.duration.is_some() { u64::MAX } else { 20 });
    if args.worker {
        return worker(&scenarios, &protocols, &sizes, args.seed, seeds, !args.no_fence);
    }
    let mut summaries = Vec::new();
    let mut failed = false;
    for &scenario in &scenarios {
        for &protocol in &protocols {
            for &n in &sizes {
                let f = (n - 1) / 3;
                let started = Instant::now();
                let lines = supervise(scenario, protocol, n, args.seed, seeds, args.duration, !args.no_fence, started)?;
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                let (mut safety, mut validity, mut liveness, mut expected) = (0u64, 0u64, 0u64, 0u64);
                let mut failing = Vec::new();
                for line in &lines {
                    let bad = !line.safety.is_empty() || !line.validity.is_empty() || line.liveness.is_some();
                    safety += u64::from(!line.safety.is_empty());
                    validity += u64::from(!line.validity.is_empty());
                    liveness += u64::from(line.liveness.is_some());
                    if !bad {
                        continue;
                    }
                    // PBFT's trust model owes nothing once faults sit on more than f replicas.
                    let owed = protocol == Protocol::Splitbft || line.faulty_replicas <= f;
                    expected += u64::from(!owed);
                    failed |= owed;
                    failing.push(line.seed);
                    if args.seeds == Some(1) || failing.len() <= 20 {
                        let what = line
                            .safety
                            .first()
                            .or(line.validity.first())
                            .or(line.liveness.as_ref())
                            .cloned()
                            .unwrap_or_default();
                        eprintln!(
                            "{} {} n={n} seed {}{}: {what}\n  draw: {}\n  replay: splitbft sim --protocol {} --scenario {} --replicas {n} --seed {} --seeds 1",
                            protocol.name(),
                            scenario.name(),
                            line.seed,
                            if owed { "" } else { " (expected: faults on more than f replicas)" },
                            line.draw,
                            protocol.name(),
                            scenario.name(),
                            line.seed
                        );
                    }
                }
                if failing.len() > 20 {
                    let all: Vec<String> = failing.iter().map(u64::to_string).collect();
                    eprintln!("  all failing seeds: {}", all.join(", "));
                }
                let ran = lines.len() as u64;
                let rate = ran as f64 / secs;
                println!(
                    "{:<9} {:<20} n={n:<2} {ran} seeds in {secs:.1} s ({rate:.1} seeds/s): {safety} with safety violations, {validity} with validity violations, {liveness} with liveness failures{}",
                    protocol.name(),
                    scenario.name(),
                    if expected > 0 {
                        format!(" ({expected} expected: faults on more than f replicas)")
                    } else {
                        String::new()
                    }
                );
                summaries.push(serde_json::json!({
                    "protocol": protocol.name(),
                    "scenario": scenario.name(),
                    "replicas": n,
                    "seeds": ran,
                    "safety_violations": safety,
                    "validity_violations": validity,
                    "liveness_failures": liveness,
                    "expected_failures": expected,
                    "first_failing_seed": failing.first(),
                    "seeds_per_s": rate,
                }));
            }
        }
    }
    if args.json {
        for s in &summaries {
            println!("{s}");
        }
    }
    if failed {
        bail!("the simulator found failing seeds");
    }
    Ok(())
}

/// Runs seeds `[first, first + seeds)` in worker processes; a worker that dies mid-seed
/// is that seed's crash, and the next worker resumes after it.
fn supervise(
    scenario: Scenario,
    protocol: Protocol,
    n: usize,
    first: u64,
    seeds: u64,
    duration: Option<f64>,
    fence: bool,
    started: Instant,
) -> anyhow::Result<Vec<SeedLine>> {
    let exe = std::env::current_exe().context("locating this binary for the simulator worker")?;
    let end = first.saturating_add(seeds);
    let mut next = first;
    let mut lines = Vec::new();
    let out_of_time = || duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d);
    while next < end && !out_of_time() {
        let mut child = Command::new(&exe)
            .args(["sim", "--worker", "--scenario", scenario.name(), "--protocol", protocol.name()])
            .args(["--replicas", &n.to_string(), "--seed", &next.to_string(), "--seeds", &(end - next).to_string()])
            .args(if fence { &[][..] } else { &["--no-fence"][..] })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the simulator worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut running = None;
        let mut timed_out = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the simulator worker")?;
            let seed: SeedLine = serde_json::from_str(&line).context("a worker line")?;
            if seed.start {
                running = Some(seed);
                continue;
            }
            running = None;
            lines.push(seed);
            if out_of_time() {
                timed_out = true;
                break;
            }
        }
        if timed_out {
            child.kill().ok();
            child.wait().ok();
            break;
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut stderr).ok();
        }
        let status = child.wait().context("waiting for the simulator worker")?;
        if seeds == 1 {
            eprint!("{stderr}");
        }
        match running {
            Some(mut seed) => {
                let last = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                seed.start = false;
                seed.safety = vec![format!("crash: the process died ({status}): {last}")];
                next = seed.seed + 1;
                lines.push(seed);
            }
            None if !status.success() => bail!("the simulator worker failed ({status}): {stderr}"),
            None => break,
        }
    }
    Ok(lines)
}

/// The worker: runs the seeds, one JSON line before and after each.
fn worker(
    scenarios: &[Scenario],
    protocols: &[Protocol],
    sizes: &[usize],
    first: u64,
    seeds: u64,
    fence: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let (&[scenario], &[protocol], &[n]) = (scenarios, protocols, sizes) else {
        bail!("a simulator worker runs one scenario, protocol and size");
    };
    splitbft_sim::quiet_panics();
    let mut out = std::io::stdout().lock();
    for seed in first..first.saturating_add(seeds) {
        // Announced first, so a crash still names the seed and what it drew.
        let (draw, faulty_replicas) = splitbft_sim::draw_of(seed, scenario, protocol, n);
        let start = SeedLine { seed, start: true, draw, faulty_replicas, ..Default::default() };
        writeln!(out, "{}", serde_json::to_string(&start)?)?;
        out.flush()?;
        let report = splitbft_sim::run_with_fence(seed, scenario, protocol, n, fence);
        if seeds == 1 {
            eprintln!(
                "seed {seed}: {} ops completed, max seq {}, max view {}, {} frames delivered\n  draw: {}",
                report.completed, report.max_seq, report.max_view, report.delivered, report.draw
            );
            for line in &report.replicas {
                eprintln!("  {line}");
            }
        }
        let line = SeedLine {
            seed,
            safety: report.safety_violations.into_iter().take(3).collect(),
            validity: report.validity_violations.into_iter().take(3).collect(),
            liveness: report.liveness_failure,
            faulty_replicas: report.faulty_replicas,
            draw: report.draw,
            start: false,
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        out.flush()?;
    }
    Ok(())
}
