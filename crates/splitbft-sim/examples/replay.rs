//! Replays one seed and prints its report: `cargo run -p splitbft-sim --example replay -- SCENARIO SEED`.
fn main() {
    let mut args = std::env::args().skip(1);
    let scenario: splitbft_sim::Scenario =
        args.next().unwrap_or_else(|| "lossy".into()).parse().unwrap_or(splitbft_sim::Scenario::Lossy);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let report = splitbft_sim::run(seed, scenario);
    println!(
        "{:?} {:?} completed {} max_seq {} max_view {}",
        report.safety_violations, report.liveness_failure, report.completed, report.max_seq, report.max_view
    );
    for r in &report.replicas {
        println!("{r}");
    }
}
