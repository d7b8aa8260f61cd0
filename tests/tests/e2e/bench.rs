//! `mintgate-bench` at tiny sizes, so that every benchmark keeps working. The figures are for
//! docs/benchmarks.md; here only that each benchmark ran and counted what it was asked to.

use mintgate_tests::db::postgres_available;
use serde_json::Value;

const SUBSCRIBERS: u64 = 5;
const ROUNDS: u64 = 2;
const ISSUANCES: u64 = 20;
const STORM: u64 = 40;
const REVOKED: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_benchmark_runs_at_tiny_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let postgres = postgres_available().await;
    let mut bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_mintgate-bench"));
    bench
        .args(["--crypto-ops", "40", "--clients", "4"])
        .args(["--issuances", &ISSUANCES.to_string()])
        .args(["--subscribers", &SUBSCRIBERS.to_string()])
        .args(["--rounds", &ROUNDS.to_string()])
        .args([
            "--storm-workloads",
            &STORM.to_string(),
            "--storm-nodes",
            "4",
        ])
        .args([
            "--revoked-entries",
            &REVOKED.to_string(),
            "--revoked-rounds",
            "3",
        ])
        .arg("--mintgate")
        .arg(mintgate_tests::mintgate_bin())
        .arg("--json")
        .arg(&json);
    if postgres {
        bench.arg("--postgres");
    }
    let out = bench.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for benchmark in [
        "1 crypto",
        "2 issuance",
        "3 revocation",
        "4 memory",
        "5 peer",
        "6 server CPU",
        "P6 revoked set",
        "P7 storm",
    ] {
        assert!(
            stdout.contains(benchmark),
            "{benchmark} missing from\n{stdout}"
        );
    }

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["crypto"]["operations"], 40);
    assert!(report["crypto"]["total"].as_f64().unwrap() > 0.0);

    let issuance = report["issuance"].as_array().unwrap();
    assert_eq!(issuance.len(), if postgres { 2 } else { 1 });
    for run in issuance {
        assert_eq!(run["issuances"], ISSUANCES);
        assert_eq!(run["latency"]["samples"], ISSUANCES);
        // Group commit: an issuance is two writes (its intent, then its certificate), each
        // in some commit, and a commit may hold many.
        let commits = run["commits"].as_u64().unwrap();
        assert!((1..=2 * ISSUANCES).contains(&commits), "{run}");
        let per_commit = run["issuances_per_commit"].as_f64().unwrap();
        assert!(
            (per_commit - ISSUANCES as f64 / commits as f64).abs() < 1e-9,
            "{run}"
        );
    }
    if postgres {
        assert_eq!(issuance[1]["database"], "PostgreSQL, synchronous_commit=on");
    }

    for run in report["server_cpu"].as_array().unwrap() {
        assert_eq!(run["issuances"], ISSUANCES);
        assert!(run["us_per_issuance"].as_f64().unwrap() > 0.0, "{run}");
        // The floor has a database round trip on PostgreSQL only.
        let on_postgres = run["database"] == "postgres";
        assert_eq!(run["round_trip_us"].is_f64(), on_postgres, "{run}");
        // Every issuance is durable: on SQLite the server itself wrote it to disk.
        let written = run["disk_kib_per_issuance"].as_f64().unwrap();
        assert!(on_postgres || written > 0.0, "{run}");
    }
    let revoked = &report["revoked"];
    assert_eq!(revoked["entries"], REVOKED);
    for (registry, revoked_before) in [("small", 0), ("large", REVOKED + 1)] {
        let phase = &revoked[registry];
        assert_eq!(phase["revoke"]["samples"], 3, "{registry}");
        assert_eq!(phase["check_status"]["samples"], 6, "{registry}");
        assert_eq!(phase["revoked"], revoked_before + 4, "{registry}");
    }
    // Every seeded entry is on the CRL: at least 30 bytes each.
    assert!(revoked["large"]["crl_bytes"].as_u64().unwrap() > 30 * REVOKED);
    let storm = &report["storm"];
    assert_eq!(storm["workloads"], STORM);
    assert!(storm["calls"].as_u64().unwrap() >= STORM);

    let fanout = &report["fanout"];
    assert_eq!(fanout["ours"]["samples"], SUBSCRIBERS * ROUNDS);
    assert_eq!(fanout["floor"]["samples"], SUBSCRIBERS * ROUNDS);
    assert_eq!(fanout["http2_floor"]["samples"], SUBSCRIBERS * ROUNDS);
    assert!(fanout["event_bytes"].as_u64().unwrap() > 5);
    assert!(report["memory"]["rss_kib_idle"].as_u64().unwrap() > 0);
    if postgres {
        // Two replicas: every event reached every subscriber of each.
        let replicas = &report["replicas"];
        let same = SUBSCRIBERS / 2;
        assert_eq!(replicas["same_replica"]["samples"], same * ROUNDS);
        assert_eq!(
            replicas["other_replica"]["samples"],
            (SUBSCRIBERS - same) * ROUNDS
        );
    }

    let cfssl = std::process::Command::new("cfssl").arg("version").output();
    if cfssl.is_ok_and(|o| o.status.success()) {
        assert_eq!(report["peer"]["status"], "measured");
        assert_eq!(report["peer"]["signatures"], ISSUANCES);
    } else {
        assert_eq!(report["peer"]["reason"], "cfssl not installed");
        assert!(stdout.contains("skipped (cfssl not installed)"));
    }
}

/// `mintgate-bench ca-backends` at tiny sizes: both backends measured, raw and end to end.
#[test]
fn the_ca_backends_benchmark_runs_at_tiny_sizes() {
    if !mintgate_ca::softhsm::available() {
        assert!(
            std::env::var("MINTGATE_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "softhsm2 is not installed and MINTGATE_REQUIRE_TOOLS=1"
        );
        println!("note: softhsm2 is not installed; skipping the ca-backends benchmark");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ca.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mintgate-bench"))
        .args(["ca-backends", "--crypto-ops", "40", "--issuances", "20"])
        .args(["--clients", "4", "--sessions", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pkcs11 (SoftHSM2)"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["sessions"], 2);
    for raw in ["raw_file", "raw_pkcs11"] {
        assert_eq!(report[raw]["operations"], 40, "{raw}");
        assert!(report[raw]["total"].as_f64().unwrap() > 0.0, "{raw}");
    }
    for run in ["issuance_file", "issuance_pkcs11"] {
        assert_eq!(report[run]["issuances"], 20, "{run}");
        assert!(report[run]["per_second"].as_f64().unwrap() > 0.0, "{run}");
    }
}
