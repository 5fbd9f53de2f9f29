//! SPEC §10 recovery fence in the simulator: a hostile host restarts the correct primary's
//! Preparation enclave without its state. With the fence: no correct enclave signs two
//! digests for one `(v, s)`, the cluster keeps executing, and the victim recovers by
//! itself. With the fence disabled (a simulator-only switch) seed 1 finds the equivocation.

use splitbft_sim::enclave_restart::run_enclave_restart;

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
