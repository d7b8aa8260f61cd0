//! The `mintgate-agent` binary's contract: help, and exit 64 for bad configuration.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn agent(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mintgate-agent"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MINTGATE_AGENT_SPIFFE_ID")
        .output()
        .unwrap()
}

#[test]
fn help_works_and_bad_configuration_exits_64_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let help = agent(&["--help"], dir.path());
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--service-account-token-file"));

    let out = agent(&["--server", "127.0.0.1:1"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca is required"));

    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "spiffe_id = \"spiffe://x/y\"\ntypo = 1\n").unwrap();
    let out = agent(&["--config", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));

    // --dev reads certs-dev/, and says which file is missing.
    let out = agent(
        &["--dev", "--spiffe-id", "spiffe://x/y", "--out", "o"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certs-dev/ca.pem"));
}
