//! A handful of fixed seeds per scenario (the longer sweep runs in `.ci/run`).

use splitbft_sim::{Protocol, Scenario, run, run_with};

#[test]
fn fixed_seeds_are_safe_and_live() {
    // Table 1 has its own test below: it has more than f faulty replicas' worth of faults.
    for scenario in Scenario::DEFAULT.into_iter().filter(|s| *s != Scenario::Table1) {
        for seed in 1..=2 {
            let report = run(seed, scenario);
            assert!(report.safety_violations.is_empty(), "{:?} seed {seed}: {:?}", scenario, report.safety_violations);
            assert_eq!(report.liveness_failure, None, "{scenario:?} seed {seed}: {:?}", report.replicas);
            assert!(report.completed > 0);
            assert!(
                report.validity_violations.is_empty(),
                "{scenario:?} seed {seed}: {:?}",
                report.validity_violations
            );
        }
    }
}

/// Seeds that found bugs, kept as one-line regression tests.
#[test]
fn regressions() {
    // A batch proposed at two sequence numbers (requests re-sent after a view change) was
    // fetched with the other header and never reached the certified slot: liveness lost.
    for (scenario, seed) in [(Scenario::CrashPrimary, 13), (Scenario::CrashRestart, 28)] {
        let report = run(seed, scenario);
        assert!(report.safety_violations.is_empty(), "{:?}", report.safety_violations);
        assert_eq!(report.liveness_failure, None, "{scenario:?} seed {seed}: {:?}", report.replicas);
    }
    // Replicas restarted without state fetched the stable checkpoint's snapshot, which
    // every peer had evicted for newer ones a faulty Execution kept from being certified.
    for seed in [71, 386] {
        let report = run_with(seed, Scenario::Random, Protocol::Splitbft, 4);
        assert!(report.draw.contains("execution wrong-results"), "{}", report.draw);
        assert!(report.safety_violations.is_empty(), "{:?}", report.safety_violations);
        assert_eq!(report.liveness_failure, None, "random seed {seed}: {:?}", report.replicas);
    }
    // One replica's Confirmation faulty or fenced, the other three spread over views by a
    // partition: their timers leapfrogged each other through views and no view gathered
    // `2f + 1` ViewChanges (the background sweep, n = 4). Fixed by PBFT's rule that a
    // replica leaves view `v` only after `2f + 1` replicas asked for `v` or more.
    // A crash-restart (amnesia) drawn on another replica than a forked Confirmation: two
    // faulty Confirmations at f = 1, and agreement broke. The draw keeps amnesia within f.
    let report = run_with(22103, Scenario::Random, Protocol::Splitbft, 4);
    assert!(report.draw.contains("fork") && report.draw.contains("crash-restart"), "{}", report.draw);
    assert!(report.safety_violations.is_empty(), "{:?}", report.safety_violations);
    for seed in [8524, 11383, 12295, 14068, 14304] {
        let report = run_with(seed, Scenario::Random, Protocol::Splitbft, 4);
        assert!(report.safety_violations.is_empty(), "{:?}", report.safety_violations);
        assert_eq!(report.liveness_failure, None, "random seed {seed} ({}): {:?}", report.draw, report.replicas);
    }
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    for scenario in [Scenario::Lossy, Scenario::CrashRestart] {
        let (a, b) = (run(7, scenario), run(7, scenario));
        assert_eq!(
            (a.completed, a.max_seq, a.max_view, a.delivered, a.sim_time_us),
            (b.completed, b.max_seq, b.max_view, b.delivered, b.sim_time_us)
        );
    }
}

/// Paper Table 1: one faulty enclave of each kind on three replicas and hostile brokers
/// everywhere. SplitBFT stays safe; the same placement under PBFT's trust model (one key
/// per replica) breaks, and its failing seed replays to the identical failure.
#[test]
fn table1_splitbft_is_safe_where_pbft_breaks() {
    use splitbft_sim::{Protocol, run_protocol};
    let (mut made_up, mut refused) = (0, 0);
    for seed in 1..=3 {
        let report = run_protocol(seed, Scenario::Table1, Protocol::Splitbft);
        assert!(report.safety_violations.is_empty(), "splitbft seed {seed}: {:?}", report.safety_violations);
        assert!(report.completed > 0, "the honest majority still serves clients under attack");
        made_up += report.validity_violations.len();
        refused += report.refused_requests;
    }
    // SPEC §6 validity: the equivocating primary slips made-up requests into its batches.
    // They authenticate for no correct Preparation enclave, so no correct backup prepares
    // those batches (SPEC §4.1 (2)): they never reach the agreed order, let alone execute.
    assert_eq!(made_up, 0, "made-up requests executed");
    assert_eq!(refused, 0, "made-up requests reached the agreed order");
    let broken = run_protocol(1, Scenario::Table1, Protocol::Pbft);
    assert!(!broken.safety_violations.is_empty(), "PBFT with three faulty replicas should break");
    let replay = run_protocol(1, Scenario::Table1, Protocol::Pbft);
    assert_eq!(broken.safety_violations, replay.safety_violations);
    assert_eq!((broken.delivered, broken.sim_time_us), (replay.delivered, replay.sim_time_us));
}

/// SPEC §1.1 at f = 2: the benign scenarios stay safe and live with seven replicas.
#[test]
fn seven_replicas_are_safe_and_live() {
    for scenario in [Scenario::Lossy, Scenario::CrashRestart] {
        let report = run_with(1, scenario, Protocol::Splitbft, 7);
        assert!(report.safety_violations.is_empty(), "{scenario:?}: {:?}", report.safety_violations);
        assert_eq!(report.liveness_failure, None, "{scenario:?}: {:?}", report.replicas);
        assert!(report.completed > 0);
    }
}

/// A random seed replays its draw and its whole run exactly.
#[test]
fn a_random_seed_replays_its_draw() {
    let (a, b) =
        (run_with(5, Scenario::Random, Protocol::Splitbft, 4), run_with(5, Scenario::Random, Protocol::Splitbft, 4));
    assert!(!a.draw.is_empty());
    assert_eq!(a.draw, b.draw);
    assert_eq!(
        (a.completed, a.max_seq, a.delivered, a.sim_time_us),
        (b.completed, b.max_seq, b.delivered, b.sim_time_us)
    );
}

/// The random adversary draws within the fault model — at most f faulty enclaves of each
/// kind — yet anywhere: several kinds on one replica, faults off replica 0, every
/// strategy, at n = 4, 7 and 10.
#[test]
fn random_draws_cover_the_fault_model() {
    use std::collections::{BTreeMap, BTreeSet};
    for n in [4usize, 7, 10] {
        let f = (n - 1) / 3;
        let mut strategies = BTreeSet::new();
        let (mut stacked, mut elsewhere) = (false, false);
        for seed in 1..=300 {
            let (draw, _) = splitbft_sim::draw_of(seed, Scenario::Random, Protocol::Splitbft, n);
            let faulty = draw.split("] hostile").next().unwrap().trim_start_matches("faulty [");
            let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
            let mut per_replica: BTreeMap<&str, usize> = BTreeMap::new();
            for entry in faulty.split(", ").filter(|e| !e.is_empty()) {
                let parts: Vec<&str> = entry.split(' ').collect();
                assert_eq!(parts.len(), 3, "{draw}");
                *per_kind.entry(parts[1]).or_default() += 1;
                *per_replica.entry(parts[0]).or_default() += 1;
                strategies.insert(parts[2].to_string());
                elsewhere |= parts[0] != "r0";
            }
            assert!(per_kind.values().all(|c| *c <= f), "n = {n} seed {seed}: more than f of a kind: {draw}");
            stacked |= per_replica.values().any(|c| *c > 1);
        }
        assert!(stacked && elsewhere, "n = {n}: draws never stacked kinds or left replica 0");
        assert_eq!(strategies.len(), 15, "n = {n}: strategies drawn: {strategies:?}");
    }
}

/// PBFT's trust model (one key per replica) breaks under the random adversary: a seed
/// whose faults span more than f replicas gets a replica key that signs for every part.
#[test]
fn random_breaks_pbft() {
    let broken = (1..=30).any(|seed| {
        let r = run_with(seed, Scenario::Random, Protocol::Pbft, 4);
        !r.safety_violations.is_empty() || !r.validity_violations.is_empty()
    });
    assert!(broken, "no random seed in 1..=30 broke PBFT");
}

/// The attacks of the issue "Table 1 for real", one seed each. On the code before its
/// fixes each one fails (forged op and re-timed Register: validity; withheld batch and
/// censor: liveness; huge-seq ViewChange: the process aborts allocating `O`).
#[test]
fn table1_attacks_are_harmless() {
    for scenario in [
        Scenario::ForgedOp,
        Scenario::RetimedRegister,
        Scenario::WithheldBatch,
        Scenario::HugeSeqViewChange,
        Scenario::Censor,
        Scenario::PoisonedBatchCache,
    ] {
        for n in [4, 7] {
            let r = run_with(1, scenario, Protocol::Splitbft, n);
            assert!(r.safety_violations.is_empty(), "{scenario:?} n={n}: {:?}", r.safety_violations);
            assert!(r.validity_violations.is_empty(), "{scenario:?} n={n}: {:?}", r.validity_violations);
            assert_eq!(r.liveness_failure, None, "{scenario:?} n={n}: {}", r.draw);
        }
    }
}

/// Byzantine clients (issue 12): bad MACs for some Preparation enclaves, bad signatures,
/// replays, timestamps near `u64::MAX`, oversized ops and floods. The Byzantine client
/// may break its own session; the correct clients' operations stay valid, linearizable
/// and complete (seeds 1..=6 take the six strategies in turn), at f = 1 and f = 2.
#[test]
fn byzantine_clients_break_only_their_own_session() {
    for n in [4, 7] {
        for seed in 1..=6 {
            let r = run_with(seed, Scenario::ByzantineClients, Protocol::Splitbft, n);
            assert!(r.draw.contains("byzantine client"), "{}", r.draw);
            assert!(r.safety_violations.is_empty(), "n={n} {}: {:?}", r.draw, r.safety_violations);
            assert!(r.validity_violations.is_empty(), "n={n} {}: {:?}", r.draw, r.validity_violations);
            assert_eq!(r.liveness_failure, None, "n={n} {}: {:?}", r.draw, r.replicas);
            // Requests no primary could order start no backup's timer: no view change
            // (the network is healthy and every enclave correct).
            if ["bad-signature", "oversized-op", "huge-timestamp"].iter().any(|s| r.draw.ends_with(s)) {
                assert_eq!(r.max_view, 0, "n={n} {}: a faulty client forced a view change", r.draw);
            }
        }
    }
}

/// SPEC §1.1 clones and SPEC §4.1 (5): a forked enclave (two copies under one key, shown
/// different inputs, counted against f) and a ViewChange flood (every peer's Preparation
/// checks and drops it) leave SplitBFT safe and live, at f = 1 and f = 2.
#[test]
fn forks_and_view_change_floods_are_harmless() {
    for n in [4, 7] {
        for seed in 1..=3 {
            for scenario in [Scenario::Fork, Scenario::ViewChangeFlood] {
                let r = run_with(seed, scenario, Protocol::Splitbft, n);
                assert!(r.safety_violations.is_empty(), "n={n} {}: {:?}", r.draw, r.safety_violations);
                assert!(r.validity_violations.is_empty(), "n={n} {}: {:?}", r.draw, r.validity_violations);
                assert_eq!(r.liveness_failure, None, "n={n} {}: {:?}", r.draw, r.replicas);
                if scenario == Scenario::ViewChangeFlood {
                    // The flood reached the peers' Preparations and cost them checks.
                    assert!(
                        r.replicas.iter().any(|line| line.contains("view_change_bad_signature")),
                        "{:?}",
                        r.replicas
                    );
                }
            }
        }
    }
}
