//! The compartment side of the `process` backend (SPEC §5.1): lock the process down, then
//! serve crossings on stdin/stdout until the broker closes them.
//!
//! The sandbox is applied after the compartment read its configuration and key, and before
//! its first input: from then on a compromised compartment can do nothing but compute and
//! answer on its pipes. Layers, any one of which stops a given escape:
//! * resource limits: no core dumps (they would hold the key), bounded address space and
//!   file descriptors;
//! * not dumpable: a process of the same user (e.g. a compromised broker) cannot ptrace it
//!   or read its `/proc/PID/mem`;
//! * Landlock with every filesystem and network right handled and none granted, and its
//!   scopes (no signals to, no abstract sockets of, processes outside);
//! * `PR_SET_NO_NEW_PRIVS` and a seccomp-bpf allow-list: read on the input pipe, write on
//!   the output pipe and stderr, memory management, futex, close and exit. Anything else —
//!   `socket`, `openat`, `execve`, `clone`, `ptrace` — makes the kernel kill the process
//!   (`SECCOMP_RET_KILL_PROCESS`, seen by the broker as death by `SIGSYS`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd};

use landlock::{ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope};
use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use splitbft_types::boundary::Compartment;

use crate::process::{FrameError, read_crossing, write_crossing};

/// Address space a compartment process may map: the Execution state (the KV store, its
/// snapshot and a state transfer's copy) with room to spare.
pub const COMPARTMENT_ADDRESS_SPACE_BYTES: u64 = 8 << 30;
/// Open file descriptors: stdin, stdout, stderr and their two duplicates. Nothing can be
/// opened anyway; this bounds what a bug could still hold.
pub const COMPARTMENT_OPEN_FILES: u64 = 8;

/// Why sandboxing or serving failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A system call of the setup failed.
    #[error("{what}: {source}")]
    Setup {
        /// Which step.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// Landlock could not be applied.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or applied.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// The broker's stream broke or carried a malformed crossing.
    #[error("boundary: {0}")]
    Frame(#[from] FrameError),
}

/// A deliberate sandbox violation, for tests that check the kernel kills the process.
/// Reachable only through the `enclave` command's hidden `--test-probe` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Create a socket (`socket(2)`).
    Socket,
    /// Open a file (`openat(2)`).
    Open,
}

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "socket" => Ok(Probe::Socket),
            "open" => Ok(Probe::Open),
            other => Err(format!("unknown probe {other:?} (socket or open)")),
        }
    }
}

impl Probe {
    /// Tries the forbidden call. Returns only if the sandbox failed to stop it.
    fn run(self) -> String {
        match self {
            Probe::Socket => format!("socket() returned {:?}", std::net::UdpSocket::bind("127.0.0.1:0").map(|_| ())),
            Probe::Open => format!("open() returned {:?}", File::open("/etc/hostname").map(|_| ())),
        }
    }
}

/// What the sandbox enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// Landlock's status: fully or partially enforced.
    pub landlock: String,
    /// System calls allowed by the seccomp filter.
    pub allowed_syscalls: usize,
}

/// Reads the first crossing on stdin (a durable compartment's start crossing, SPEC §10)
/// without buffering past it: the rest of the stream is [`serve_stdio`]'s. Before the
/// sandbox, like reading the key: a broker that could exploit this decoder could as well
/// ptrace the process now (it is dumpable until [`enter`]).
pub fn read_first_crossing() -> Result<Vec<bytes::Bytes>, SandboxError> {
    let setup = |what| move |source| SandboxError::Setup { what, source };
    let mut input = File::from(std::io::stdin().as_fd().try_clone_to_owned().map_err(setup("dup stdin"))?);
    Ok(read_crossing(&mut input)?)
}

/// Serves a compartment on this process's stdin and stdout until the broker closes stdin.
/// Sandboxes first, then writes `first` (outputs of a restore, SPEC §10) if any. With
/// `probe`, tries that forbidden call right after the first crossing.
pub fn serve_stdio(
    compartment: &mut dyn Compartment,
    probe: Option<Probe>,
    first: Vec<bytes::Bytes>,
) -> Result<(), SandboxError> {
    let setup = |what| move |source| SandboxError::Setup { what, source };
    // Own duplicates of the pipes: plain files, no std line buffering, known numbers for the
    // filter.
    let input = File::from(std::io::stdin().as_fd().try_clone_to_owned().map_err(setup("dup stdin"))?);
    let output = File::from(std::io::stdout().as_fd().try_clone_to_owned().map_err(setup("dup stdout"))?);
    warm_up(compartment);
    let report = enter(input.as_raw_fd(), output.as_raw_fd())?;
    tracing::debug!(kind = %compartment.kind(), ?report, "compartment sandboxed");
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut writer = BufWriter::with_capacity(1 << 16, output);
    let served = if first.is_empty() {
        Ok(())
    } else {
        write_crossing(&mut writer, &first).map_err(|e| SandboxError::Frame(FrameError::Io(e)))
    };
    let served = served.and_then(|()| serve(compartment, &mut reader, &mut writer, probe));
    // The process exits next and the kernel closes the pipes; dropping them here would run
    // descriptor checks (`fcntl`) the filter forbids.
    std::mem::forget(reader);
    std::mem::forget(writer);
    served
}

/// Runs what may need a system call the filter forbids once, before it is in place: the
/// allocator's first arenas, and std's hash seed (drawn with `getrandom` on first use).
fn warm_up(compartment: &mut dyn Compartment) {
    let _ = std::collections::hash_map::RandomState::new();
    let query = bytes::Bytes::from(splitbft_types::codec::to_bytes(&splitbft_types::boundary::Input::QueryStats));
    let mut out = Vec::new();
    compartment.handle_encoded(&[query], &mut out);
}

/// The boundary loop: one crossing in, its outputs out.
pub fn serve(
    compartment: &mut dyn Compartment,
    mut input: impl Read,
    mut output: impl Write,
    probe: Option<Probe>,
) -> Result<(), SandboxError> {
    let mut outputs = Vec::new();
    let mut probe = probe;
    loop {
        let inputs = match read_crossing(&mut input) {
            Ok(inputs) => inputs,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Some(p) = probe.take() {
            let survived = p.run();
            // Only reached if the kernel let the call through.
            let _ = writeln!(std::io::stderr(), "sandbox probe survived: {survived}");
            std::process::exit(3);
        }
        compartment.handle_encoded(&inputs, &mut outputs);
        if !outputs.is_empty() {
            write_crossing(&mut output, &outputs).map_err(FrameError::Io)?;
            outputs.clear();
        }
    }
}

/// Applies every layer; the seccomp filter last, since the others need system calls it
/// forbids.
pub fn enter(input_fd: i32, output_fd: i32) -> Result<SandboxReport, SandboxError> {
    let setup = |what| move |source: rustix::io::Errno| SandboxError::Setup { what, source: source.into() };
    setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }).map_err(setup("RLIMIT_CORE"))?;
    let files = Rlimit { current: Some(COMPARTMENT_OPEN_FILES), maximum: Some(COMPARTMENT_OPEN_FILES) };
    setrlimit(Resource::Nofile, files).map_err(setup("RLIMIT_NOFILE"))?;
    let memory =
        Rlimit { current: Some(COMPARTMENT_ADDRESS_SPACE_BYTES), maximum: Some(COMPARTMENT_ADDRESS_SPACE_BYTES) };
    setrlimit(Resource::As, memory).map_err(setup("RLIMIT_AS"))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(setup("PR_SET_DUMPABLE"))?;
    let landlock = landlock_nothing()?;
    let filter = seccomp_filter(input_fd, output_fd)?;
    seccompiler::apply_filter_all_threads(&filter.0).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    Ok(SandboxReport { landlock, allowed_syscalls: filter.1 })
}

/// A Landlock domain that handles every right of the newest ABI the crate knows and grants
/// none: no file can be opened, no TCP port bound or connected.
fn landlock_nothing() -> Result<String, SandboxError> {
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok("fully enforced".into()),
        RulesetStatus::PartiallyEnforced => Ok("partially enforced (older kernel ABI)".into()),
        // Fail closed: a compartment does not run without its filesystem sandbox.
        RulesetStatus::NotEnforced => Err(SandboxError::Landlock("not supported by this kernel".into())),
    }
}

/// The allow-list: what the boundary loop and the allocator need, nothing else.
fn seccomp_filter(input_fd: i32, output_fd: i32) -> Result<(BpfProgram, usize), SandboxError> {
    fn err(e: impl std::fmt::Display) -> SandboxError {
        SandboxError::Seccomp(e.to_string())
    }
    let fd_is = |fd: i32| -> Result<SeccompRule, SandboxError> {
        SeccompRule::new(vec![
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, fd as u64).map_err(err)?,
        ])
        .map_err(err)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_read, vec![fd_is(input_fd)?]);
    rules.insert(libc::SYS_write, vec![fd_is(output_fd)?, fd_is(libc::STDERR_FILENO)?]);
    for call in [
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_mprotect,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        // Dropping the pipes at the end: closing a descriptor opens nothing.
        libc::SYS_close,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ] {
        rules.insert(call, vec![]);
    }
    let count = rules.len();
    let arch = std::env::consts::ARCH.try_into().map_err(err)?;
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch).map_err(err)?;
    let program: BpfProgram = filter.try_into().map_err(err)?;
    Ok((program, count))
}
