//! The trust domains are visible in the crate graph (SPEC §1, STYLE "one crate per trust
//! domain"): no compartment crate depends — even transitively — on anything that does
//! networking or async I/O, on the broker, the boundary, the client, or another
//! compartment. Checked on `cargo metadata`'s resolved graph.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

const COMPARTMENTS: [&str; 3] = ["splitbft-preparation", "splitbft-confirmation", "splitbft-execution"];
/// Crates that do I/O, threads-as-runtime, or belong to another trust domain.
const FORBIDDEN: [&str; 10] = [
    "tokio",
    "mio",
    "socket2",
    "futures-util",
    "crossbeam-channel",
    "getrandom",
    "splitbft-broker",
    "splitbft-enclave",
    "splitbft-client",
    "splitbft",
];

type Graph = (BTreeMap<String, String>, BTreeMap<String, Vec<String>>);

fn resolved_graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let names: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p["name"].as_str().unwrap().to_owned()))
        .collect();
    let mut edges = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        // Normal (non-dev, non-build) dependencies only: what ends up in the compartment.
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
            .map(|d| d["pkg"].as_str().unwrap().to_owned())
            .collect();
        edges.insert(node["id"].as_str().unwrap().to_owned(), deps);
    }
    (names, edges)
}

fn transitive(root: &str, (names, edges): &Graph) -> BTreeSet<String> {
    let id = names.iter().find(|(_, n)| *n == root).map(|(id, _)| id.clone()).expect("crate in workspace");
    let mut seen = BTreeSet::new();
    let mut stack = vec![id];
    while let Some(id) = stack.pop() {
        for dep in edges.get(&id).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen.iter().map(|id| names[id].clone()).collect()
}

#[test]
fn compartments_depend_on_no_io_and_no_other_trust_domain() {
    let graph = resolved_graph();
    for compartment in COMPARTMENTS {
        let deps = transitive(compartment, &graph);
        assert!(deps.contains("splitbft-types"), "{compartment} should depend on splitbft-types");
        for bad in FORBIDDEN.iter().chain(COMPARTMENTS.iter()) {
            assert!(!deps.contains(*bad), "{compartment} depends on {bad} (transitively): {deps:?}");
        }
    }
}

#[test]
fn shared_types_depend_on_no_io() {
    let deps = transitive("splitbft-types", &resolved_graph());
    for bad in FORBIDDEN.iter().chain(COMPARTMENTS.iter()) {
        assert!(!deps.contains(*bad), "splitbft-types depends on {bad}");
    }
}

#[test]
fn the_check_sees_real_edges() {
    // Guard against a vacuous pass: the broker does depend on tokio and the boundary.
    let deps = transitive("splitbft-broker", &resolved_graph());
    assert!(deps.contains("tokio") && deps.contains("splitbft-enclave"));
}

#[test]
fn the_test_kit_is_a_dev_dependency_only() {
    // STYLE: tests share fixtures through one dev-only crate; nothing shipped links it.
    let graph = resolved_graph();
    let (names, _) = &graph;
    for shipped in names.values().filter(|n| n.starts_with("splitbft") && *n != "splitbft-testkit") {
        assert!(!transitive(shipped, &graph).contains("splitbft-testkit"), "{shipped} depends on splitbft-testkit");
    }
}
