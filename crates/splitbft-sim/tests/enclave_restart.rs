//! SPEC §10 recovery fence in the simulator.
//!
//! The fixed scenario (`splitbft_sim::enclave_restart`): a hostile host restarts the
//! correct primary's Preparation enclave without its state. With the fence: no correct
//! enclave signs two digests for one `(v, s)`, the cluster keeps executing, and the victim
//! recovers by itself. With the fence disabled (a simulator-only switch) seed 1 finds the
//! equivocation.
//!
//! The sweep (`Scenario::EnclaveRestart`, and `random`, which may draw the same host
//! action): any correct Preparation or Confirmation restarted fresh, rolled back, with
//! deltas cut off its state, or with its state, counted against `f`, under the full
//! checkers. Full guards: safe and live. Fence off, or the previous design's counter
//! (advanced at images only): the named seeds find the equivocation.

use splitbft_sim::enclave_restart::run_enclave_restart;
use splitbft_sim::{Guard, Protocol, Scenario, draw_of, run_with_fence, run_with_guard};

#[test]
fn with_the_fence_a_restarted_enclave_never_equivocates_and_recovers() {
    for (n, seeds) in [(4, 1..=3), (7, 1..=2)] {
        for seed in seeds {
            let report = run_enclave_restart(seed, n, true);
            assert!(report.equivocations.is_empty(), "n {n} seed {seed}: {:?}", report.equivocations);
            assert!(!report.victim_recovering, "n {n} seed {seed}: still recovering: {report:?}");
            assert!(report.max_executed > 20, "n {n} seed {seed}: progress stopped: {report:?}");
        }
    }
}

#[test]
fn without_the_fence_seed_1_finds_the_equivocation() {
    for n in [4, 7] {
        let report = run_enclave_restart(1, n, false);
        assert!(
            report.equivocations.iter().any(|e| e.contains("r0 preparation signed two PrePrepares at (v 0")),
            "n {n}: {report:?}"
        );
    }
}

/// Seeds of the sweep whose restarts equivocate without the fence: `(scenario, n, seed,
/// what the host does)`. Each is safe with the fence.
const UNFENCED_FINDINGS: [(Scenario, usize, u64, &str); 4] = [
    (Scenario::EnclaveRestart, 4, 23, "r0 preparation fresh"),
    (Scenario::EnclaveRestart, 4, 11, "r0 preparation rollback"),
    (Scenario::EnclaveRestart, 7, 16, "r0 preparation rollback"),
    (Scenario::Random, 4, 45, "r0 preparation"),
];

/// Seeds whose restarts equivocate with the fence but the previous design's counter
/// (advanced at images only, `Guard::CounterAtImages`): the host hands the latest image
/// back with deltas cut off its end. Each is safe with a counter advanced past every
/// durable record (SPEC §10).
const DELTA_CUT_FINDINGS: [(Scenario, usize, u64, &str); 3] = [
    (Scenario::EnclaveRestart, 4, 28, "r0 preparation delta-cut"),
    (Scenario::EnclaveRestart, 7, 18, "r0 preparation delta-cut"),
    (Scenario::Random, 4, 49, "r0 preparation delta-cut"),
];

fn finds_under_weaker_and_holds_under_full(findings: &[(Scenario, usize, u64, &str)], weaker: Guard) {
    for &(scenario, n, seed, host) in findings {
        let (draw, _) = draw_of(seed, scenario, Protocol::Splitbft, n);
        assert!(draw.contains(host), "{scenario:?} n={n} seed {seed}: {draw}");
        let weak = run_with_guard(seed, scenario, Protocol::Splitbft, n, weaker);
        assert!(
            weak.safety_violations.iter().any(|v| v.starts_with("P1: correct r0 Preparation signed two PrePrepares")),
            "{scenario:?} n={n} seed {seed} under {weaker:?}: {:?}",
            weak.safety_violations
        );
        let full = run_with_guard(seed, scenario, Protocol::Splitbft, n, Guard::Full);
        assert!(full.safety_violations.is_empty(), "{scenario:?} n={n} seed {seed}: {:?}", full.safety_violations);
        assert!(full.validity_violations.is_empty(), "{:?}", full.validity_violations);
        assert_eq!(full.liveness_failure, None, "{scenario:?} n={n} seed {seed}: {}", full.draw);
    }
}

#[test]
fn the_sweep_finds_what_the_fence_prevents() {
    finds_under_weaker_and_holds_under_full(&UNFENCED_FINDINGS, Guard::NoFence);
}

#[test]
fn the_sweep_finds_what_counting_every_record_prevents() {
    finds_under_weaker_and_holds_under_full(&DELTA_CUT_FINDINGS, Guard::CounterAtImages);
}

/// With the fence every restart of the sweep is harmless, at f = 1 and f = 2, and the
/// draws cover what the host may do: both kinds, every mode, the primary and others.
#[test]
fn with_the_fence_swept_restarts_are_safe_and_live() {
    let mut seen = std::collections::BTreeSet::new();
    for n in [4, 7] {
        for seed in 1..=6 {
            let r = run_with_fence(seed, Scenario::EnclaveRestart, Protocol::Splitbft, n, true);
            assert!(r.draw.contains("restarts ["), "{}", r.draw);
            assert!(r.safety_violations.is_empty(), "n={n} {}: {:?}", r.draw, r.safety_violations);
            assert!(r.validity_violations.is_empty(), "n={n} {}: {:?}", r.draw, r.validity_violations);
            if r.faulty_replicas <= (n - 1) / 3 {
                assert_eq!(r.liveness_failure, None, "n={n} {}: {:?}", r.draw, r.replicas);
            }
        }
        for seed in 1..=60 {
            let (draw, _) = draw_of(seed, Scenario::EnclaveRestart, Protocol::Splitbft, n);
            let restarts = draw.split("restarts [").nth(1).unwrap_or_default();
            for kind in ["preparation", "confirmation"] {
                for mode in ["fresh", "rollback", "delta-cut", "with-state"] {
                    if restarts.contains(&format!("{kind} {mode}")) {
                        seen.insert((n, kind, mode));
                    }
                }
            }
            let per_kind = |kind: &str| restarts.matches(kind).count();
            assert!(per_kind("preparation") <= (n - 1) / 3 && per_kind("confirmation") <= (n - 1) / 3, "{draw}");
            assert!(per_kind("preparation") >= 1, "{draw}");
        }
    }
    assert_eq!(seen.len(), 16, "{seen:?}");
}

/// SPEC §1.1: a restarted enclave counts against `f` of its kind. `random` draws restarts
/// only within what the faulty enclaves of that kind leave, at f = 1 and f = 2.
#[test]
fn random_restarts_count_against_f() {
    for n in [4usize, 7] {
        let f = (n - 1) / 3;
        let mut drew = 0;
        for seed in 1..=200 {
            let (draw, _) = draw_of(seed, Scenario::Random, Protocol::Splitbft, n);
            let Some(restarts) = draw.split("restarts [").nth(1) else { continue };
            drew += 1;
            let faulty = draw.split("] hostile").next().unwrap_or_default();
            for kind in ["preparation", "confirmation"] {
                let total = faulty.matches(kind).count() + restarts.matches(kind).count();
                assert!(total <= f, "n={n} seed {seed}: {total} {kind} faulty or restarted: {draw}");
            }
        }
        assert!(drew > 20, "n={n}: random drew restarts in only {drew} of 200 seeds");
    }
}
