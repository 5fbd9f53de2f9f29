//! Prometheus (OpenMetrics text) exposition of a replica's and a gateway's numbers.
//!
//! A replica's numbers live in its broker core and, behind the enclave boundary, in its
//! three compartments (SPEC §5.1: the broker only sees what a compartment reports through
//! `QueryStats`). A scrape asks the node for a fresh report and renders it here, so the
//! hot path carries no metrics code at all: the counters it already keeps are the source.
//! Names are stable and documented in `docs/operations.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use splitbft_broker::latency::LatencyHistogram;
use splitbft_broker::{NodeReport, NodeReporter};
use splitbft_types::CompartmentKind;
use splitbft_types::counters::Counter as Tally;

use crate::http::{HttpCounters, OPENMETRICS, Response, Route};

type Labels = Vec<(String, String)>;

/// How long a scrape waits for the compartments to answer a fresh `QueryStats` (the
/// `thread` backend answers asynchronously) before it reports what it has. A compartment
/// busier than that is reported with its previous answer: compartment series may lag by
/// one scrape under load, broker series never do.
const STATS_REFRESH_WAIT: Duration = Duration::from_millis(20);

/// A compartment that has not answered a stats query within this time is reported as not
/// answering (`/healthz` 503): half a second is far beyond a healthy crossing, even loaded.
const STATS_ANSWER_DEADLINE: Duration = Duration::from_millis(500);

/// One replica's state as a scrape sees it.
#[derive(Clone, Debug)]
pub struct ReplicaSnapshot {
    /// Replica id.
    pub replica: u32,
    /// The node's report (broker counters and the compartments' latest stats).
    pub report: NodeReport,
    /// Events waiting for the broker core (network input not yet handled).
    pub core_queue_depth: usize,
}

impl ReplicaSnapshot {
    /// Takes a snapshot: asks the compartments for fresh stats, waits briefly for them,
    /// and reads the report. `None` if the node has stopped.
    pub async fn take(node: &NodeReporter, replica: u32) -> Option<Self> {
        // The first report carries the stats from the previous query and sends a new one.
        node.report().await?;
        let mut waited = Duration::ZERO;
        loop {
            tokio::time::sleep(STATS_REFRESH_WAIT).await;
            waited += STATS_REFRESH_WAIT;
            let report = node.report().await?;
            let snapshot = ReplicaSnapshot { replica, report, core_queue_depth: node.queue_depth() };
            // A compartment that never answered yet (first scrape) gets up to
            // STATS_ANSWER_DEADLINE before it is reported as not answering.
            if snapshot.healthy() || waited >= STATS_ANSWER_DEADLINE {
                return Some(snapshot);
            }
        }
    }

    fn stats(&self, kind: CompartmentKind) -> Option<&splitbft_types::boundary::Stats> {
        self.report.enclaves.get(kind.index()).and_then(Option::as_ref)
    }

    /// Whether the replica is recovering: a state transfer is under way (started and
    /// neither completed nor refused), or a compartment is behind the recovery fence.
    pub fn recovering(&self) -> bool {
        let started = self.report.broker_counter(Tally::StateTransfersStarted);
        let ended = self.report.broker_counter(Tally::StateTransfersCompleted)
            + self.report.broker_counter(Tally::StateTransfersRejected);
        started > ended || self.fenced()
    }

    /// Whether a compartment is behind the recovery fence (SPEC §10): it signs nothing
    /// yet, and the replica counts against `f` meanwhile.
    pub fn fenced(&self) -> bool {
        CompartmentKind::ALL.into_iter().any(|kind| self.stats(kind).is_some_and(|s| s.recovering))
    }

    /// Healthy: every compartment answered its stats query (none is wedged or gone).
    pub fn healthy(&self) -> bool {
        CompartmentKind::ALL.iter().all(|k| self.stats(*k).is_some())
    }

    /// The replica's view (the highest any of its compartments has entered).
    pub fn view(&self) -> u64 {
        CompartmentKind::ALL.iter().filter_map(|k| self.stats(*k)).map(|s| s.view).max().unwrap_or(0)
    }

    /// Last sequence number the Execution compartment executed.
    pub fn last_executed(&self) -> u64 {
        self.stats(CompartmentKind::Execution).map_or(0, |s| s.last_executed)
    }

    /// The stable checkpoint: the Execution compartment's low watermark `h` (SPEC §4.4).
    pub fn stable_checkpoint(&self) -> u64 {
        self.stats(CompartmentKind::Execution).map_or(0, |s| s.low_watermark)
    }

    /// OpenMetrics text for this snapshot.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("splitbft");
        let broker = Family::<Labels, Counter>::default();
        for (name, value) in &self.report.broker {
            broker.get_or_create(&vec![("event".into(), name.clone())]).inc_by(*value);
        }
        registry.register("broker_events", "Broker counters by event (rejections, batches, transfers)", broker);

        let events = Family::<Labels, Counter>::default();
        let (view, low, log, up, fenced) = (
            Family::<Labels, Gauge>::default(),
            Family::<Labels, Gauge>::default(),
            Family::<Labels, Gauge>::default(),
            Family::<Labels, Gauge>::default(),
            Family::<Labels, Gauge>::default(),
        );
        for kind in CompartmentKind::ALL {
            let compartment = || vec![("compartment".to_owned(), kind.to_string())];
            let Some(stats) = self.stats(kind) else {
                up.get_or_create(&compartment()).set(0);
                continue;
            };
            up.get_or_create(&compartment()).set(1);
            for (name, value) in &stats.counters {
                let labels = vec![("compartment".to_owned(), kind.to_string()), ("event".to_owned(), name.clone())];
                events.get_or_create(&labels).inc_by(*value);
            }
            view.get_or_create(&compartment()).set(gauge_value(stats.view));
            low.get_or_create(&compartment()).set(gauge_value(stats.low_watermark));
            log.get_or_create(&compartment()).set(gauge_value(stats.log_entries));
            fenced.get_or_create(&compartment()).set(i64::from(stats.recovering));
        }
        registry.register(
            "compartment_events",
            "Compartment counters by event, as the compartment reported them (SPEC §5.1)",
            events,
        );
        registry.register("compartment_view", "View each compartment is in", view);
        registry.register("compartment_low_watermark", "Low watermark h: the last stable checkpoint", low);
        registry.register("compartment_log_entries", "Log entries held (bounded by L)", log);
        registry.register(
            "compartment_recovering",
            "1 while the compartment is behind the recovery fence and signs nothing (SPEC §10)",
            fenced,
        );
        registry.register("compartment_up", "1 if the compartment answered the stats query", up);

        let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let g = Gauge::<i64>::default();
            g.set(gauge_value(value));
            registry.register(name, help, g);
        };
        gauge(&mut registry, "replica_id", "This replica's id", u64::from(self.replica));
        gauge(&mut registry, "view", "Current view (highest of the compartments)", self.view());
        gauge(&mut registry, "last_executed", "Last sequence number executed", self.last_executed());
        gauge(
            &mut registry,
            "stable_checkpoint",
            "Sequence number of the last stable checkpoint",
            self.stable_checkpoint(),
        );
        gauge(
            &mut registry,
            "core_queue_depth",
            "Network events waiting for the broker core",
            self.core_queue_depth as u64,
        );
        gauge(
            &mut registry,
            "recovering",
            "1 while a state transfer is under way or a compartment is behind the recovery fence",
            u64::from(self.recovering()),
        );
        gauge(&mut registry, "healthy", "1 if every compartment answers", u64::from(self.healthy()));
        let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            registry.register(name, help, c);
        };
        let b = |counter: Tally| self.report.broker_counter(counter);
        counter(&mut registry, "view_changes", "View changes this replica started", b(Tally::ViewChangesStarted));
        counter(&mut registry, "batches_ordered", "Batches the broker saw ordered", b(Tally::BatchesOrdered));
        counter(
            &mut registry,
            "requests_ordered",
            "Requests in ordered batches (÷ batches = batch size)",
            b(Tally::RequestsOrdered),
        );
        counter(&mut registry, "requests_executed", "Requests executed", b(Tally::RequestsExecuted));
        registry.register(
            "request_latency_seconds",
            "Requests executed here: from when this replica first learned the request to its reply",
            FixedHistogram::from(&self.report.request_latency),
        );
        render(&registry)
    }
}

/// A histogram whose buckets were counted elsewhere (the broker's [`LatencyHistogram`]),
/// rendered as a Prometheus histogram at scrape time.
#[derive(Debug)]
struct FixedHistogram {
    sum_seconds: f64,
    count: u64,
    /// `(upper bound in seconds, count in this bucket)`, not cumulative (the encoder sums).
    buckets: Vec<(f64, u64)>,
}

impl From<&LatencyHistogram> for FixedHistogram {
    fn from(h: &LatencyHistogram) -> Self {
        let seconds = |us: u64| us as f64 / 1e6;
        FixedHistogram {
            sum_seconds: seconds(h.sum_us()),
            count: h.count(),
            buckets: h.buckets().map(|(bound, n)| (bound.map_or(f64::INFINITY, seconds), n)).collect(),
        }
    }
}

impl prometheus_client::encoding::EncodeMetric for FixedHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum_seconds,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    encode(&mut text, registry).expect("encoding into a String");
    text
}

/// The `/metrics` and `/healthz` answers of a replica.
pub async fn replica_endpoint(node: &NodeReporter, replica: u32, route: Route) -> Response {
    let Some(snapshot) = ReplicaSnapshot::take(node, replica).await else {
        return Response { status: 503, content_type: "text/plain; charset=utf-8", body: "replica stopped\n".into() };
    };
    match route {
        Route::Metrics => Response { status: 200, content_type: OPENMETRICS, body: snapshot.encode() },
        Route::Health => {
            let status = if snapshot.healthy() { 200 } else { 503 };
            let body = serde_json::json!({
                "healthy": snapshot.healthy(),
                "replica": replica,
                "view": snapshot.view(),
                "last_executed": snapshot.last_executed(),
                "stable_checkpoint": snapshot.stable_checkpoint(),
                "recovering": snapshot.recovering(),
            });
            Response { status, content_type: "application/json", body: format!("{body}\n") }
        }
    }
}

/// Serves a replica's `/metrics` and `/healthz` on `listener` while `node` runs.
pub async fn serve_replica(listener: tokio::net::TcpListener, node: NodeReporter, replica: u32) {
    let handler = move |route| {
        let node = node.clone();
        async move { replica_endpoint(&node, replica, route).await }
    };
    crate::http::serve(listener, handler, Arc::new(HttpCounters::default())).await;
}

/// Labels of a gateway command counter: the command's name, from a fixed set (unknown
/// commands share one label, so clients cannot grow the label space).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CommandLabels {
    /// Lower-case command name, or `unknown`.
    pub command: &'static str,
}

/// The gateway's own metrics, updated as commands complete.
pub struct GatewayMetrics {
    registry: Registry,
    /// Commands answered, by command.
    pub commands: Family<CommandLabels, Counter>,
    /// Commands answered with an error, by command.
    pub errors: Family<CommandLabels, Counter>,
    /// Time from a command's arrival to its answer being ready, in seconds.
    pub latency: Histogram,
    /// Open client connections.
    pub connections: Gauge,
    /// Commands received and not yet answered, over all connections.
    pub in_flight: Gauge,
    /// Connections closed for a protocol error (bad framing, oversize input).
    pub protocol_errors: Counter,
    /// Cluster client counters, refreshed at each scrape.
    client_requests: Counter,
    client_retransmissions: Counter,
    client_timeouts: Counter,
    client_rejected: Counter,
    last_client: [AtomicU64; 4],
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Registers every gateway metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("splitbft_gateway");
        let commands = Family::<CommandLabels, Counter>::default();
        let errors = Family::<CommandLabels, Counter>::default();
        // 100 µs to ~26 s: an idle cluster answers in about half a millisecond, a loaded
        // one in tens of milliseconds, a view change in about a second.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18));
        let connections = Gauge::default();
        let in_flight = Gauge::default();
        let protocol_errors = Counter::default();
        let client_requests = Counter::default();
        let client_retransmissions = Counter::default();
        let client_timeouts = Counter::default();
        let client_rejected = Counter::default();
        registry.register("commands", "Commands answered", commands.clone());
        registry.register("command_errors", "Commands answered with an error", errors.clone());
        registry.register("command_latency_seconds", "Command arrival to answer", latency.clone());
        registry.register("connections", "Open client connections", connections.clone());
        registry.register("commands_in_flight", "Commands received, not yet answered", in_flight.clone());
        registry.register("protocol_errors", "Connections closed for bad RESP input", protocol_errors.clone());
        registry.register("cluster_requests", "Requests sent to the cluster", client_requests.clone());
        registry.register(
            "cluster_retransmissions",
            "Retransmission rounds to every replica",
            client_retransmissions.clone(),
        );
        registry.register("cluster_timeouts", "Requests that timed out", client_timeouts.clone());
        registry.register(
            "cluster_replies_ignored",
            "Replica replies not counted: late (after f + 1 agreed), duplicate or invalid",
            client_rejected.clone(),
        );
        GatewayMetrics {
            registry,
            commands,
            errors,
            latency,
            connections,
            in_flight,
            protocol_errors,
            client_requests,
            client_retransmissions,
            client_timeouts,
            client_rejected,
            last_client: Default::default(),
        }
    }

    /// Adds the growth of the sessions' client counters since the last scrape.
    pub fn refresh_client(&self, stats: &[splitbft_client::ClientStats]) {
        let sum = |f: fn(&splitbft_client::ClientStats) -> u64| stats.iter().map(f).sum::<u64>();
        let now = [
            sum(|s| s.requests_sent),
            sum(|s| s.retransmissions),
            sum(|s| s.timeouts),
            sum(splitbft_client::ClientStats::rejected_total),
        ];
        let targets =
            [&self.client_requests, &self.client_retransmissions, &self.client_timeouts, &self.client_rejected];
        for ((last, value), counter) in self.last_client.iter().zip(now).zip(targets) {
            let before = last.swap(value, Ordering::Relaxed);
            counter.inc_by(value.saturating_sub(before));
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        render(&self.registry)
    }
}
