//! `splitbft bench` end to end on a tiny matrix: the CSV parses with the documented
//! columns and measured throughput, summary.json has the headline keys, the plots are
//! real PNGs; an unavailable application is a skipped row, not a crash; bad flags fail.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_splitbft");

const COLUMNS: [&str; 20] = [
    "protocol",
    "storage",
    "app",
    "batching",
    "clients",
    "outstanding",
    "batch_size",
    "warmup_s",
    "seconds",
    "completed",
    "errors",
    "ops_s",
    "p50_us",
    "p99_us",
    "avg_batch",
    "retransmissions",
    "view_changes",
    "fsyncs_per_batch",
    "fsyncs_per_s",
    "skipped",
];

#[test]
fn a_tiny_matrix_writes_csv_summary_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(BIN)
        .args(["bench", "--json", "--apps", "kv,ledger", "--batching", "batched", "--clients", "2"])
        .args(["--outstanding", "2", "--warmup-s", "0.2", "--max-warmup-s", "1", "--window-s", "0.4", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    // The last line is the headline JSON and names the run directory.
    let line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in [
        "splitbft_over_pbft_batched",
        "splitbft_over_pbft_unbatched",
        "splitbft_peak_ops_s",
        "pbft_peak_ops_s",
        "splitbft_p50_us_1client",
        "durable_over_memory_batched",
        "durable_over_memory_batched_peak",
        "splitbft_durable_p50_us_1client",
        "out_dir",
    ] {
        assert!(line.get(key).is_some(), "{key} missing from {line}");
    }
    assert!(line["splitbft_over_pbft_batched"].as_f64().unwrap() > 0.0);
    assert!(line["splitbft_over_pbft_unbatched"].is_null(), "the matrix had no unbatched points");
    assert!(line["splitbft_p50_us_1client"].as_u64().unwrap() > 0);
    assert!(line["durable_over_memory_batched"].as_f64().unwrap() > 0.0);
    assert!(line["splitbft_durable_p50_us_1client"].as_u64().unwrap() > 0);
    let dir = std::path::PathBuf::from(line["out_dir"].as_str().unwrap());
    assert!(dir.starts_with(out.path()));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.len() == 16 && name.ends_with('Z') && name.as_bytes()[8] == b'T', "{name}");

    // results.csv: the columns, one row per point, measured KV rows, skipped or measured ledger rows.
    let mut csv = csv::Reader::from_path(dir.join("results.csv")).unwrap();
    assert_eq!(csv.headers().unwrap().iter().collect::<Vec<_>>(), COLUMNS);
    let rows: Vec<HashMap<String, String>> = csv.deserialize().map(Result::unwrap).collect();
    // 3 latency points + 2 apps x 1 mode x 1 client count x 3 lines (SplitBFT in memory and
    // durable, PBFT).
    assert_eq!(rows.len(), 9);
    for row in &rows {
        let measured = row["skipped"].is_empty();
        if row["app"] == "kv" {
            assert!(measured, "{row:?}");
        }
        if measured {
            let ops: f64 = row["ops_s"].parse().unwrap();
            assert!(ops > 0.0, "{row:?}");
            assert_eq!(row["errors"], "0", "{row:?}");
            assert!(row["p50_us"].parse::<u64>().unwrap() > 0);
            // Durable points report their log syncs (at least one per batch over 4 replicas).
            let (fsyncs, per_s) = (&row["fsyncs_per_batch"], &row["fsyncs_per_s"]);
            match row["storage"].as_str() {
                "durable" => {
                    assert!(fsyncs.parse::<f64>().unwrap() >= 1.0, "{row:?}");
                    assert!(per_s.parse::<f64>().unwrap() > 0.0, "{row:?}");
                }
                _ => assert!(fsyncs.is_empty() && per_s.is_empty(), "{row:?}"),
            }
        } else {
            assert!(row["skipped"].contains("ledger"), "{row:?}");
            assert!(row["ops_s"].is_empty());
        }
    }
    let line_of = |row: &HashMap<String, String>| (row["protocol"].clone(), row["storage"].clone());
    assert_eq!(line_of(&rows[0]), ("splitbft".into(), "memory".into()));
    assert_eq!(line_of(&rows[1]), ("splitbft".into(), "durable".into()));
    assert_eq!(line_of(&rows[2]), ("pbft".into(), "memory".into()));
    assert!(rows[..3].iter().all(|r| r["outstanding"] == "1"));

    // summary.json: the headline keys, the config, the machine, every point.
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    for key in ["splitbft_over_pbft_batched", "pbft_peak_ops_s", "config", "machine", "ratios", "points", "plots"] {
        assert!(summary.get(key).is_some(), "{key} missing from summary.json");
    }
    assert_eq!(summary["points"].as_array().unwrap().len(), 9);
    assert!(summary["machine"]["cores"].as_u64().unwrap() >= 1);

    // Four plots (two per app), each a decodable PNG of a sensible size.
    let plots = summary["plots"].as_array().unwrap();
    assert_eq!(plots.len(), 4);
    for plot in plots {
        let path = std::path::PathBuf::from(plot.as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 10_000, "{} is only {} bytes", path.display(), bytes.len());
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert!(info.width >= 600 && info.height >= 400, "{}: {}x{}", path.display(), info.width, info.height);
        // Not a blank canvas: some pixels are not white.
        assert!(pixels.iter().any(|&b| b < 128), "{} is blank", path.display());
    }
}

#[test]
fn bad_flags_are_refused_before_anything_runs() {
    let out = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (vec!["--clients", "0,10"], "--clients"),
        (vec!["--outstanding", "65"], "--outstanding"),
        (vec!["--window-s", "0"], "--window-s"),
        (vec!["--apps", "kv,nosuchapp"], "nosuchapp"),
        (vec!["--backend", "thread"], "--backend"),
    ] {
        let run = Command::new(BIN).arg("bench").args(&args).arg("--out").arg(out.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "a refused run wrote output");
}
