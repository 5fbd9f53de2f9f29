//! The closed-loop key-value workload that `demo` and `bench` both drive: `clients`
//! clients, each keeping `outstanding` requests in flight (one task per slot, a "lane"),
//! 10-byte values by default.
//!
//! `demo` stops after a number of requests and counts every completion; `bench` measures
//! by time: a warm-up, then completions and latencies are counted only inside a fixed
//! window, then every lane stops at once (requests still in flight are abandoned).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_client::ClientOptions;
use tokio::sync::watch;

use crate::demo::LocalTcpCluster;

/// Keys each lane cycles through: enough that PUTs update entries rather than one hot key,
/// few enough that the store stays small over long runs.
const KEYS_PER_LANE: u64 = 1000;

/// How often the time-based engine checks whether every lane has completed a request.
const WARMUP_POLL: Duration = Duration::from_millis(10);

/// Which operations the lanes issue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpMix {
    /// Only PUTs that update the lane's keys (the paper's §6 measurements).
    #[default]
    Put,
    /// PUT and GET of the lane's keys, alternating (the demo's workload).
    PutGet,
}

/// When the workload stops and which completions count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// Issue this many requests in total and count all of them.
    Requests(u64),
    /// Count only completions inside a fixed window after a warm-up.
    Timed {
        /// Warm-up before the window. The window opens only once every lane has completed
        /// at least one request too (so queues have reached their steady length), but
        /// never later than `max_warmup`.
        warmup: Duration,
        /// Upper bound of the warm-up.
        max_warmup: Duration,
        /// Length of the measuring window.
        window: Duration,
    },
}

/// What to run against a cluster.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Closed-loop clients (client ids `0..clients`).
    pub clients: usize,
    /// Requests each client keeps in flight.
    pub outstanding: usize,
    /// Value bytes per PUT.
    pub payload: usize,
    /// Operations issued.
    pub mix: OpMix,
    /// Stop rule.
    pub stop: Stop,
    /// Draw progress on stderr.
    pub progress: bool,
    /// Keep every counted completion's time (the demo's crash analysis needs them).
    pub record_completion_times: bool,
}

/// What the workload measured.
#[derive(Debug)]
pub struct Outcome {
    /// When the engine started (before clients connect).
    pub started: Instant,
    /// Counted requests answered with a non-error result.
    pub completed: u64,
    /// Counted requests that failed (timeout or error result).
    pub errors: u64,
    /// Latencies of counted requests, in µs.
    pub latencies: Histogram<u64>,
    /// Completion times of counted successful requests, sorted (only if asked for).
    pub completion_times: Vec<Instant>,
    /// Seconds the counted requests span: the whole run, or the window.
    pub seconds: f64,
    /// Seconds of warm-up actually spent (0 for a request-count run).
    pub warmup_seconds: f64,
    /// Client retransmissions over the whole run.
    pub retransmissions: u64,
}

/// Shared between lanes.
#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    lanes_answered: AtomicUsize,
    /// Window start and end as µs after `started` (0 = not yet open).
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
}

/// The `i`-th operation of a lane.
fn operation(mix: OpMix, client: usize, lane: usize, i: u64, payload: usize) -> KvOp {
    let n = match mix {
        OpMix::Put => i,
        OpMix::PutGet => i / 2,
    };
    let key = format!("c{client}-l{lane}-k{}", n % KEYS_PER_LANE).into_bytes();
    match mix {
        OpMix::PutGet if i % 2 == 1 => KvOp::Get { key },
        _ => KvOp::Put { key, value: vec![b'v'; payload] },
    }
}

/// Runs `workload` against `cluster` and returns what it measured.
pub async fn run(cluster: &LocalTcpCluster, workload: &Workload) -> anyhow::Result<Outcome> {
    let Workload { clients, outstanding, payload, mix, stop, progress, record_completion_times } = workload.clone();
    if clients == 0 || outstanding == 0 {
        bail!("clients and outstanding requests must be at least 1");
    }
    let window = cluster.secrets.config.client_window as usize;
    if outstanding > window {
        bail!("{outstanding} outstanding requests exceed the per-client window W = {window}");
    }
    if clients > cluster.secrets.clients.len() {
        bail!("the cluster has keys for {} clients, not {clients}", cluster.secrets.clients.len());
    }
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut connected = Vec::new();
    let mut lanes = Vec::new();
    for c in 0..clients {
        let options = ClientOptions { outstanding, ..ClientOptions::default() };
        let client = Arc::new(cluster.client(c, options).await.with_context(|| format!("connecting client {c}"))?);
        connected.push(client.clone());
        for lane in 0..outstanding {
            let (client, counters, mut stop_rx) = (client.clone(), counters.clone(), stop_rx.clone());
            lanes.push(tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new(3).expect("3 significant figures is valid");
                let mut times = Vec::new();
                let mut answered = false;
                for i in 0.. {
                    if let Stop::Requests(total) = stop
                        && counters.issued.fetch_add(1, Ordering::Relaxed) >= total
                    {
                        break;
                    }
                    let op = operation(mix, c, lane, i, payload).encode();
                    let t0 = Instant::now();
                    let result = tokio::select! {
                        r = client.invoke(op) => r,
                        _ = stop_rx.wait_for(|stopped| *stopped) => break,
                    };
                    let done = Instant::now();
                    let ok = match result {
                        Ok(result) => !matches!(KvResult::decode(&result), Err(_) | Ok(KvResult::Error(_))),
                        Err(_) => false,
                    };
                    if !answered {
                        answered = true;
                        counters.lanes_answered.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Stop::Timed { .. } = stop {
                        let at = done.duration_since(started).as_micros() as u64;
                        let start = counters.window_start_us.load(Ordering::Acquire);
                        let end = counters.window_end_us.load(Ordering::Acquire);
                        if start == 0 || at < start || at >= end {
                            continue;
                        }
                    }
                    let _ = latencies.record(done.duration_since(t0).as_micros() as u64);
                    if ok && record_completion_times {
                        times.push(done);
                    }
                    if ok { &counters.completed } else { &counters.errors }.fetch_add(1, Ordering::Relaxed);
                }
                (latencies, times)
            }));
        }
    }
    let progress = progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut stderr = std::io::stderr();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = counters.completed.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let _ = write!(stderr, "\r  {done:>9} requests  {:>9.0} ops/s  {secs:>6.1} s", done as f64 / secs);
                let _ = stderr.flush();
            }
        })
    });
    let mut warmup_seconds = 0.0;
    let mut window_seconds = None;
    if let Stop::Timed { warmup, max_warmup, window } = stop {
        tokio::time::sleep(warmup).await;
        let total_lanes = clients * outstanding;
        let give_up = started + max_warmup.max(warmup);
        while counters.lanes_answered.load(Ordering::Relaxed) < total_lanes && Instant::now() < give_up {
            tokio::time::sleep(WARMUP_POLL).await;
        }
        let opened = Instant::now();
        // At least 1 µs so that 0 keeps meaning "not open yet".
        let start_us = (opened.duration_since(started).as_micros() as u64).max(1);
        counters.window_end_us.store(start_us + window.as_micros() as u64, Ordering::Release);
        counters.window_start_us.store(start_us, Ordering::Release);
        warmup_seconds = opened.duration_since(started).as_secs_f64();
        tokio::time::sleep_until((opened + window).into()).await;
        // Stops every lane, abandoning the requests in flight.
        stop_tx.send_replace(true);
        window_seconds = Some(window.as_secs_f64());
    }
    let mut latencies = Histogram::<u64>::new(3).expect("valid histogram");
    let mut completion_times = Vec::new();
    for lane in lanes {
        let (hist, times) = lane.await.context("a workload task panicked")?;
        latencies.add(hist).context("merging latencies")?;
        completion_times.extend(times);
    }
    completion_times.sort_unstable();
    let seconds = window_seconds.unwrap_or_else(|| started.elapsed().as_secs_f64());
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let retransmissions = connected.iter().map(|c| c.stats().retransmissions).sum();
    for client in connected {
        if let Some(client) = Arc::into_inner(client) {
            client.close().await;
        }
    }
    Ok(Outcome {
        started,
        completed: counters.completed.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        latencies,
        completion_times,
        seconds,
        warmup_seconds,
        retransmissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_alternates_over_the_same_key_and_put_updates_keys_in_turn() {
        let ops: Vec<KvOp> = (0..4).map(|i| operation(OpMix::PutGet, 1, 2, i, 10)).collect();
        assert!(matches!(&ops[0], KvOp::Put { key, value } if key == b"c1-l2-k0" && value.len() == 10));
        assert!(matches!(&ops[1], KvOp::Get { key } if key == b"c1-l2-k0"));
        assert!(matches!(&ops[2], KvOp::Put { key, .. } if key == b"c1-l2-k1"));
        let puts: Vec<KvOp> = (0..2).map(|i| operation(OpMix::Put, 0, 0, i, 10)).collect();
        assert!(matches!(&puts[1], KvOp::Put { key, .. } if key == b"c0-l0-k1"));
        assert!(matches!(operation(OpMix::Put, 0, 0, KEYS_PER_LANE, 10), KvOp::Put { key, .. } if key == b"c0-l0-k0"));
    }
}
