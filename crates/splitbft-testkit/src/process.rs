//! The `splitbft` binary as a user runs it. Every function takes the binary's path
//! (`env!("CARGO_BIN_EXE_splitbft")` in the caller: only the `splitbft` crate's tests
//! know it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Attempts at finding free ports before giving up.
const PORT_ATTEMPTS: u16 = 200;

/// `count` consecutive loopback ports free on every address of `hosts`, different for every
/// call in this process (tests run in parallel and would otherwise probe the same ports
/// before either binds them).
pub fn free_ports_on(hosts: &[&str], count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = std::process::id() as u16;
    for _ in 0..PORT_ATTEMPTS {
        let attempt = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Below Linux's ephemeral range (32768-60999 by default): a client's outgoing
        // connection can take a port there between this check and the replica's bind.
        let base = 20_000 + (seed.wrapping_mul(7).wrapping_add(attempt.wrapping_mul(13))) % 12_000;
        if hosts.iter().all(|h| (0..count).all(|i| TcpListener::bind((*h, base + i)).is_ok())) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports on {hosts:?}");
}

/// `count` consecutive free ports on 127.0.0.1.
pub fn free_ports(count: u16) -> u16 {
    free_ports_on(&["127.0.0.1"], count)
}

/// Processes killed when the test ends (also when it panics).
#[derive(Default)]
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(kill_tree);
    }
}

/// Replica processes by id (`None`: stopped or taken by the test), killed when the test ends
/// with their compartment processes (`--backend process`).
#[derive(Default)]
pub struct Replicas(pub Vec<Option<Child>>);

impl Drop for Replicas {
    fn drop(&mut self) {
        self.0.iter_mut().flatten().for_each(kill_tree);
    }
}

/// Kills `child` and then its direct children (which outlive a SIGKILLed parent).
pub fn kill_tree(child: &mut Child) {
    let kids = children(child.id());
    let _ = child.kill();
    let _ = child.wait();
    for (pid, _) in kids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// Direct children of `parent`: `(pid, command line)`.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: the fields after the last ')'.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == parent).then(|| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// `splitbft keygen` for 4 replicas and `clients` clients on free ports into `dir`, plus
/// `extra` arguments; returns the path of `cluster.toml`.
pub fn keygen(bin: &str, dir: &Path, clients: u32, extra: &[&str]) -> PathBuf {
    let base = free_ports(4);
    let out = Command::new(bin)
        .args(["keygen", "--replicas", "4", "--clients", &clients.to_string(), "--base-port", &base.to_string()])
        .args(extra)
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    dir.join("cluster.toml")
}

/// Starts `splitbft replica --config C --id I EXTRA`, stderr piped (a test reads the
/// replica's stop report from it).
pub fn start_replica(bin: &str, config: &Path, id: u32, extra: &[&str]) -> Child {
    Command::new(bin)
        .args(["replica", "--config"])
        .arg(config)
        .args(["--id", &id.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `splitbft client --config C --timeout-s 20 ARGS`.
pub fn client(bin: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(["client", "--config"])
        .arg(config)
        .args(["--timeout-s", "20"])
        .args(args)
        .output()
        .expect("client runs")
}

/// A process's stdout, trimmed.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `GET path` over HTTP/1.1 (a replica's or the gateway's `/metrics`, `/healthz`): the
/// status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap()
}

/// [`http_get`], with an error while nothing listens at `addr` (a process still starting).
pub fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((status, body.to_owned()))
}
