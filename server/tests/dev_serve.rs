//! The first run on a fresh machine: `mintgate serve --dev` writes the dev PKI, creates and
//! migrates the SQLite database, answers on its HTTP port, prints the next commands, and stops
//! cleanly on SIGTERM with an intact audit chain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEV_FILES: [&str; 17] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "bootstrap-ca.pem",
    "bootstrap-ca.key",
    "node.pem",
    "node.key",
    "operator-ca.pem",
    "operator-ca.key",
    "admin.pem",
    "admin.key",
    "alice.pem",
    "alice.key",
    "bob.pem",
    "bob.key",
    "join-token.key",
];

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The address on the tour line that starts with `prefix`, e.g. `curl http://`.
fn addr_after(lines: &[String], prefix: &str) -> String {
    let line = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {lines:#?}"));
    line.split(['/', ' ']).next().unwrap().to_owned()
}

#[test]
fn serve_dev_starts_from_nothing_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mintgate"))
        .args(["serve", "--dev", "--grpc-addr", "127.0.0.1:0"])
        // Every flag of `serve` can come from a MINTGATE_* variable instead.
        .env("MINTGATE_HTTP_ADDR", "127.0.0.1:0")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Read the tour the server prints once it listens.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("README")) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("the server printed no tour ({e}): {lines:#?}");
            }
        }
    }
    let http = addr_after(&lines, "curl http://");
    let grpcurl_list = lines.iter().find(|l| l.ends_with(" list")).unwrap();
    assert!(grpcurl_list.contains("-cert certs-dev/alice.pem -key certs-dev/alice.key"));

    for file in DEV_FILES {
        assert!(dir.path().join("certs-dev").join(file).is_file(), "{file}");
    }
    assert!(dir.path().join("mintgate.db").is_file());
    let healthz = http_get(&http, "/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let readyz = http_get(&http, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(http_get(&http, "/nope").starts_with("HTTP/1.1 404"));

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");

    let verify = Command::new(env!("CARGO_BIN_EXE_mintgate"))
        .args(["audit", "verify", "--dev"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

/// What `serve --dev` writes into a checkout (the dev PKI with its keys, the SQLite files) is
/// ignored by git, so it cannot be committed by accident.
#[test]
fn what_serve_dev_writes_into_the_checkout_is_git_ignored() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join(".git").exists() {
        eprintln!("note: not a git checkout; skipping");
        return;
    }
    let written = DEV_FILES
        .iter()
        .map(|f| format!("certs-dev/{f}"))
        .chain(["mintgate.db", "mintgate.db-wal", "mintgate.db-shm"].map(String::from));
    for path in written {
        let ignored = Command::new("git")
            .args(["check-ignore", "-q", &path])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(ignored.success(), "{path} is not git-ignored");
    }
}
