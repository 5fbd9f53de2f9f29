//! `splitbft bench`: the paper's §6 experiment matrix (Fig. 3) against SplitBFT and the
//! PBFT baseline in one run on this machine — apps × {unbatched, batched} × client counts,
//! each point a fresh local cluster measured over a fixed window after a warm-up — plus
//! one client with one outstanding request per protocol for latency. SplitBFT runs twice
//! at every point, with sealed write-ahead state on disk (SPEC §10, the `replica` default)
//! and in memory (`--no-durable`), so that one run gives both the cost of durability and
//! the comparison with PBFT (which keeps nothing on disk) on equal terms. Writes
//! `results.csv`, `summary.json` and PNG plots to `OUT/<UTC timestamp>/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use splitbft_broker::NodeReport;
use splitbft_enclave::Backend;
use splitbft_types::config::{DEFAULT_CLIENT_WINDOW, DEFAULT_MAX_BATCH};
use splitbft_types::counters::Counter;

use crate::AppKind;
use crate::demo::{ClusterSpec, LocalTcpCluster, Protocol};
use crate::workload::{self, OpMix, Stop, Workload};

/// Most clients one point may run: each is a set of keys and four TCP connections in this
/// process; 1,000 is well past the paper's 150 and still starts in well under a second.
pub const MAX_BENCH_CLIENTS: usize = 1000;

/// Longest warm-up or window accepted, so that a typo cannot make a run last for days.
pub const MAX_PHASE_SECONDS: f64 = 3600.0;
/// Unbatched points of the default client list stop here: with more than 50 clients × 40
/// outstanding (2,000 requests queued at a ~2k ops/s cluster) replicas fall behind and view
/// changes with full logs of prepared certificates make the cluster crawl (README "Known
/// gaps"). Explicit `--clients` run what they name, under [`POINT_GRACE_SECONDS`].
pub const DEFAULT_UNBATCHED_MAX_CLIENTS: usize = 50;
/// A point gets its warm-up cap and window plus this long to start and shut down; past
/// that it is recorded as failed rather than holding up the matrix.
pub const POINT_GRACE_SECONDS: f64 = 60.0;

/// Whether the primary batches requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// One request per batch (B = 1).
    Unbatched,
    /// Batches of up to `--batch` requests, cut after `--batch-timeout-ms`.
    Batched,
}

impl Batching {
    /// The name used in CSV, JSON and plots.
    pub fn name(self) -> &'static str {
        match self {
            Batching::Unbatched => "unbatched",
            Batching::Batched => "batched",
        }
    }
}

/// Where SplitBFT keeps its compartments' safety state (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In memory only (`--no-durable`): a restarted replica starts from genesis.
    Memory,
    /// Sealed write-ahead state in a temporary data directory per replica, group-committed
    /// with `fdatasync` before a round's outputs leave (the default of `replica` and
    /// `demo`).
    Durable,
}

impl Storage {
    /// The name used in CSV, JSON and plots.
    pub fn name(self) -> &'static str {
        match self {
            Storage::Memory => "memory",
            Storage::Durable => "durable",
        }
    }
}

/// One line of the plots: a protocol and where it keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// Protocol.
    pub protocol: Protocol,
    /// Storage (PBFT: memory only).
    pub storage: Storage,
}

impl Series {
    /// The name used in the table and the plots' legends.
    pub fn name(self) -> &'static str {
        match (self.protocol, self.storage) {
            (Protocol::Splitbft, Storage::Memory) => "splitbft",
            (Protocol::Splitbft, Storage::Durable) => "splitbft-durable",
            (Protocol::Pbft, _) => "pbft",
        }
    }
}

/// The `bench` flags. Unset matrix flags take the full or the `--quick` default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BenchArgs {
    /// Reduced matrix (KV; 10 and 50 clients; shorter windows) that finishes in under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object with the headline figures as the last line.
    #[arg(long)]
    pub json: bool,
    /// Parent directory of the run's output directory.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Protocols, comma-separated [default: splitbft,pbft].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub protocols: Option<Vec<Protocol>>,
    /// Applications, comma-separated [default: kv,ledger; --quick: kv].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub apps: Option<Vec<AppKind>>,
    /// Batching modes, comma-separated [default: unbatched,batched].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub batching: Option<Vec<Batching>>,
    /// SplitBFT's storage, comma-separated [default: memory,durable, durable batched only].
    /// PBFT keeps nothing on disk and runs in memory only. Named explicitly, durable runs
    /// unbatched points too.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub storage: Option<Vec<Storage>>,
    /// Client counts, comma-separated [default: 1,10,25,50,100,150, unbatched only up to
    /// 50 (beyond, see README "Known gaps"); --quick: 10,50].
    #[arg(long, value_delimiter = ',')]
    pub clients: Option<Vec<usize>>,
    /// Requests each client keeps in flight [default: 40].
    #[arg(long)]
    pub outstanding: Option<usize>,
    /// Warm-up seconds before each window [default: 1; --quick: 0.5].
    #[arg(long)]
    pub warmup_s: Option<f64>,
    /// Longest warm-up: the window opens once every request slot has had an answer, or
    /// after this many seconds [default: 10; --quick: 3].
    #[arg(long)]
    pub max_warmup_s: Option<f64>,
    /// Measuring window in seconds [default: 3; --quick: 1.5].
    #[arg(long)]
    pub window_s: Option<f64>,
    /// Batch size B of the batched mode.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH)]
    pub batch: u32,
    /// Batch timeout in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub batch_timeout_ms: u64,
    /// Value bytes per PUT (replies carry the previous value: the same size).
    #[arg(long, default_value_t = 10)]
    pub payload: usize,
    /// Operations: put (the paper's) or put-get (the demo's).
    #[arg(long, value_enum, default_value = "put")]
    pub ops: OpMix,
    /// Replicas (3f + 1).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Compartment hosting for SplitBFT (PBFT always runs inline).
    #[arg(long, default_value = "inline")]
    pub backend: Backend,
}

/// The resolved experiment matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    /// Whether this is the `--quick` matrix.
    pub quick: bool,
    /// Protocols, interleaved at every configuration in this order.
    pub protocols: Vec<Protocol>,
    /// Applications.
    pub apps: Vec<AppKind>,
    /// Batching modes.
    pub batching: Vec<Batching>,
    /// SplitBFT's storage modes.
    pub storage: Vec<Storage>,
    /// Whether durable SplitBFT runs unbatched points too (only when `--storage` is given:
    /// one request per batch pays the four group commits of a batch's path per request,
    /// and 50 × 40 outstanding then time out into view changes).
    pub durable_unbatched: bool,
    /// Client counts, ascending.
    pub clients: Vec<usize>,
    /// Unbatched points run only up to this many clients (the default list stops at 50).
    pub unbatched_max_clients: usize,
    /// Outstanding requests per client.
    pub outstanding: usize,
    /// Minimum warm-up (s).
    pub warmup_s: f64,
    /// Maximum warm-up (s).
    pub max_warmup_s: f64,
    /// Measuring window (s).
    pub window_s: f64,
    /// B in batched mode.
    pub batch: u32,
    /// Batch timeout (ms).
    pub batch_timeout_ms: u64,
    /// Value bytes.
    pub payload: usize,
    /// Operations.
    pub ops: OpMix,
    /// Replicas.
    pub replicas: usize,
    /// SplitBFT's compartment backend.
    pub backend: String,
    #[serde(skip)]
    backend_kind: Backend,
}

impl Matrix {
    /// Resolves the flags against the full or `--quick` defaults and checks them.
    pub fn from_args(args: &BenchArgs) -> anyhow::Result<Matrix> {
        let quick = args.quick;
        let or = |full: f64, reduced: f64| if quick { reduced } else { full };
        let default_clients = args.clients.is_none();
        let mut clients =
            args.clients.clone().unwrap_or_else(|| if quick { vec![10, 50] } else { vec![1, 10, 25, 50, 100, 150] });
        clients.sort_unstable();
        clients.dedup();
        let mut m = Matrix {
            quick,
            unbatched_max_clients: if default_clients { DEFAULT_UNBATCHED_MAX_CLIENTS } else { usize::MAX },
            protocols: dedup(args.protocols.clone().unwrap_or_else(|| vec![Protocol::Splitbft, Protocol::Pbft])),
            apps: dedup(
                args.apps
                    .clone()
                    .unwrap_or_else(|| if quick { vec![AppKind::Kv] } else { vec![AppKind::Kv, AppKind::Ledger] }),
            ),
            batching: dedup(args.batching.clone().unwrap_or_else(|| vec![Batching::Unbatched, Batching::Batched])),
            storage: dedup(args.storage.clone().unwrap_or_else(|| vec![Storage::Memory, Storage::Durable])),
            durable_unbatched: args.storage.is_some(),
            clients,
            outstanding: args.outstanding.unwrap_or(40),
            warmup_s: args.warmup_s.unwrap_or(or(1.0, 0.5)),
            max_warmup_s: args.max_warmup_s.unwrap_or(or(10.0, 3.0)),
            window_s: args.window_s.unwrap_or(or(3.0, 1.5)),
            batch: args.batch,
            batch_timeout_ms: args.batch_timeout_ms,
            payload: args.payload,
            ops: args.ops,
            replicas: args.replicas,
            backend: args.backend.to_string(),
            backend_kind: args.backend,
        };
        m.max_warmup_s = m.max_warmup_s.max(m.warmup_s);
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> anyhow::Result<()> {
        crate::fault_threshold(self.replicas)?;
        for (name, empty) in [
            ("--protocols", self.protocols.is_empty()),
            ("--apps", self.apps.is_empty()),
            ("--batching", self.batching.is_empty()),
            ("--storage", self.storage.is_empty()),
            ("--clients", self.clients.is_empty()),
        ] {
            if empty {
                bail!("{name} needs at least one value");
            }
        }
        if let Some(&c) = self.clients.iter().find(|&&c| c == 0 || c > MAX_BENCH_CLIENTS) {
            bail!("--clients values must be in 1..={MAX_BENCH_CLIENTS}, got {c}");
        }
        if self.outstanding == 0 || self.outstanding as u64 > DEFAULT_CLIENT_WINDOW {
            bail!(
                "--outstanding must be in 1..={DEFAULT_CLIENT_WINDOW} (the per-client window W), got {}",
                self.outstanding
            );
        }
        for (name, v, min) in [("--warmup-s", self.warmup_s, 0.0), ("--window-s", self.window_s, f64::MIN_POSITIVE)] {
            if !(min..=MAX_PHASE_SECONDS).contains(&v) {
                bail!("{name} must be a number of seconds in {min}..={MAX_PHASE_SECONDS}, got {v}");
            }
        }
        if !(0.0..=MAX_PHASE_SECONDS).contains(&self.max_warmup_s) {
            bail!("--max-warmup-s must be in 0..={MAX_PHASE_SECONDS}, got {}", self.max_warmup_s);
        }
        if self.batch < 2 && self.batching.contains(&Batching::Batched) {
            bail!("--batch must be at least 2 for the batched mode (unbatched is B = 1), got {}", self.batch);
        }
        if self.series().is_empty() {
            bail!("--storage durable applies to SplitBFT only (PBFT keeps nothing on disk): add memory to --storage");
        }
        if self.backend_kind != Backend::Inline && self.protocols.contains(&Protocol::Pbft) {
            bail!(
                "--backend {} applies to SplitBFT only; the PBFT baseline runs inline: use --protocols splitbft",
                self.backend
            );
        }
        Ok(())
    }

    /// The application of the ratios and the latency point: KV if measured, else the first.
    pub fn headline_app(&self) -> AppKind {
        if self.apps.contains(&AppKind::Kv) { AppKind::Kv } else { self.apps[0] }
    }

    /// The client count of the ratios: the highest measured.
    pub fn headline_clients(&self) -> usize {
        self.clients.iter().copied().max().unwrap_or(0)
    }

    /// The lines measured at every configuration, in run order: each protocol, SplitBFT
    /// once per storage mode, PBFT in memory only.
    pub fn series(&self) -> Vec<Series> {
        let mut out = Vec::new();
        for &protocol in &self.protocols {
            for &storage in &self.storage {
                if protocol == Protocol::Splitbft || storage == Storage::Memory {
                    out.push(Series { protocol, storage });
                }
            }
        }
        out
    }

    /// Every point in run order: the latency points, then each configuration with the
    /// series interleaved, so that a ratio compares runs made seconds apart.
    pub fn points(&self) -> Vec<PointSpec> {
        let latency_batching =
            if self.batching.contains(&Batching::Batched) { Batching::Batched } else { self.batching[0] };
        let series = self.series();
        let mut points: Vec<PointSpec> = series
            .iter()
            .map(|s| PointSpec {
                protocol: s.protocol,
                storage: s.storage,
                app: self.headline_app(),
                batching: latency_batching,
                clients: 1,
                outstanding: 1,
                latency_point: true,
            })
            .collect();
        for &app in &self.apps {
            for &batching in &self.batching {
                for &clients in &self.clients {
                    if batching == Batching::Unbatched && clients > self.unbatched_max_clients {
                        continue;
                    }
                    for s in &series {
                        if s.storage == Storage::Durable && batching == Batching::Unbatched && !self.durable_unbatched {
                            continue;
                        }
                        points.push(PointSpec {
                            protocol: s.protocol,
                            storage: s.storage,
                            app,
                            batching,
                            clients,
                            outstanding: self.outstanding,
                            latency_point: false,
                        });
                    }
                }
            }
        }
        points
    }

    /// The batch size of a batching mode.
    pub fn batch_size(&self, batching: Batching) -> u32 {
        match batching {
            Batching::Unbatched => 1,
            Batching::Batched => self.batch,
        }
    }

    /// A bound on the run's length in seconds, not counting cluster start-up.
    pub fn max_seconds(&self) -> f64 {
        self.points().len() as f64 * (self.max_warmup_s + self.window_s)
    }
}

fn dedup<T: PartialEq>(values: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// One point of the matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointSpec {
    /// Protocol.
    pub protocol: Protocol,
    /// Where it keeps its state.
    pub storage: Storage,
    /// Application.
    pub app: AppKind,
    /// Batching mode.
    pub batching: Batching,
    /// Clients.
    pub clients: usize,
    /// Outstanding requests per client.
    pub outstanding: usize,
    /// The one-client, one-request latency point.
    pub latency_point: bool,
}

/// One row of `results.csv` (and of `summary.json`'s `points`). Measurements are empty
/// when the point was skipped.
#[derive(Clone, Debug, Serialize)]
pub struct PointResult {
    /// `splitbft` or `pbft`.
    pub protocol: Protocol,
    /// `memory` or `durable`.
    pub storage: Storage,
    /// `kv` or `ledger`.
    pub app: AppKind,
    /// `unbatched` or `batched`.
    pub batching: Batching,
    /// Closed-loop clients.
    pub clients: usize,
    /// Requests each client keeps in flight.
    pub outstanding: usize,
    /// B.
    pub batch_size: u32,
    /// Warm-up actually spent before the window opened.
    pub warmup_s: Option<f64>,
    /// Length of the measuring window.
    pub seconds: Option<f64>,
    /// Successful completions inside the window.
    pub completed: Option<u64>,
    /// Failed requests inside the window.
    pub errors: Option<u64>,
    /// `completed / seconds`.
    pub ops_s: Option<f64>,
    /// Median latency of requests completed inside the window.
    pub p50_us: Option<u64>,
    /// 99th percentile latency.
    pub p99_us: Option<u64>,
    /// Requests per batch at the primary over the whole run (warm-up included).
    pub avg_batch: Option<f64>,
    /// Client retransmissions over the whole run.
    pub retransmissions: Option<u64>,
    /// Views entered after view 0 (request timers expiring under load start view changes).
    pub view_changes: Option<u64>,
    /// Durable points: log `fdatasync`s per batch ordered, over all replicas and the whole
    /// run (warm-up included).
    pub fsyncs_per_batch: Option<f64>,
    /// Durable points: log `fdatasync`s per second, over all replicas, from the first
    /// request of the warm-up to the end of the window.
    pub fsyncs_per_s: Option<f64>,
    /// Why the point was not measured (empty when it was).
    pub skipped: Option<String>,
    /// The point failed for a reason other than an unavailable application.
    #[serde(skip)]
    pub failed: bool,
}

impl PointResult {
    fn unmeasured(m: &Matrix, spec: &PointSpec, reason: String, failed: bool) -> PointResult {
        PointResult {
            protocol: spec.protocol,
            storage: spec.storage,
            app: spec.app,
            batching: spec.batching,
            clients: spec.clients,
            outstanding: spec.outstanding,
            batch_size: m.batch_size(spec.batching),
            warmup_s: None,
            seconds: None,
            completed: None,
            errors: None,
            ops_s: None,
            p50_us: None,
            p99_us: None,
            avg_batch: None,
            retransmissions: None,
            view_changes: None,
            fsyncs_per_batch: None,
            fsyncs_per_s: None,
            skipped: Some(reason),
            failed,
        }
    }

    /// The line this row belongs to.
    pub fn series(&self) -> Series {
        Series { protocol: self.protocol, storage: self.storage }
    }

    /// Whether this row is `spec`.
    fn is(&self, series: Series, app: AppKind, batching: Batching, clients: usize, outstanding: usize) -> bool {
        self.series() == series
            && self.app == app
            && self.batching == batching
            && self.clients == clients
            && self.outstanding == outstanding
    }
}

/// SplitBFT's throughput over PBFT's (both in memory), and SplitBFT's durable over its
/// in-memory throughput, at one configuration, where both were measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ratio {
    /// Application.
    pub app: AppKind,
    /// Batching mode.
    pub batching: Batching,
    /// Clients.
    pub clients: usize,
    /// SplitBFT ops/s.
    pub splitbft_ops_s: Option<f64>,
    /// PBFT ops/s.
    pub pbft_ops_s: Option<f64>,
    /// `splitbft_ops_s / pbft_ops_s`.
    pub splitbft_over_pbft: Option<f64>,
    /// SplitBFT ops/s with durable state.
    pub splitbft_durable_ops_s: Option<f64>,
    /// `splitbft_durable_ops_s / splitbft_ops_s`.
    pub durable_over_memory: Option<f64>,
}

/// The figures the issue asks for (the `--json` line; also in `summary.json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Headline {
    /// SplitBFT / PBFT throughput, batched, `ratio_app` at `ratio_clients`.
    pub splitbft_over_pbft_batched: Option<f64>,
    /// SplitBFT / PBFT throughput, unbatched, `ratio_app` at `unbatched_ratio_clients`.
    pub splitbft_over_pbft_unbatched: Option<f64>,
    /// The client count of the unbatched ratio: the highest unbatched count in the matrix.
    pub unbatched_ratio_clients: usize,
    /// The application of the ratios.
    pub ratio_app: AppKind,
    /// The client count of the ratios (the highest in the matrix).
    pub ratio_clients: usize,
    /// SplitBFT with durable state / in memory, batched, `ratio_app` at `ratio_clients`.
    pub durable_over_memory_batched: Option<f64>,
    /// SplitBFT's highest batched `ratio_app` throughput with durable state over its
    /// highest in memory (each at the client count where it peaks).
    pub durable_over_memory_batched_peak: Option<f64>,
    /// SplitBFT's highest measured throughput in memory over all points.
    pub splitbft_peak_ops_s: Option<f64>,
    /// SplitBFT's highest measured throughput with durable state over all points.
    pub splitbft_durable_peak_ops_s: Option<f64>,
    /// PBFT's highest measured throughput over all points.
    pub pbft_peak_ops_s: Option<f64>,
    /// SplitBFT's median latency with one client and one outstanding request (in memory).
    pub splitbft_p50_us_1client: Option<u64>,
    /// The same with durable state.
    pub splitbft_durable_p50_us_1client: Option<u64>,
    /// PBFT's median latency with one client and one outstanding request.
    pub pbft_p50_us_1client: Option<u64>,
}

/// Throughput ratios at every configuration of the matrix.
pub fn ratios(m: &Matrix, points: &[PointResult]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &app in &m.apps {
        for &batching in &m.batching {
            for &clients in &m.clients {
                let ops = |protocol, storage| {
                    points
                        .iter()
                        .find(|p| {
                            p.is(Series { protocol, storage }, app, batching, clients, m.outstanding)
                                && p.skipped.is_none()
                        })
                        .and_then(|p| p.ops_s)
                };
                let s = ops(Protocol::Splitbft, Storage::Memory);
                let p = ops(Protocol::Pbft, Storage::Memory);
                let d = ops(Protocol::Splitbft, Storage::Durable);
                out.push(Ratio {
                    app,
                    batching,
                    clients,
                    splitbft_ops_s: s,
                    pbft_ops_s: p,
                    splitbft_over_pbft: quotient(s, p),
                    splitbft_durable_ops_s: d,
                    durable_over_memory: quotient(d, s),
                });
            }
        }
    }
    out
}

/// `a / b` where both were measured and `b` is positive.
fn quotient(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The headline figures from the measured points.
pub fn headline(m: &Matrix, points: &[PointResult]) -> Headline {
    let (app, clients) = (m.headline_app(), m.headline_clients());
    let all = ratios(m, points);
    let unbatched_clients =
        m.clients.iter().copied().filter(|&c| c <= m.unbatched_max_clients).max().unwrap_or(clients);
    let at = |batching, clients| all.iter().find(|r| r.app == app && r.batching == batching && r.clients == clients);
    let ratio = |batching, clients| at(batching, clients).and_then(|r| r.splitbft_over_pbft);
    let max = |values: &mut dyn Iterator<Item = f64>| values.max_by(|a, b| a.total_cmp(b));
    let peak = |series: Series| max(&mut points.iter().filter(|p| p.series() == series).filter_map(|p| p.ops_s));
    let p50 = |series: Series| {
        points
            .iter()
            .find(|p| p.series() == series && p.app == app && p.clients == 1 && p.outstanding == 1)
            .and_then(|p| p.p50_us)
    };
    let batched_peak = |ops: fn(&Ratio) -> Option<f64>| {
        max(&mut all.iter().filter(|r| r.app == app && r.batching == Batching::Batched).filter_map(ops))
    };
    let splitbft = Series { protocol: Protocol::Splitbft, storage: Storage::Memory };
    let durable = Series { protocol: Protocol::Splitbft, storage: Storage::Durable };
    let pbft = Series { protocol: Protocol::Pbft, storage: Storage::Memory };
    Headline {
        splitbft_over_pbft_batched: ratio(Batching::Batched, clients),
        splitbft_over_pbft_unbatched: ratio(Batching::Unbatched, unbatched_clients),
        unbatched_ratio_clients: unbatched_clients,
        ratio_app: app,
        ratio_clients: clients,
        durable_over_memory_batched: at(Batching::Batched, clients).and_then(|r| r.durable_over_memory),
        durable_over_memory_batched_peak: quotient(
            batched_peak(|r| r.splitbft_durable_ops_s),
            batched_peak(|r| r.splitbft_ops_s),
        ),
        splitbft_peak_ops_s: peak(splitbft),
        splitbft_durable_peak_ops_s: peak(durable),
        pbft_peak_ops_s: peak(pbft),
        splitbft_p50_us_1client: p50(splitbft),
        splitbft_durable_p50_us_1client: p50(durable),
        pbft_p50_us_1client: p50(pbft),
    }
}

/// Facts about the machine the numbers were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Cores this process may use.
    pub cores: usize,
    /// CPU model (from /proc/cpuinfo, where there is one).
    pub cpu: Option<String>,
    /// Operating system.
    pub os: &'static str,
    /// CPU architecture.
    pub arch: &'static str,
    /// Whether this binary was built with optimisations.
    pub release_build: bool,
}

impl Machine {
    fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            release_build: !cfg!(debug_assertions),
        }
    }
}

/// The git commit measured: `SPLITBFT_GIT_COMMIT` if set, else `git rev-parse HEAD`.
fn git_commit() -> Option<String> {
    if let Ok(commit) = std::env::var("SPLITBFT_GIT_COMMIT") {
        return Some(commit);
    }
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The headline figures.
    #[serde(flatten)]
    pub headline: Headline,
    /// Where the outputs are.
    pub out_dir: PathBuf,
    /// When the run started (UTC, RFC 3339).
    pub started_utc: String,
    /// Wall-clock seconds of the whole run.
    pub run_seconds: f64,
    /// Points measured, skipped (application unavailable) and failed.
    pub measured: usize,
    /// Points skipped because their application is not available.
    pub skipped: usize,
    /// Points that failed.
    pub failed: usize,
    /// The git commit, if known.
    pub git_commit: Option<String>,
    /// The machine.
    pub machine: Machine,
    /// The matrix.
    pub config: Matrix,
    /// Ratios at every configuration.
    pub ratios: Vec<Ratio>,
    /// Every point.
    pub points: Vec<PointResult>,
    /// The PNG files written.
    pub plots: Vec<PathBuf>,
}

impl Summary {
    /// The `--json` line: the headline plus where to find everything else.
    pub fn json_line(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.headline).expect("the headline serialises");
        if let Some(map) = v.as_object_mut() {
            map.insert("out_dir".into(), serde_json::json!(self.out_dir));
            map.insert("run_seconds".into(), serde_json::json!(self.run_seconds));
            map.insert("measured".into(), serde_json::json!(self.measured));
            map.insert("skipped".into(), serde_json::json!(self.skipped));
            map.insert("failed".into(), serde_json::json!(self.failed));
            map.insert("cores".into(), serde_json::json!(self.machine.cores));
        }
        v
    }
}

/// Requests per batch at the primary, from the replicas' counters.
pub(crate) fn average_batch(reports: &[NodeReport]) -> f64 {
    let ordered: u64 = reports.iter().map(|r| r.broker_counter(Counter::RequestsOrdered)).sum();
    let batches = reports.iter().map(|r| r.broker_counter(Counter::BatchesOrdered)).sum::<u64>().max(1);
    ordered as f64 / batches as f64
}

/// Measures one point on a fresh cluster.
async fn measure(m: &Matrix, spec: &PointSpec) -> anyhow::Result<PointResult> {
    let backend = match spec.protocol {
        Protocol::Splitbft => m.backend_kind,
        Protocol::Pbft => Backend::Inline,
    };
    let durable = spec.storage == Storage::Durable;
    // Removed when the point ends, however it ends.
    let data_dir = if durable { Some(TempDir::new()?) } else { None };
    let cluster = LocalTcpCluster::start_spec(&ClusterSpec {
        protocol: spec.protocol,
        app: spec.app,
        replicas: m.replicas,
        clients: spec.clients,
        batch: m.batch_size(spec.batching),
        batch_timeout_ms: m.batch_timeout_ms,
        backend,
        data_dir: data_dir.as_ref().map(|d| d.0.clone()),
        confidential: true,
        durable,
    })
    .await?;
    let workload = Workload {
        clients: spec.clients,
        outstanding: spec.outstanding,
        payload: m.payload,
        mix: m.ops,
        stop: Stop::Timed {
            warmup: Duration::from_secs_f64(m.warmup_s),
            max_warmup: Duration::from_secs_f64(m.max_warmup_s),
            window: Duration::from_secs_f64(m.window_s),
        },
        progress: false,
        record_completion_times: false,
    };
    let outcome = workload::run(&cluster, &workload).await;
    // Shut down whatever the workload did, so a failed point leaves no replica running.
    let reports = cluster.shutdown().await;
    let o = outcome?;
    Ok(PointResult {
        warmup_s: Some(o.warmup_seconds),
        seconds: Some(o.seconds),
        completed: Some(o.completed),
        errors: Some(o.errors),
        ops_s: Some(o.completed as f64 / o.seconds),
        p50_us: (!o.latencies.is_empty()).then(|| o.latencies.value_at_quantile(0.5)),
        p99_us: (!o.latencies.is_empty()).then(|| o.latencies.value_at_quantile(0.99)),
        avg_batch: Some(average_batch(&reports)),
        retransmissions: Some(o.retransmissions),
        view_changes: reports.iter().map(|r| r.broker_counter(Counter::ViewsEntered)).max(),
        fsyncs_per_batch: durable.then(|| crate::demo::fsyncs_per_batch(&reports)),
        fsyncs_per_s: durable.then(|| crate::demo::fsyncs(&reports) as f64 / (o.warmup_seconds + o.seconds)),
        skipped: None,
        failed: false,
        ..PointResult::unmeasured(m, spec, String::new(), false)
    })
}

/// A fresh data directory for one durable point, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        crate::demo::fresh_run_dir().map(TempDir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one point: skipped with the reason if its application cannot be built, recorded as
/// failed (not fatal) if anything else goes wrong.
async fn run_point(m: &Matrix, spec: &PointSpec) -> PointResult {
    if let Err(e) = spec.app.build() {
        return PointResult::unmeasured(m, spec, format!("{} app unavailable: {e:#}", spec.app.name()), false);
    }
    let budget = m.max_warmup_s + m.window_s + POINT_GRACE_SECONDS;
    match tokio::time::timeout(Duration::from_secs_f64(budget), measure(m, spec)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => PointResult::unmeasured(m, spec, format!("failed: {e:#}"), true),
        // Dropping the point's future drops its cluster: every replica task is aborted.
        Err(_) => PointResult::unmeasured(m, spec, format!("failed: no result within {budget:.0} s"), true),
    }
}

/// A fresh `parent/<UTC timestamp>` directory (`-2`, `-3`, ... if one already exists).
fn create_run_dir(parent: &Path, stamp: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    for n in 1..1000 {
        let name = if n == 1 { stamp.to_owned() } else { format!("{stamp}-{n}") };
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("{} already holds 999 runs named {stamp}", parent.display())
}

/// Writes `results.csv`.
pub fn write_csv(path: &Path, points: &[PointResult]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    for p in points {
        w.serialize(p)?;
    }
    w.flush()?;
    Ok(())
}

/// One line per point, as it finishes.
fn point_line(i: usize, n: usize, p: &PointResult) -> String {
    let config = format!(
        "[{i:>2}/{n}] {:<16} {:<6} {:<9} {:>3}x{:<2}",
        p.series().name(),
        p.app.name(),
        p.batching.name(),
        p.clients,
        p.outstanding
    );
    match (&p.skipped, p.ops_s) {
        (Some(reason), _) => format!("{config}  skipped: {reason}"),
        (None, Some(ops)) => format!(
            "{config}  {ops:>9.0} ops/s  p50 {:>9.3} ms  p99 {:>9.3} ms  batch {:>5.1}  errors {}  views {}{}",
            p.p50_us.unwrap_or(0) as f64 / 1000.0,
            p.p99_us.unwrap_or(0) as f64 / 1000.0,
            p.avg_batch.unwrap_or(0.0),
            p.errors.unwrap_or(0),
            p.view_changes.unwrap_or(0),
            match (p.fsyncs_per_batch, p.fsyncs_per_s) {
                (Some(b), Some(s)) => format!("  fsyncs/batch {b:.2}  fsyncs/s {s:.0}"),
                _ => String::new(),
            },
        ),
        (None, None) => config,
    }
}

/// Prints the readable table and the headline.
pub fn print_table(s: &Summary) {
    println!(
        "splitbft bench: {} points in {:.1} s on {} cores -> {}",
        s.points.len(),
        s.run_seconds,
        s.machine.cores,
        s.out_dir.display()
    );
    let n = s.points.len();
    for (i, p) in s.points.iter().enumerate() {
        println!("{}", point_line(i + 1, n, p));
    }
    let fmt = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.d$}"));
    println!("splitbft / pbft (both in memory) and splitbft durable / in memory:");
    for r in &s.ratios {
        println!(
            "  {:<6} {:<9} {:>3} clients  {:>9} / {:>9} ops/s = {:>4}   {:>9} / {:>9} ops/s = {:>4}",
            r.app.name(),
            r.batching.name(),
            r.clients,
            fmt(r.splitbft_ops_s, 0),
            fmt(r.pbft_ops_s, 0),
            fmt(r.splitbft_over_pbft, 2),
            fmt(r.splitbft_durable_ops_s, 0),
            fmt(r.splitbft_ops_s, 0),
            fmt(r.durable_over_memory, 2),
        );
    }
    let h = &s.headline;
    println!("batched peaks: splitbft durable / in memory = {}", fmt(h.durable_over_memory_batched_peak, 2));
    let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} µs"));
    println!(
        "1 client x 1 request p50: splitbft {}, splitbft durable {}, pbft {}",
        us(h.splitbft_p50_us_1client),
        us(h.splitbft_durable_p50_us_1client),
        us(h.pbft_p50_us_1client)
    );
}

/// Runs the matrix, writes the outputs and returns the summary.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Summary> {
    let m = Matrix::from_args(args)?;
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let stamp = now.format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))?;
    let started_utc = now.format(&time::format_description::well_known::Rfc3339)?;
    let dir = create_run_dir(&args.out, &stamp)?;
    let started = Instant::now();
    let specs = m.points();
    let mut points = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let result = run_point(&m, spec).await;
        eprintln!("{}", point_line(i + 1, specs.len(), &result));
        points.push(result);
    }
    write_csv(&dir.join("results.csv"), &points)?;
    let plots = crate::plot::draw(&dir, &m, &points, &started_utc)?;
    let failed = points.iter().filter(|p| p.failed).count();
    let skipped = points.iter().filter(|p| p.skipped.is_some()).count() - failed;
    let summary = Summary {
        headline: headline(&m, &points),
        out_dir: dir.clone(),
        started_utc,
        run_seconds: started.elapsed().as_secs_f64(),
        measured: points.len() - skipped - failed,
        skipped,
        failed,
        git_commit: git_commit(),
        machine: Machine::probe(),
        ratios: ratios(&m, &points),
        config: m,
        points,
        plots,
    };
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Matrix {
        Matrix::from_args(&BenchArgs { quick: true, ..args() }).expect("the quick matrix is valid")
    }

    fn args() -> BenchArgs {
        BenchArgs {
            out: "results".into(),
            batch: DEFAULT_MAX_BATCH,
            batch_timeout_ms: 10,
            payload: 10,
            ops: OpMix::Put,
            replicas: 4,
            backend: Backend::Inline,
            ..BenchArgs::default()
        }
    }

    fn measured(m: &Matrix, spec: &PointSpec, ops_s: f64, p50_us: u64) -> PointResult {
        PointResult {
            ops_s: Some(ops_s),
            p50_us: Some(p50_us),
            skipped: None,
            ..PointResult::unmeasured(m, spec, String::new(), false)
        }
    }

    #[test]
    fn the_quick_matrix_is_kv_both_modes_two_client_counts_and_the_latency_points() {
        let m = quick();
        assert_eq!(m.apps, vec![AppKind::Kv]);
        assert_eq!(m.clients, vec![10, 50]);
        assert_eq!(m.batching, vec![Batching::Unbatched, Batching::Batched]);
        let points = m.points();
        // 3 latency points + 2 modes x 2 client counts x 3 lines (SplitBFT in memory and
        // durable, PBFT in memory), less durable's unbatched points.
        assert_eq!(points.len(), 13);
        assert!(points[..3].iter().all(|p| p.latency_point && p.clients == 1 && p.outstanding == 1));
        let lines: Vec<&str> =
            points[..3].iter().map(|p| Series { protocol: p.protocol, storage: p.storage }.name()).collect();
        assert_eq!(lines, ["splitbft", "splitbft-durable", "pbft"]);
        let unbatched: Vec<&PointSpec> = points[3..].iter().filter(|p| p.batching == Batching::Unbatched).collect();
        assert_eq!(unbatched.len(), 4);
        assert!(unbatched.iter().all(|p| p.storage == Storage::Memory));
        // Interleaved: every batched configuration runs the three lines back to back.
        for triple in points[7..].chunks(3) {
            let names: Vec<&str> =
                triple.iter().map(|p| Series { protocol: p.protocol, storage: p.storage }.name()).collect();
            assert_eq!(names, ["splitbft", "splitbft-durable", "pbft"]);
            assert!(triple.iter().all(|p| (p.clients, p.batching) == (triple[0].clients, triple[0].batching)));
        }
        // Well under the two minutes the issue allows, even with every warm-up at its cap.
        assert!(m.max_seconds() < 90.0, "{}", m.max_seconds());
        assert_eq!(m.headline_clients(), 50);
    }

    #[test]
    fn the_full_matrix_is_the_papers() {
        let m = Matrix::from_args(&args()).expect("valid");
        assert_eq!(m.apps, vec![AppKind::Kv, AppKind::Ledger]);
        assert_eq!(m.clients, vec![1, 10, 25, 50, 100, 150]);
        assert_eq!(m.outstanding, 40);
        assert_eq!(m.batch_size(Batching::Batched), 200);
        assert_eq!(m.batch_size(Batching::Unbatched), 1);
        // Unbatched stops at 50 clients by default: 4 of the 6 client counts; three lines
        // batched, two unbatched.
        assert_eq!(m.points().len(), 3 + 2 * (6 * 3 + 4 * 2));
        // Durable unbatched runs when --storage names it.
        let named = Matrix::from_args(&BenchArgs { storage: Some(vec![Storage::Durable, Storage::Memory]), ..args() })
            .expect("valid");
        assert_eq!(named.storage, vec![Storage::Durable, Storage::Memory]);
        assert_eq!(named.points().len(), 3 + 2 * (6 + 4) * 3);
        assert!(m.points().iter().all(|p| p.batching == Batching::Batched || p.clients <= 50));
        // Named client counts run as named.
        let explicit = Matrix::from_args(&BenchArgs { clients: Some(vec![100]), ..args() }).expect("valid");
        assert!(explicit.points().iter().any(|p| p.batching == Batching::Unbatched && p.clients == 100));
    }

    #[test]
    fn explicit_flags_override_the_quick_defaults() {
        let m = Matrix::from_args(&BenchArgs {
            quick: true,
            apps: Some(vec![AppKind::Ledger, AppKind::Kv, AppKind::Ledger]),
            clients: Some(vec![5, 1, 5]),
            ..args()
        })
        .expect("valid");
        assert_eq!(m.apps, vec![AppKind::Ledger, AppKind::Kv]);
        assert_eq!(m.clients, vec![1, 5]);
        assert_eq!(m.headline_app(), AppKind::Kv);
    }

    #[test]
    fn bad_matrices_are_refused_with_the_flag_named() {
        let err = |a: BenchArgs| format!("{:#}", Matrix::from_args(&a).expect_err("refused"));
        assert!(err(BenchArgs { clients: Some(vec![0, 10]), ..args() }).contains("--clients"));
        assert!(err(BenchArgs { clients: Some(vec![MAX_BENCH_CLIENTS + 1]), ..args() }).contains("--clients"));
        assert!(Matrix::from_args(&BenchArgs { clients: Some(vec![MAX_BENCH_CLIENTS]), ..args() }).is_ok());
        assert!(err(BenchArgs { clients: Some(vec![]), ..args() }).contains("--clients"));
        let w = DEFAULT_CLIENT_WINDOW as usize;
        assert!(Matrix::from_args(&BenchArgs { outstanding: Some(w), ..args() }).is_ok());
        assert!(err(BenchArgs { outstanding: Some(w + 1), ..args() }).contains("--outstanding"));
        assert!(err(BenchArgs { outstanding: Some(0), ..args() }).contains("--outstanding"));
        assert!(err(BenchArgs { window_s: Some(0.0), ..args() }).contains("--window-s"));
        assert!(err(BenchArgs { warmup_s: Some(f64::NAN), ..args() }).contains("--warmup-s"));
        assert!(err(BenchArgs { replicas: 5, ..args() }).contains("--replicas"));
        assert!(err(BenchArgs { batch: 1, ..args() }).contains("--batch"));
        assert!(err(BenchArgs { backend: Backend::Thread, ..args() }).contains("--backend"));
        assert!(err(BenchArgs { storage: Some(vec![]), ..args() }).contains("--storage"));
        let pbft_on_disk =
            BenchArgs { protocols: Some(vec![Protocol::Pbft]), storage: Some(vec![Storage::Durable]), ..args() };
        assert!(err(pbft_on_disk).contains("--storage"));
        assert!(
            Matrix::from_args(&BenchArgs {
                backend: Backend::Thread,
                protocols: Some(vec![Protocol::Splitbft]),
                ..args()
            })
            .is_ok()
        );
    }

    #[test]
    fn ratios_compare_the_same_configuration_and_skip_what_was_not_measured() {
        let m = quick();
        let specs = m.points();
        let mut points: Vec<PointResult> = specs
            .iter()
            .map(|s| {
                let durable = s.storage == Storage::Durable;
                let ops = match (s.protocol, s.batching, s.latency_point) {
                    (_, _, true) => 900.0,
                    // Durable peaks at 10 clients, in memory at 50.
                    (Protocol::Splitbft, Batching::Batched, _) if durable => 24_000.0 - s.clients as f64,
                    (Protocol::Splitbft, Batching::Batched, _) => 30_000.0 + s.clients as f64,
                    (Protocol::Pbft, Batching::Batched, _) => 40_000.0,
                    (Protocol::Splitbft, Batching::Unbatched, _) if durable => 500.0,
                    (Protocol::Splitbft, Batching::Unbatched, _) => 1_000.0,
                    (Protocol::Pbft, Batching::Unbatched, _) => 1_250.0,
                };
                let p50 = match (s.protocol, durable) {
                    (Protocol::Splitbft, false) => 880,
                    (Protocol::Splitbft, true) => 2_500,
                    (Protocol::Pbft, _) => 820,
                };
                measured(&m, s, ops, p50)
            })
            .collect();
        let h = headline(&m, &points);
        assert_eq!(h.splitbft_over_pbft_batched, Some(30_050.0 / 40_000.0));
        assert_eq!(h.splitbft_over_pbft_unbatched, Some(0.8));
        assert_eq!((h.ratio_app, h.ratio_clients), (AppKind::Kv, 50));
        assert_eq!(h.splitbft_peak_ops_s, Some(30_050.0));
        assert_eq!(h.pbft_peak_ops_s, Some(40_000.0));
        assert_eq!((h.splitbft_p50_us_1client, h.pbft_p50_us_1client), (Some(880), Some(820)));
        assert_eq!(h.splitbft_durable_p50_us_1client, Some(2_500));
        // Durable against in memory: at the headline's 50 clients, and peak against peak.
        assert_eq!(h.durable_over_memory_batched, Some(23_950.0 / 30_050.0));
        assert_eq!(h.durable_over_memory_batched_peak, Some(23_990.0 / 30_050.0));
        assert_eq!(h.splitbft_durable_peak_ops_s, Some(23_990.0));
        assert_eq!(ratios(&m, &points).len(), 4);

        // A skipped PBFT point leaves its ratio empty rather than dividing by nothing.
        let i = points
            .iter()
            .position(|p| p.protocol == Protocol::Pbft && p.batching == Batching::Unbatched && p.clients == 50)
            .expect("present");
        assert_eq!(specs[i].storage, Storage::Memory);
        points[i] = PointResult::unmeasured(&m, &specs[i], "ledger app unavailable".into(), false);
        let h = headline(&m, &points);
        assert_eq!(h.splitbft_over_pbft_unbatched, None);
        assert_eq!(h.splitbft_over_pbft_batched, Some(30_050.0 / 40_000.0));
        // Zero PBFT throughput has no ratio either.
        let j = points
            .iter()
            .position(|p| p.protocol == Protocol::Pbft && p.batching == Batching::Batched && p.clients == 50);
        points[j.expect("present")].ops_s = Some(0.0);
        assert_eq!(headline(&m, &points).splitbft_over_pbft_batched, None);
    }
}
