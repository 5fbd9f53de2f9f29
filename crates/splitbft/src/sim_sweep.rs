//! `splitbft sim`: sweeps of the deterministic simulator. Seeds run in a worker process
//! (this binary, `sim --worker`) that reports each seed as one JSON line: a seed that
//! makes a compartment allocate without bound aborts the process rather than panicking,
//! and an abort is a finding (a crash of every correct enclave that ran the input), so
//! the supervisor records the seed that was running, and starts a new worker after it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use splitbft_sim::{Guard, Protocol, Scenario};

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
    /// Every scenario (the default now that `power-failure` joined it; kept for scripts).
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
    /// Worker processes per protocol, scenario and size, each taking every `jobs`-th seed
    /// (default 1: the machine is shared; the seeds and their outcomes do not depend on it).
    #[arg(long, default_value_t = 1)]
    jobs: u64,
    /// Internal: a worker runs every `stride`-th seed from --seed on.
    #[arg(long, hide = true, default_value_t = 1)]
    stride: u64,
    /// Simulator only: restarted enclaves start without the recovery fence (SPEC §10), to
    /// show what it prevents (`enclave-restart`, `random`); expect equivocations.
    #[arg(long, hide = true)]
    no_fence: bool,
    /// Simulator only: the fence stays, but the monotonic counter advances at images only
    /// (the previous design), to show what counting every durable record prevents
    /// (restarts with deltas cut off their end); expect equivocations.
    #[arg(long, hide = true, conflicts_with = "no_fence")]
    counter_at_images: bool,
    /// Simulator only: durable replicas keep no batch frames on disk (the design before
    /// the batch log), to show what the log prevents (`power-failure`: after a
    /// whole-cluster restart a batch re-proposed by digest is held by nobody); expect
    /// liveness failures.
    #[arg(long, hide = true, conflicts_with_all = ["no_fence", "counter_at_images"])]
    no_batch_log: bool,
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

/// The rollback guards a sweep runs under (SPEC §10; weaker ones are simulator-only).
fn guard(args: &SimArgs) -> Guard {
    match (args.no_fence, args.counter_at_images, args.no_batch_log) {
        (true, _, _) => Guard::NoFence,
        (false, true, _) => Guard::CounterAtImages,
        (false, false, true) => Guard::NoBatchLog,
        (false, false, false) => Guard::Full,
    }
}

/// The hidden switch that selects `guard` (none for the full guards).
fn guard_flag(guard: Guard) -> Option<&'static str> {
    match guard {
        Guard::Full => None,
        Guard::NoFence => Some("--no-fence"),
        Guard::CounterAtImages => Some("--counter-at-images"),
        Guard::NoBatchLog => Some("--no-batch-log"),
    }
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
        return worker(&scenarios, &protocols, &sizes, args.seed, seeds, args.stride.max(1), guard(&args));
    }
    let mut summaries = Vec::new();
    let mut failed = false;
    for &scenario in &scenarios {
        for &protocol in &protocols {
            for &n in &sizes {
                let f = (n - 1) / 3;
                let started = Instant::now();
                let sweep = Sweep {
                    scenario,
                    protocol,
                    n,
                    end: args.seed.saturating_add(seeds),
                    duration: args.duration,
                    guard: guard(&args),
                    stride: args.jobs.max(1),
                    started,
                };
                let lines = sweep.run(args.seed, seeds == 1)?;
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
                            "{} {} n={n} seed {}{}: {what}\n  draw: {}\n  replay: splitbft sim --protocol {} --scenario {} --replicas {n} --seed {} --seeds 1{}",
                            protocol.name(),
                            scenario.name(),
                            line.seed,
                            if owed { "" } else { " (expected: faults on more than f replicas)" },
                            line.draw,
                            protocol.name(),
                            scenario.name(),
                            line.seed,
                            guard_flag(guard(&args)).map(|f| format!(" {f}")).unwrap_or_default()
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

/// One protocol, scenario and size of a sweep: seeds up to `end` (exclusive), split
/// between `stride` worker processes.
struct Sweep {
    scenario: Scenario,
    protocol: Protocol,
    n: usize,
    end: u64,
    duration: Option<f64>,
    guard: Guard,
    stride: u64,
    started: Instant,
}

impl Sweep {
    /// Runs seeds `[first, end)`, worker `k` of `stride` taking `first + k`, `first + k +
    /// stride`, ...; the lines in seed order.
    fn run(&self, first: u64, replay: bool) -> anyhow::Result<Vec<SeedLine>> {
        let parts: Vec<anyhow::Result<Vec<SeedLine>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.stride)
                .map(|k| first.saturating_add(k))
                .filter(|start| *start < self.end)
                .map(|start| scope.spawn(move || self.supervise(start, replay)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("a supervisor thread panicked"))).collect()
        });
        let mut lines = Vec::new();
        for part in parts {
            lines.extend(part?);
        }
        lines.sort_by_key(|l| l.seed);
        Ok(lines)
    }

    /// Runs seeds `start, start + stride, ...` below `end` in worker processes; a worker
    /// that dies mid-seed is that seed's crash, and the next worker resumes after it.
    fn supervise(&self, start: u64, replay: bool) -> anyhow::Result<Vec<SeedLine>> {
        let exe = std::env::current_exe().context("locating this binary for the simulator worker")?;
        let mut next = start;
        let mut lines = Vec::new();
        let out_of_time = || self.duration.is_some_and(|d| self.started.elapsed().as_secs_f64() >= d);
        while next < self.end && !out_of_time() {
            let mut child = Command::new(&exe)
                .args(["sim", "--worker", "--scenario", self.scenario.name(), "--protocol", self.protocol.name()])
                .args(["--replicas", &self.n.to_string(), "--seed", &next.to_string()])
                .args(["--seeds", &(self.end - next).to_string(), "--stride", &self.stride.to_string()])
                .args(guard_flag(self.guard))
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
            if replay {
                eprint!("{stderr}");
            }
            match running {
                Some(mut seed) => {
                    let last = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                    seed.start = false;
                    seed.safety = vec![format!("crash: the process died ({status}): {last}")];
                    next = seed.seed.saturating_add(self.stride);
                    lines.push(seed);
                }
                None if !status.success() => bail!("the simulator worker failed ({status}): {stderr}"),
                None => break,
            }
        }
        Ok(lines)
    }
}

/// The worker: runs the seeds, one JSON line before and after each.
fn worker(
    scenarios: &[Scenario],
    protocols: &[Protocol],
    sizes: &[usize],
    first: u64,
    seeds: u64,
    stride: u64,
    guard: Guard,
) -> anyhow::Result<()> {
    use std::io::Write;
    let (&[scenario], &[protocol], &[n]) = (scenarios, protocols, sizes) else {
        bail!("a simulator worker runs one scenario, protocol and size");
    };
    splitbft_sim::quiet_panics();
    let mut out = std::io::stdout().lock();
    for seed in (first..first.saturating_add(seeds)).step_by(stride as usize) {
        // Announced first, so a crash still names the seed and what it drew.
        let (draw, faulty_replicas) = splitbft_sim::draw_of(seed, scenario, protocol, n);
        let start = SeedLine { seed, start: true, draw, faulty_replicas, ..Default::default() };
        writeln!(out, "{}", serde_json::to_string(&start)?)?;
        out.flush()?;
        let report = splitbft_sim::run_with_guard(seed, scenario, protocol, n, guard);
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
