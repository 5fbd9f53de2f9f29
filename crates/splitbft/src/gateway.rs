//! The RESP gateway: Redis clients talk to the replicated key-value store (SPEC §7).
//!
//! The gateway is a client of the cluster like any other (SPEC §3): it holds a few
//! long-lived, attested, registered sessions ([`splitbft_client::Client`], SPEC §6) and
//! turns each Redis command into key-value ops, keeping many requests outstanding. It is
//! not part of the trusted computing base of the replicas — it sees plaintext keys and
//! values, like any client — so run it where you would run the application using it.
//!
//! Each connection is pipelined: commands are decoded (with `redis-protocol`) as they
//! arrive, up to [`MAX_PIPELINE`] run at once, and answers are written in command order.
//! RESP3 is spoken after `HELLO 3` (maps and nulls in their RESP3 forms).
//!
//! Multi-key commands (`DEL`, `EXISTS`, `MGET`, `MSET`) run one op per key: each op is
//! linearizable, the command as a whole is not atomic. `INCR` is one atomic op of the
//! store (`KvOp::Incr`), so concurrent increments never lose an update.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redis_protocol::resp3::types::BytesFrame as Resp3Frame;
use splitbft_apps::kv::{KvOp, KvResult, MAX_SCAN_ENTRIES};
use splitbft_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{CommandLabels, GatewayMetrics};

/// Commands of one connection running at once. `redis-benchmark -P 16` keeps 16 per
/// connection; 256 lets deep pipelines overlap without letting one connection queue
/// unbounded work (reading stops while it is full).
pub const MAX_PIPELINE: usize = 256;
/// Largest unparsed input held per connection. A command carries at most a few keys and
/// values of [`splitbft_apps::kv::MAX_VALUE_BYTES`] (32 KiB); 4 MiB is far above any
/// sensible `MSET` and bounds the memory a client can pin. Past it the connection closes.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// Most arguments one command may have (bounds the ops a single `MSET`/`MGET` fans out).
pub const MAX_ARGS: usize = 1024;
/// Redis connections served at once; further ones wait in the kernel's accept queue.
/// Each may hold [`MAX_INPUT_BYTES`] of input and [`MAX_PIPELINE`] commands, so this
/// bounds the gateway's memory; Redis client pools rarely open more than a few hundred.
pub const MAX_CONNECTIONS: usize = 1024;
/// `SCAN` page size when the client gives no `COUNT` (Redis's default).
const DEFAULT_SCAN_COUNT: usize = 10;

/// The commands served. Anything else is answered `-ERR unknown command`.
pub const COMMANDS: &[(&str, i64)] = &[
    ("get", 2),
    ("set", 3),
    ("del", -2),
    ("exists", -2),
    ("mget", -2),
    ("mset", -3),
    ("incr", 2),
    ("scan", -2),
    ("ping", -1),
    ("echo", 2),
    ("info", -1),
    ("command", -1),
    ("hello", -1),
    ("quit", 1),
];

/// A gateway: cluster sessions shared by every Redis connection.
pub struct Gateway {
    sessions: Vec<Client>,
    next: AtomicUsize,
    /// Replicas and `f`, for `INFO`.
    replicas: usize,
    f: usize,
    /// The gateway's metrics.
    pub metrics: GatewayMetrics,
}

/// An answer, before it is encoded for the connection's protocol version.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`-like status.
    Status(&'static str),
    /// An error line (without the leading `-`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null bulk string (RESP3: null).
    Null,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP2: a flat array of keys and values).
    Map(Vec<(Reply, Reply)>),
}

/// What a command asks of the connection besides its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    None,
    /// Switch to this protocol version after this answer (HELLO).
    Protocol(u8),
    /// Close after this answer (QUIT).
    Close,
}

fn err(message: impl Into<String>) -> Reply {
    Reply::Error(message.into())
}

fn wrong_arity(name: &str) -> Reply {
    err(format!("ERR wrong number of arguments for '{name}' command"))
}

fn bulk(b: Vec<u8>) -> Reply {
    Reply::Bulk(Bytes::from(b))
}

impl Gateway {
    /// A gateway over registered sessions (at least one).
    pub fn new(sessions: Vec<Client>, replicas: usize, f: usize) -> Self {
        assert!(!sessions.is_empty(), "a gateway needs at least one session");
        Gateway { sessions, next: AtomicUsize::new(0), replicas, f, metrics: GatewayMetrics::new() }
    }

    /// Accepts Redis connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let gateway = Arc::clone(&self);
                    tokio::spawn(async move {
                        let _permit = permit;
                        gateway.connection(stream).await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Statistics of every session, summed by the metrics endpoint.
    pub fn client_stats(&self) -> Vec<splitbft_client::ClientStats> {
        self.sessions.iter().map(Client::stats).collect()
    }

    fn session(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        &self.sessions[i]
    }

    /// Runs one op on the cluster.
    async fn kv(&self, op: KvOp) -> Result<KvResult, Reply> {
        let bytes = self.session().invoke(op.encode()).await.map_err(|e| err(format!("ERR cluster: {e}")))?;
        match KvResult::decode(&bytes) {
            Ok(KvResult::Error(e)) => Err(err(format!("ERR {e}"))),
            Ok(result) => Ok(result),
            Err(_) => Err(err("ERR cluster returned an undecodable result")),
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) {
        self.metrics.connections.inc();
        if let Err(error) = self.run_connection(stream).await {
            tracing::debug!(%error, "gateway connection ended");
        }
        self.metrics.connections.dec();
    }

    async fn run_connection(&self, stream: TcpStream) -> std::io::Result<()> {
        let (mut rd, mut wr) = stream.into_split();
        let mut input = BytesMut::with_capacity(16 * 1024);
        let mut output = BytesMut::with_capacity(16 * 1024);
        let mut pending = FuturesOrdered::new();
        let mut protocol = 2u8;
        let mut closing = false;
        let mut eof = false;
        loop {
            // Decode what is buffered, while there is room in the pipeline.
            while !closing && pending.len() < MAX_PIPELINE {
                if let Err(message) = check_flat(&input) {
                    pending.push_back(immediate(err(format!("ERR Protocol error: {message}"))));
                    self.metrics.protocol_errors.inc();
                    closing = true;
                    break;
                }
                match redis_protocol::resp2::decode::decode_bytes_mut(&mut input) {
                    Ok(Some((frame, _, _))) => {
                        let args = match command_args(frame) {
                            Ok(args) => args,
                            Err(message) => {
                                pending.push_back(immediate(err(format!("ERR Protocol error: {message}"))));
                                closing = true;
                                self.metrics.protocol_errors.inc();
                                break;
                            }
                        };
                        closing |= args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"quit"));
                        pending.push_back(futures_util::future::Either::Right(self.command(args)));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        pending.push_back(immediate(err(format!("ERR Protocol error: {e}"))));
                        self.metrics.protocol_errors.inc();
                        closing = true;
                    }
                }
            }
            if pending.is_empty() && (closing || eof) {
                return Ok(());
            }
            let can_read = !closing && !eof && pending.len() < MAX_PIPELINE;
            tokio::select! {
                read = rd.read_buf(&mut input), if can_read => {
                    if read? == 0 {
                        eof = true;
                    } else if input.len() > MAX_INPUT_BYTES {
                        self.metrics.protocol_errors.inc();
                        pending.push_back(immediate(err("ERR Protocol error: command too large")));
                        closing = true;
                        input.clear();
                    }
                }
                Some(first) = pending.next(), if !pending.is_empty() => {
                    // Coalesce every answer that is already ready into one write.
                    let mut ready = Some(first);
                    while let Some((reply, effect)) = ready.take() {
                        encode(&reply, protocol, &mut output);
                        match effect {
                            Effect::Protocol(v) => protocol = v,
                            Effect::Close => {
                                closing = true;
                                pending.clear();
                            }
                            Effect::None => {}
                        }
                        ready = pending.next().now_or_never().flatten();
                    }
                    wr.write_all(&output).await?;
                    output.clear();
                }
            }
        }
    }

    /// Runs one command; the answer and what it does to the connection.
    async fn command(&self, args: Vec<Bytes>) -> (Reply, Effect) {
        let started = Instant::now();
        let _in_flight = InFlight::new(&self.metrics.in_flight);
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let known = COMMANDS.iter().find(|(n, _)| *n == name);
        let (reply, effect) = match known {
            None => {
                let shown: Vec<String> =
                    args[1..].iter().take(8).map(|a| format!("'{}'", String::from_utf8_lossy(a))).collect();
                (
                    err(format!(
                        "ERR unknown command '{}', with args beginning with: {}",
                        String::from_utf8_lossy(&args[0]),
                        shown.join(" ")
                    )),
                    Effect::None,
                )
            }
            Some(&(n, arity)) if !arity_ok(arity, args.len()) => (wrong_arity(n), Effect::None),
            Some(&(n, _)) => self.run(n, &args).await,
        };
        let label = CommandLabels { command: known.map_or("unknown", |(n, _)| n) };
        self.metrics.commands.get_or_create(&label).inc();
        if matches!(reply, Reply::Error(_)) {
            self.metrics.errors.get_or_create(&label).inc();
        }
        self.metrics.latency.observe(started.elapsed().as_secs_f64());
        (reply, effect)
    }

    async fn run(&self, name: &str, args: &[Bytes]) -> (Reply, Effect) {
        let key = |i: usize| args[i].to_vec();
        let reply = match name {
            "ping" => match args.len() {
                1 => Reply::Status("PONG"),
                2 => Reply::Bulk(args[1].clone()),
                _ => wrong_arity(name),
            },
            "echo" => Reply::Bulk(args[1].clone()),
            "quit" => return (Reply::Status("OK"), Effect::Close),
            "hello" => return self.hello(args),
            "command" => command_info(args),
            "info" => self.info(),
            "get" => match self.kv(KvOp::Get { key: key(1) }).await {
                Ok(KvResult::Value(Some(v))) => bulk(v),
                Ok(KvResult::Value(None)) => Reply::Null,
                Ok(_) => unexpected(),
                Err(e) => e,
            },
            "set" => match args.len() {
                3 => match self.kv(KvOp::Put { key: key(1), value: key(2) }).await {
                    Ok(KvResult::Stored { .. }) => Reply::Status("OK"),
                    Ok(_) => unexpected(),
                    Err(e) => e,
                },
                // EX, NX, GET... would need more than one op or expiry, which the store lacks.
                _ => err("ERR syntax error (SET options are not supported by this gateway)"),
            },
            "del" => self.count_keys(&args[1..], |key| KvOp::Delete { key }).await,
            "exists" => self.count_keys(&args[1..], |key| KvOp::Get { key }).await,
            "mget" => {
                let results =
                    futures_util::future::join_all(args[1..].iter().map(|k| self.kv(KvOp::Get { key: k.to_vec() })))
                        .await;
                let mut values = Vec::with_capacity(results.len());
                for r in results {
                    values.push(match r {
                        Ok(KvResult::Value(Some(v))) => bulk(v),
                        Ok(KvResult::Value(None)) => Reply::Null,
                        Ok(_) => unexpected(),
                        Err(e) => return (e, Effect::None),
                    });
                }
                Reply::Array(values)
            }
            "mset" => {
                if args.len().is_multiple_of(2) {
                    return (wrong_arity(name), Effect::None);
                }
                let results = futures_util::future::join_all(
                    args[1..].chunks(2).map(|kv| self.kv(KvOp::Put { key: kv[0].to_vec(), value: kv[1].to_vec() })),
                )
                .await;
                match results.into_iter().find_map(Result::err) {
                    Some(e) => e,
                    None => Reply::Status("OK"),
                }
            }
            "incr" => self.incr(key(1)).await,
            "scan" => self.scan(args).await,
            _ => unreachable!("every entry of COMMANDS is handled"),
        };
        (reply, Effect::None)
    }

    /// DEL and EXISTS: the number of keys for which the op found a value.
    async fn count_keys(&self, keys: &[Bytes], op: impl Fn(Vec<u8>) -> KvOp) -> Reply {
        let results = futures_util::future::join_all(keys.iter().map(|k| self.kv(op(k.to_vec())))).await;
        let mut count = 0;
        for r in results {
            match r {
                Ok(KvResult::Value(v) | KvResult::Deleted { previous: v }) => count += i64::from(v.is_some()),
                Ok(_) => return unexpected(),
                Err(e) => return e,
            }
        }
        Reply::Int(count)
    }

    /// INCR: one atomic op executed by the state machine (`KvOp::Incr`), so concurrent
    /// increments neither lose an update nor retry.
    async fn incr(&self, key: Vec<u8>) -> Reply {
        match self.kv(KvOp::Incr { key, by: 1 }).await {
            Ok(KvResult::Incremented { value }) => Reply::Int(value),
            Ok(_) => unexpected(),
            Err(e) => e,
        }
    }

    /// SCAN cursor [MATCH pattern] [COUNT n]. The cursor is the number of matching keys
    /// already returned; the store's prefix scan returns at most [`MAX_SCAN_ENTRIES`]
    /// keys, so iteration ends there (counted as truncated in the reply's last page).
    async fn scan(&self, args: &[Bytes]) -> Reply {
        let Some(offset) = std::str::from_utf8(&args[1]).ok().and_then(|s| s.parse::<usize>().ok()) else {
            return err("ERR invalid cursor");
        };
        let mut pattern: Option<Vec<u8>> = None;
        let mut count = DEFAULT_SCAN_COUNT;
        let mut rest = args[2..].chunks(2);
        for option in rest.by_ref() {
            let [name, value] = option else { return err("ERR syntax error") };
            if name.eq_ignore_ascii_case(b"match") {
                pattern = Some(value.to_vec());
            } else if name.eq_ignore_ascii_case(b"count") {
                match std::str::from_utf8(value).ok().and_then(|s| s.parse::<usize>().ok()) {
                    Some(n) if n > 0 => count = n,
                    _ => return err("ERR value is not an integer or out of range"),
                }
            } else {
                return err("ERR syntax error");
            }
        }
        let pattern = pattern.unwrap_or_else(|| b"*".to_vec());
        let prefix = glob_prefix(&pattern);
        let end = offset.saturating_add(count).min(MAX_SCAN_ENTRIES);
        // Pages (bounded in entries and bytes) up to MAX_SCAN_ENTRIES keys in all.
        let mut entries = Vec::new();
        let mut start: Option<Vec<u8>> = None;
        while entries.len() < MAX_SCAN_ENTRIES {
            let limit = (MAX_SCAN_ENTRIES - entries.len()) as u32;
            let op = match start.take() {
                None => KvOp::Scan { prefix: prefix.clone(), limit },
                Some(start) => KvOp::ScanFrom { prefix: prefix.clone(), start, limit },
            };
            match self.kv(op).await {
                Ok(KvResult::Page { entries: page, next }) => {
                    entries.extend(page);
                    match next {
                        Some(next) => start = Some(next),
                        None => break,
                    }
                }
                Ok(_) => return unexpected(),
                Err(e) => return e,
            }
        }
        let matching: Vec<Vec<u8>> = entries.into_iter().map(|(k, _)| k).filter(|k| glob_match(&pattern, k)).collect();
        let page: Vec<Reply> =
            matching.iter().skip(offset).take(end.saturating_sub(offset)).cloned().map(bulk).collect();
        let next = if end < matching.len() { end } else { 0 };
        Reply::Array(vec![Reply::Bulk(Bytes::from(next.to_string())), Reply::Array(page)])
    }

    fn hello(&self, args: &[Bytes]) -> (Reply, Effect) {
        let version = match args.get(1) {
            None => None,
            Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<u8>().ok()) {
                Some(v @ (2 | 3)) => Some(v),
                _ => return (err("NOPROTO unsupported protocol version"), Effect::None),
            },
        };
        // AUTH and SETNAME are accepted and ignored: the gateway has no users.
        let proto = i64::from(version.unwrap_or(2));
        let s = |t: &str| Reply::Bulk(Bytes::from(t.to_owned()));
        let map = Reply::Map(vec![
            (s("server"), s("splitbft")),
            (s("version"), s(env!("CARGO_PKG_VERSION"))),
            (s("proto"), Reply::Int(proto)),
            (s("id"), Reply::Int(0)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (s("modules"), Reply::Array(Vec::new())),
        ]);
        (map, version.map_or(Effect::None, Effect::Protocol))
    }

    fn info(&self) -> Reply {
        let view = self.sessions.iter().map(|c| c.view()).max().unwrap_or(0);
        let stats = self.client_stats();
        let text = format!(
            "# Server\r\nredis_version:7.0.0\r\nsplitbft_version:{}\r\nredis_mode:standalone\r\n\
             # Cluster\r\nreplicas:{}\r\nf:{}\r\nview:{view}\r\nsessions:{}\r\n\
             # Stats\r\ncluster_requests:{}\r\ncluster_completed:{}\r\ncluster_timeouts:{}\r\n\
             cluster_retransmissions:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.replicas,
            self.f,
            self.sessions.len(),
            stats.iter().map(|s| s.requests_sent).sum::<u64>(),
            stats.iter().map(|s| s.completed).sum::<u64>(),
            stats.iter().map(|s| s.timeouts).sum::<u64>(),
            stats.iter().map(|s| s.retransmissions).sum::<u64>(),
        );
        Reply::Bulk(Bytes::from(text))
    }
}

/// Counts a command in flight until it is answered or dropped (a closing connection).
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An answer known at decode time (a protocol error), which closes the connection.
fn immediate<F>(reply: Reply) -> futures_util::future::Either<futures_util::future::Ready<(Reply, Effect)>, F> {
    futures_util::future::Either::Left(futures_util::future::ready((reply, Effect::Close)))
}

fn unexpected() -> Reply {
    err("ERR cluster answered with a result of the wrong kind")
}

/// Redis arity: positive is exact, negative is a minimum.
fn arity_ok(arity: i64, len: usize) -> bool {
    let len = len as i64;
    if arity >= 0 { len == arity } else { len >= -arity }
}

/// Refuses, before the decoder sees it, a first frame that is an array holding anything
/// but bulk or simple strings, or more than [`MAX_ARGS`] of them. The decoder recurses
/// into nested arrays, so a client sending `*1\r\n` a million times would overflow its
/// stack; a command is never nested, so nesting is refused at the first level. Only
/// headers are read here (lengths and types); the crate does the decoding.
fn check_flat(buf: &[u8]) -> Result<(), &'static str> {
    if buf.first() != Some(&b'*') {
        // Other frame types do not nest; the decoder handles (and command_args refuses) them.
        return Ok(());
    }
    let line = |from: usize| -> Option<(usize, usize)> {
        // Header lines are short; a length line longer than 32 bytes is not one.
        let end = buf[from..].iter().take(32).position(|&b| b == b'\r')? + from;
        Some((from, end))
    };
    let number = |(from, end): (usize, usize)| -> Result<i64, &'static str> {
        std::str::from_utf8(&buf[from..end]).ok().and_then(|s| s.parse().ok()).ok_or("invalid length")
    };
    let Some(header) = line(1) else {
        return if buf.len() > 33 { Err("invalid array header") } else { Ok(()) };
    };
    let count = number(header)?;
    if count > MAX_ARGS as i64 {
        return Err("too many arguments");
    }
    let mut pos = header.1 + 2;
    for _ in 0..count.max(0) {
        match buf.get(pos) {
            None => return Ok(()),
            Some(b'$') => {
                let Some(len_line) = line(pos + 1) else {
                    return if buf.len() > pos + 33 { Err("invalid bulk length") } else { Ok(()) };
                };
                let len = number(len_line)?;
                pos = len_line.1 + 2 + usize::try_from(len.max(0)).map_err(|_| "invalid bulk length")? + 2;
            }
            Some(b'+') => {
                let Some(end) = buf[pos..].iter().position(|&b| b == b'\r') else { return Ok(()) };
                pos += end + 2;
            }
            Some(_) => return Err("expected an array of bulk strings"),
        }
    }
    Ok(())
}

/// A command must be a non-empty array of bulk (or simple) strings.
fn command_args(frame: Resp2Frame) -> Result<Vec<Bytes>, &'static str> {
    let Resp2Frame::Array(items) = frame else { return Err("expected an array of bulk strings") };
    if items.is_empty() {
        return Err("empty command");
    }
    if items.len() > MAX_ARGS {
        return Err("too many arguments");
    }
    items
        .into_iter()
        .map(|item| match item {
            Resp2Frame::BulkString(b) | Resp2Frame::SimpleString(b) => Ok(b),
            _ => Err("expected an array of bulk strings"),
        })
        .collect()
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS` (empty: there are no docs to give) and
/// `COMMAND INFO name...`.
fn command_info(args: &[Bytes]) -> Reply {
    let entry = |(name, arity): (&str, i64)| {
        let first_key = i64::from(!matches!(name, "ping" | "echo" | "info" | "command" | "hello" | "quit" | "scan"));
        let last_key = match name {
            "del" | "exists" | "mget" => -1,
            "mset" => -1,
            _ => first_key,
        };
        let step = if name == "mset" { 2 } else { first_key };
        Reply::Array(vec![
            Reply::Bulk(Bytes::from(name.to_owned())),
            Reply::Int(arity),
            Reply::Array(Vec::new()),
            Reply::Int(first_key),
            Reply::Int(last_key),
            Reply::Int(step),
        ])
    };
    match args.get(1).map(|a| a.to_ascii_lowercase()) {
        None => Reply::Array(COMMANDS.iter().map(|&c| entry(c)).collect()),
        Some(sub) if sub == b"count" => Reply::Int(COMMANDS.len() as i64),
        Some(sub) if sub == b"docs" => Reply::Map(Vec::new()),
        Some(sub) if sub == b"info" => Reply::Array(
            args[2..]
                .iter()
                .map(|a| {
                    let lower = String::from_utf8_lossy(a).to_ascii_lowercase();
                    COMMANDS.iter().find(|(n, _)| *n == lower).map_or(Reply::Null, |&c| entry(c))
                })
                .collect(),
        ),
        Some(_) => err("ERR unknown subcommand of 'command' (COUNT, DOCS and INFO are served)"),
    }
}

/// The literal prefix of a glob pattern (what the store's prefix scan can narrow on).
fn glob_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' | b'?' | b'[' => break,
            b'\\' if i + 1 < pattern.len() => {
                prefix.push(pattern[i + 1]);
                i += 2;
            }
            c => {
                prefix.push(c);
                i += 1;
            }
        }
    }
    prefix
}

/// Redis glob matching: `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Iterative with one backtrack
/// point, so its cost is bounded by `pattern.len() * key.len()`.
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, k));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    k += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, key[k])
                        && matched
                    {
                        p = next;
                        k += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == key[k] => {
                    p += 2;
                    k += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == key[k] => {
                    p += 1;
                    k += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sk)) => {
                p = sp + 1;
                k = sk + 1;
                star = Some((sp, sk + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == b'['`: whether it
/// matched, and the index after the class. `None` if the class is not closed.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    (i < pattern.len()).then_some((matched != negate, i + 1))
}

/// Encodes `reply` for protocol version 2 or 3 at the end of `out`.
pub fn encode(reply: &Reply, protocol: u8, out: &mut BytesMut) {
    // Encoding into a growable buffer only fails on frames the encoder cannot represent,
    // which `Reply` never produces.
    if protocol >= 3 {
        redis_protocol::resp3::encode::complete::extend_encode(out, &to_resp3(reply), false)
            .expect("a RESP3 frame built from a Reply encodes");
    } else {
        redis_protocol::resp2::encode::extend_encode(out, &to_resp2(reply), false)
            .expect("a RESP2 frame built from a Reply encodes");
    }
}

fn to_resp2(reply: &Reply) -> Resp2Frame {
    match reply {
        Reply::Status(s) => Resp2Frame::SimpleString(Bytes::from_static(s.as_bytes())),
        Reply::Error(e) => Resp2Frame::Error(e.clone().into()),
        Reply::Int(i) => Resp2Frame::Integer(*i),
        Reply::Bulk(b) => Resp2Frame::BulkString(b.clone()),
        Reply::Null => Resp2Frame::Null,
        Reply::Array(items) => Resp2Frame::Array(items.iter().map(to_resp2).collect()),
        Reply::Map(pairs) => Resp2Frame::Array(pairs.iter().flat_map(|(k, v)| [to_resp2(k), to_resp2(v)]).collect()),
    }
}

fn to_resp3(reply: &Reply) -> Resp3Frame {
    match reply {
        Reply::Status(s) => Resp3Frame::SimpleString { data: Bytes::from_static(s.as_bytes()), attributes: None },
        Reply::Error(e) => Resp3Frame::SimpleError { data: e.clone().into(), attributes: None },
        Reply::Int(i) => Resp3Frame::Number { data: *i, attributes: None },
        Reply::Bulk(b) => Resp3Frame::BlobString { data: b.clone(), attributes: None },
        Reply::Null => Resp3Frame::Null,
        Reply::Array(items) => Resp3Frame::Array { data: items.iter().map(to_resp3).collect(), attributes: None },
        Reply::Map(pairs) => {
            Resp3Frame::Map { data: pairs.iter().map(|(k, v)| (to_resp3(k), to_resp3(v))).collect(), attributes: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"user:*", b"user:42"));
        assert!(!glob_match(b"user:*", b"order:42"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(!glob_match(b"h?llo", b"heello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob_match(b"*a*b", b"xxaxxbxxc"));
        assert_eq!(glob_prefix(b"user:*"), b"user:");
        assert_eq!(glob_prefix(b"a\\*b*"), b"a*b");
        assert_eq!(glob_prefix(b"*"), b"");
    }

    #[test]
    fn arity_rules() {
        assert!(arity_ok(2, 2) && !arity_ok(2, 3) && !arity_ok(2, 1));
        assert!(arity_ok(-2, 2) && arity_ok(-2, 9) && !arity_ok(-2, 1));
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        let mut out = BytesMut::new();
        encode(&Reply::Null, 2, &mut out);
        encode(&Reply::Null, 3, &mut out);
        encode(&Reply::Map(vec![(Reply::Int(1), Reply::Status("OK"))]), 2, &mut out);
        encode(&Reply::Map(vec![(Reply::Int(1), Reply::Status("OK"))]), 3, &mut out);
        encode(&err("ERR x"), 2, &mut out);
        assert_eq!(&out[..], b"$-1\r\n_\r\n*2\r\n:1\r\n+OK\r\n%1\r\n:1\r\n+OK\r\n-ERR x\r\n");
    }

    #[test]
    fn commands_must_be_arrays_of_strings() {
        let ok = Resp2Frame::Array(vec![Resp2Frame::BulkString(Bytes::from_static(b"GET"))]);
        assert_eq!(command_args(ok).unwrap(), vec![Bytes::from_static(b"GET")]);
        assert!(command_args(Resp2Frame::Integer(1)).is_err());
        assert!(command_args(Resp2Frame::Array(Vec::new())).is_err());
        assert!(command_args(Resp2Frame::Array(vec![Resp2Frame::Array(Vec::new())])).is_err());
        let too_many = Resp2Frame::Array(vec![Resp2Frame::BulkString(Bytes::new()); MAX_ARGS + 1]);
        assert_eq!(command_args(too_many), Err("too many arguments"));
        let at_limit = Resp2Frame::Array(vec![Resp2Frame::BulkString(Bytes::new()); MAX_ARGS]);
        assert_eq!(command_args(at_limit).map(|a| a.len()), Ok(MAX_ARGS));
    }

    #[test]
    fn nested_or_oversized_input_is_refused_before_the_decoder() {
        // The decoder recurses into nested arrays; a hostile client must not reach it.
        let mut nested = Vec::new();
        for _ in 0..100_000 {
            nested.extend_from_slice(b"*1\r\n");
        }
        assert_eq!(check_flat(&nested), Err("expected an array of bulk strings"));
        let later = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n*1\r\n*1\r\n";
        assert_eq!(check_flat(later), Err("expected an array of bulk strings"));
        assert_eq!(check_flat(format!("*{}\r\n", MAX_ARGS + 1).as_bytes()), Err("too many arguments"));
        assert_eq!(check_flat(format!("*{MAX_ARGS}\r\n").as_bytes()), Ok(()));
        assert_eq!(check_flat(b"*x\r\n"), Err("invalid length"));
        // Complete and partial flat commands pass; the decoder then takes them.
        assert_eq!(check_flat(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), Ok(()));
        assert_eq!(check_flat(b"*2\r\n$3\r\nGE"), Ok(()));
        assert_eq!(check_flat(b"*2\r\n$3\r\nGET\r\n$"), Ok(()));
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
        let (frame, _, _) = redis_protocol::resp2::decode::decode_bytes_mut(&mut buf).unwrap().unwrap();
        assert_eq!(command_args(frame).unwrap().len(), 2);
    }
}
