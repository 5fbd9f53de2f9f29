//! The RESP gateway and the metrics endpoints against a 4-process cluster, driven by the
//! stock Redis tools (`redis-cli`, `redis-benchmark`: Debian `redis-tools`, which
//! `.ci/run` installs): `cargo test -p splitbft --test gateway -- --ignored`.
//!
//! Proves: `redis-cli SET` then `GET` round-trips through the replicated store; a scripted
//! session of every supported command answers as Redis would; concurrent `INCR`s lose no
//! update (`INCR` is one atomic op of the store); `redis-benchmark` runs against it;
//! every replica's `/metrics` parses as Prometheus text and its counters move under load; `status` reports all four
//! replicas; `/healthz` answers.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use splitbft_testkit::process::{Processes, free_ports, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

fn spawn(args: &[&str], config: &Path) -> Child {
    Command::new(BIN)
        .args(&args[..1])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `redis-cli -p PORT` with `script` on stdin (one command per line).
fn redis_cli(port: u16, args: &[&str], script: &str) -> Output {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed (Debian package redis-tools)");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET path` over plain HTTP; the status code and the body.
/// Strict line check of the text exposition format: every sample belongs to a family
/// declared by a preceding `# TYPE`, names and labels are well formed, values are numbers,
/// and the OpenMetrics `# EOF` ends it. Returns the samples as `(name{labels}, value)`.
fn strict_samples(body: &str) -> Vec<(String, f64)> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut families = Vec::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "exposition does not end with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "bad family name in {line:?}");
            assert!(["counter", "gauge", "histogram", "summary", "unknown"].contains(&kind), "bad type in {line:?}");
            families.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("labels in braces");
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (label, quoted) = pair.split_once('=').unwrap();
                assert!(name_ok(label) && quoted.starts_with('"'), "bad label in {line:?}");
            }
        }
        let family = families.last().expect("a sample before any # TYPE");
        assert!(name.starts_with(family.as_str()), "sample {name} outside its family {family}");
        samples.push((series.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or_else(|| panic!("no sample {series}"))
}

fn scrape(addr: SocketAddr) -> Vec<(String, f64)> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    // A real Prometheus text parser must accept it too.
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(parsed.samples.iter().any(|s| s.metric == "splitbft_last_executed"));
    strict_samples(&body)
}

#[test]
#[ignore = "needs redis-cli and redis-benchmark (redis-tools); run by .ci/run"]
fn redis_tools_through_the_gateway_and_metrics_of_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(10);
    let (gateway_port, gateway_metrics) = (base + 8, base + 9);
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--clients", "8"])
        .args(["--base-port", &base.to_string(), "--metrics-base-port", &(base + 4).to_string(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("cluster.toml");
    let mut procs = Processes((0..4).map(|i| spawn(&["replica", "--id", &i.to_string()], &config)).collect());
    // The gateway registers its sessions once f + 1 replicas are up; retry until it does.
    let listen = format!("127.0.0.1:{gateway_port}");
    let metrics = format!("127.0.0.1:{gateway_metrics}");
    let deadline = Instant::now() + Duration::from_secs(60);
    procs.0.push(spawn(&["gateway", "--listen", &listen, "--metrics", &metrics, "--sessions", "4"], &config));
    while text(&redis_cli(gateway_port, &["PING"], "")).trim() != "PONG" {
        assert!(Instant::now() < deadline, "the gateway never answered PING");
        if let Ok(Some(_)) = procs.0.last_mut().unwrap().try_wait() {
            procs.0.pop();
            procs.0.push(spawn(&["gateway", "--listen", &listen, "--metrics", &metrics], &config));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // The README's two commands.
    assert_eq!(text(&redis_cli(gateway_port, &["SET", "k", "v"], "")).trim(), "OK");
    assert_eq!(text(&redis_cli(gateway_port, &["GET", "k"], "")).trim(), "v");

    // Every supported command, as a script; redis-cli prints one reply per line (arrays
    // one element per line, nil as an empty line, an error followed by an empty line; it
    // prints nothing for QUIT's OK).
    let script = "\
SET greeting hello
GET greeting
GET missing
EXISTS greeting missing k
MSET a 1 b 2 c 3
MGET a missing c
DEL a missing
EXISTS a
INCR counter
INCR counter
SET notnum abc
INCR notnum
SCAN 0 MATCH [bc] COUNT 10
SCAN 0 MATCH g* COUNT 1
PING
PING hi
ECHO hello-echo
COMMAND COUNT
FLUSHALL
GET
SET x
QUIT
";
    let out = redis_cli(gateway_port, &[], script);
    let expected = "\
OK
hello

2
OK
1

3
1
0
1
2
OK
ERR value is not an integer or out of range

0
b
c
0
greeting
PONG
hi
hello-echo
14
ERR unknown command 'FLUSHALL', with args beginning with: 

ERR wrong number of arguments for 'get' command

ERR wrong number of arguments for 'set' command

";
    assert_eq!(text(&out), expected, "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let info = text(&redis_cli(gateway_port, &["INFO"], ""));
    assert!(info.contains("replicas:4") && info.contains("f:1"), "INFO: {info}");
    let hello = text(&redis_cli(gateway_port, &["HELLO", "3"], ""));
    assert!(hello.contains("proto") && hello.contains("splitbft"), "HELLO 3: {hello}");
    let refused = text(&redis_cli(gateway_port, &["HELLO", "4"], ""));
    assert!(refused.starts_with("NOPROTO"), "HELLO 4: {refused}");
    // RESP3 after HELLO 3 (redis-cli -3 sends it first): nulls and maps still read back.
    let resp3 = text(&redis_cli(gateway_port, &["-3"], "GET missing\nGET greeting\n"));
    assert_eq!(resp3, "\nhello\n", "RESP3 session: {resp3:?}");

    // Bad input: nested arrays (which would overflow the recursive decoder) and a line
    // that is not RESP get a protocol error and a closed connection; the gateway goes on.
    for bad in [b"*1\r\n*1\r\n*1\r\n*1\r\n".as_slice(), b"*2\r\n$3\r\nGET\r\n:5\r\n", b"*x\r\n"] {
        let mut raw = TcpStream::connect(("127.0.0.1", gateway_port)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(bad).unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("-ERR Protocol error"), "{bad:?} answered {answer:?}");
    }
    assert_eq!(text(&redis_cli(gateway_port, &["GET", "greeting"], "")).trim(), "hello");

    // Concurrent INCRs from 4 connections lose no update.
    let incrs: Vec<_> =
        (0..4).map(|_| std::thread::spawn(move || redis_cli(gateway_port, &[], &"INCR shared\n".repeat(25)))).collect();
    for handle in incrs {
        let out = handle.join().unwrap();
        assert_eq!(text(&out).lines().count(), 25, "every INCR answered: {}", text(&out));
        assert!(text(&out).lines().all(|l| l.parse::<i64>().is_ok()), "INCR answers are integers: {}", text(&out));
    }
    assert_eq!(text(&redis_cli(gateway_port, &["GET", "shared"], "")).trim(), "100");

    // Metrics of every replica parse; counters move under redis-benchmark load.
    let replica_metrics: Vec<SocketAddr> = (0..4).map(|i| SocketAddr::from(([127, 0, 0, 1], base + 4 + i))).collect();
    let before = scrape(replica_metrics[1]);
    let executed_before = sample(&before, "splitbft_requests_executed_total");
    let bench = Command::new("redis-benchmark")
        .args(["-p", &gateway_port.to_string(), "-t", "set,get", "-n", "2000", "-P", "16", "-c", "10", "-q"])
        .output()
        .expect("redis-benchmark is installed (redis-tools)");
    assert!(bench.status.success(), "redis-benchmark failed: {}", String::from_utf8_lossy(&bench.stderr));
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(report.contains("SET:") && report.contains("GET:"), "redis-benchmark output: {report}");
    // Replies complete at f + 1 replicas: a slower replica may still be executing; and a
    // scrape's compartment stats may be one query old under load (see metrics.rs).
    let batches = "splitbft_compartment_events_total{compartment=\"execution\",event=\"batches_executed\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = scrape(replica_metrics[1]);
        let executed = sample(&after, "splitbft_requests_executed_total");
        if executed >= executed_before + 4000.0
            && sample(&after, batches) > sample(&before, batches)
            && sample(&after, "splitbft_last_executed") > sample(&before, "splitbft_last_executed")
        {
            assert_eq!(sample(&after, "splitbft_healthy"), 1.0);
            assert_eq!(sample(&after, "splitbft_compartment_up{compartment=\"execution\"}"), 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica 1's counters did not move: executed {executed} (before: {executed_before})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut latency_counts = Vec::new();
    for &addr in &replica_metrics {
        let samples = scrape(addr);
        assert!(sample(&samples, "splitbft_requests_executed_total") > 0.0);
        // The latency histogram counts the requests a replica knew before executing them:
        // clients send to the primary, so backups see only retransmissions.
        let count = sample(&samples, "splitbft_request_latency_seconds_count");
        assert_eq!(sample(&samples, "splitbft_request_latency_seconds_bucket{le=\"+Inf\"}"), count, "{addr}");
        latency_counts.push(count);
        let (status, body) = http_get(addr, "/healthz");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"healthy\":true"), "{body}");
    }
    // Every request was timed by the replica it was sent to (the primary; after a view
    // change or a retransmission, others too).
    assert!(latency_counts.iter().sum::<f64>() >= 4000.0, "request latencies per replica: {latency_counts:?}");
    let (status, _) = http_get(replica_metrics[0], "/nope");
    assert_eq!(status, 404);
    let gw = scrape_gateway(SocketAddr::from(([127, 0, 0, 1], gateway_metrics)));
    assert!(sample(&gw, "splitbft_gateway_commands_total{command=\"set\"}") >= 2000.0);
    assert!(sample(&gw, "splitbft_gateway_command_latency_seconds_count") >= 4000.0);
    assert_eq!(sample(&gw, "splitbft_gateway_protocol_errors_total"), 3.0);
    assert_eq!(sample(&gw, "splitbft_gateway_commands_total{command=\"incr\"}"), 103.0);

    // status: one line per replica, all healthy; --json parses.
    let status = Command::new(BIN).args(["status", "--config"]).arg(&config).output().unwrap();
    assert!(status.status.success(), "status failed: {}", String::from_utf8_lossy(&status.stderr));
    let table = text(&status);
    assert_eq!(table.lines().filter(|l| l.trim_end().ends_with(" ok")).count(), 4, "status:\n{table}");
    let json = Command::new(BIN).args(["status", "--json", "--config"]).arg(&config).output().unwrap();
    for line in text(&json).lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["healthy"], true);
        assert!(row["last_executed"].as_u64().unwrap() > 0);
    }
    // A dead replica shows as down; status still succeeds with f = 1 down.
    procs.0[3].kill().unwrap();
    procs.0[3].wait().unwrap();
    let status = Command::new(BIN).args(["status", "--config"]).arg(&config).output().unwrap();
    assert!(status.status.success());
    assert!(text(&status).lines().any(|l| l.starts_with('3') && l.contains("down")), "{}", text(&status));
}

fn scrape_gateway(addr: SocketAddr) -> Vec<(String, f64)> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    strict_samples(&body)
}
