//! The `mintgate` binary's contract: help, exit codes for bad configuration.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn mintgate(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mintgate"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        &["serve", "--help"][..],
        &["dev-certs", "--help"],
        &["migrate", "--help"],
        &["audit", "verify", "--help"],
        &["audit", "export", "--help"],
    ] {
        let out = mintgate(sub, dir.path());
        assert!(out.status.success(), "{sub:?}");
    }
}

#[test]
fn serve_without_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = mintgate(&["serve"], dir.path());
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_bad_policy_stops_the_server_with_64_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "version = \"1\"\n[[rules]]\nname = \"web\"\nnodes = [\"spiffe://dev.mintgate.local/node/*\"]\nallow = [\"spiffe://dev.mintgate.local/a/../b\"]\n",
    )
    .unwrap();
    let out = mintgate(
        &[
            "serve",
            "--dev",
            "--policy-file",
            "policy.toml",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            "sqlite://t.db?mode=rwc",
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules[0]") && err.contains("allow[0]"),
        "{err}"
    );
}

#[test]
fn dev_material_is_refused_without_dev() {
    let dir = tempfile::tempdir().unwrap();
    let out = mintgate(&["dev-certs", "--dir", "certs"], dir.path());
    assert!(out.status.success());
    std::fs::write(dir.path().join("policy.toml"), "version = \"1\"\n").unwrap();
    let config = "trust_domain = \"dev.mintgate.local\"\ndatabase_url = \"sqlite://t.db?mode=rwc\"\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\npolicy_file = \"policy.toml\"\njoin_token_secret_file = \"certs/join-token.key\"\n[tls]\nserver_cert = \"certs/server.pem\"\nserver_key = \"certs/server.key\"\n[ca]\ncert = \"certs/ca.pem\"\nkey = \"certs/ca.key\"\n";
    std::fs::write(dir.path().join("mintgate.toml"), config).unwrap();
    let out = mintgate(&["serve", "--config", "mintgate.toml"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev material"));

    let bad = format!("{config}unknown_key = 1\n");
    std::fs::write(dir.path().join("mintgate.toml"), bad).unwrap();
    let out = mintgate(&["serve", "--config", "mintgate.toml"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"));
}

#[test]
fn a_ca_within_its_minimum_lifetime_stops_serve_with_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs-dev");
    std::fs::create_dir(&certs).unwrap();
    // A dev PKI made a year ago, less a minute: every certificate in it ends in a minute.
    let td = mintgate_domain::TrustDomain::parse("dev.mintgate.local").unwrap();
    let made = time::OffsetDateTime::now_utc() - mintgate_ca::DEV_VALIDITY + time::Duration::MINUTE;
    let pki = mintgate_ca::generate_pki(&td, made).unwrap();
    for (name, contents) in [
        ("ca.pem", &pki.ca.cert_pem),
        ("ca.key", &pki.ca.key_pem),
        ("server.pem", &pki.server.cert_pem),
        ("server.key", &pki.server.key_pem),
        ("bootstrap-ca.pem", &pki.bootstrap_ca.cert_pem),
        ("operator-ca.pem", &pki.operator_ca.cert_pem),
        ("join-token.key", &pki.join_token_key_hex),
    ] {
        std::fs::write(certs.join(name), contents).unwrap();
    }
    let out = mintgate(
        &[
            "serve",
            "--dev",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            "sqlite://t.db?mode=rwc",
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("ca.cert \"")
            && err.contains("CN=Mintgate Dev Issuing CA")
            && err.contains("the issuing CA expires at")
            && err.contains("ca.min_lifetime_seconds: 300"),
        "{err}"
    );
    assert!(!dir.path().join("t.db").exists(), "nothing was started");
}
