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
        &["policy", "check", "--help"],
        &["ca", "csr", "--help"],
        &["ca", "import", "--help"],
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

/// A copy of the shipped dev policy directory in `dir`.
fn dev_policy_dir(dir: &std::path::Path) {
    std::fs::create_dir(dir).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/dev");
    for name in ["schema.cedarschema", "issuance.cedar"] {
        std::fs::copy(shipped.join(name), dir.join(name)).unwrap();
    }
}

/// Two broken files: a syntax error in one, a type error and a foreign trust domain in the
/// other.
fn broken_policy_dir(dir: &std::path::Path) {
    dev_policy_dir(dir);
    std::fs::write(
        dir.join("a-syntax.cedar"),
        "@id(\"a\")\npermit (principal, action, resource)\nwhen { resource.path == };\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b-types.cedar"),
        "// two problems\n@id(\"b\")\npermit (principal, action == Action::\"Issue\", resource in TrustDomain::\"prod.example\")\nwhen { context.ttl_seconds < 600 };\n",
    )
    .unwrap();
}

#[test]
fn policy_check_passes_a_good_directory_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    dev_policy_dir(&dir.path().join("policy"));
    let out = mintgate(
        &[
            "policy",
            "check",
            "policy",
            "--trust-domain",
            "dev.mintgate.local",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("policy: valid, 3 policies in 1 file; version "),
        "{stdout}"
    );
    // Without a trust domain the policies need only agree on one.
    let out = mintgate(&["policy", "check", "policy"], dir.path());
    assert!(out.status.success());
    let out = mintgate(
        &[
            "policy",
            "check",
            "policy",
            "--trust-domain",
            "prod.example",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn policy_check_prints_every_problem_with_file_and_line_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    broken_policy_dir(&dir.path().join("policy"));
    let out = mintgate(
        &[
            "policy",
            "check",
            "policy",
            "--trust-domain",
            "dev.mintgate.local",
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with("policy/a-syntax.cedar:3:"), "{err}");
    assert_eq!(
        lines[1],
        "policy/b-types.cedar:2:1: names trust domain prod.example, but this server's trust \
         domain is dev.mintgate.local",
        "{err}"
    );
    assert!(
        lines[2].starts_with("policy/b-types.cedar:4:8: for policy `b`")
            && lines[2].contains("ttl_seconds"),
        "{err}"
    );
    assert_eq!(
        lines[3],
        "mintgate: policy: 3 problems; the policy is refused whole"
    );
    assert_eq!(lines.len(), 4, "{err}");

    let out = mintgate(&["policy", "check", "nowhere"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy_dir"));
}

#[test]
fn a_bad_policy_stops_the_server_with_64_naming_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    broken_policy_dir(&dir.path().join("policy"));
    let out = mintgate(
        &[
            "serve",
            "--dev",
            "--policy-dir",
            "policy",
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
        err.contains("policy_dir policy: the policy does not validate (3 problems):")
            && err.contains("\n  a-syntax.cedar:3:")
            && err.contains("\n  b-types.cedar:2:1: names trust domain prod.example")
            && err.contains("\n  b-types.cedar:4:8: "),
        "{err}"
    );
    assert!(!dir.path().join("t.db").exists(), "nothing was started");
}

#[test]
fn dev_material_is_refused_without_dev() {
    let dir = tempfile::tempdir().unwrap();
    let out = mintgate(&["dev-certs", "--dir", "certs"], dir.path());
    assert!(out.status.success());
    dev_policy_dir(&dir.path().join("policy"));
    let config = "trust_domain = \"dev.mintgate.local\"\ndatabase_url = \"sqlite://t.db?mode=rwc\"\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\npolicy_dir = \"policy\"\njoin_token_secret_file = \"certs/join-token.key\"\n[tls]\nserver_cert = \"certs/server.pem\"\nserver_key = \"certs/server.key\"\n[ca]\ncert = \"certs/ca.pem\"\nkey = \"certs/ca.key\"\n";
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
    chmod(&certs.join("ca.key"), 0o600);
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

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_ca_key_file_others_may_read_stops_serve_with_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = mintgate(&["dev-certs", "--dir", "certs-dev"], dir.path());
    assert!(out.status.success());
    chmod(&dir.path().join("certs-dev/ca.key"), 0o644);
    let args = [
        "serve",
        "--dev",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        "sqlite://t.db?mode=rwc",
    ];
    let out = mintgate(&args, dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("ca.key") && err.contains("mode 644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!dir.path().join("t.db").exists(), "nothing was started");
}

#[test]
fn ca_commands_exit_64_on_a_bad_ca_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mintgate.toml"),
        "[ca]\nbackend = \"pkcs11\"\ncert = \"ca.pem\"\nkey = \"ca.key\"\n",
    )
    .unwrap();
    for args in [
        &["ca", "csr", "--config", "mintgate.toml"][..],
        &[
            "ca",
            "import",
            "--config",
            "mintgate.toml",
            "--cert",
            "x.pem",
        ],
    ] {
        let out = mintgate(args, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("ca.key"), "{args:?}: {err}");
    }
    let out = mintgate(&["ca", "csr", "--config", "missing.toml"], dir.path());
    assert_eq!(out.status.code(), Some(64));
}
