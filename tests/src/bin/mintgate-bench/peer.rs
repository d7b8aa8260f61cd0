//! Benchmark 5, the peer: `cfssl serve` with an equivalent ECDSA P-256 CA (a fresh CA of the
//! same shape as ours), driven through its sign endpoint with the same CSRs at the same
//! concurrency, over plain HTTP/1.1 keep-alive connections and with no database.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mintgate_domain::TrustDomain;
use mintgate_tests::TRUST_DOMAIN;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::{Latency, free_port, progress, spawn, wait_for};

#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Peer {
    Skipped {
        reason: String,
    },
    Measured {
        version: String,
        clients: usize,
        signatures: usize,
        per_second: f64,
        latency: Latency,
        /// Our end-to-end issuances/s (SQLite) over cfssl's signatures/s.
        ratio: f64,
    },
}

/// Signs every CSR through `cfssl serve` with `clients` connections, if `cfssl` runs.
pub async fn run(
    cfssl: &Path,
    csrs: Arc<[String]>,
    clients: usize,
    ours: f64,
) -> anyhow::Result<Peer> {
    let Some(version) = version(cfssl).await else {
        return Ok(Peer::Skipped {
            reason: "cfssl not installed".to_owned(),
        });
    };
    let dir = tempfile::tempdir()?;
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let ca = mintgate_ca::generate_pki(&td, OffsetDateTime::now_utc())?.ca;
    // The issuing CA alone: `cert_pem` is its chain (then the root), which cfssl takes for a
    // certificate it cannot pair with the key, leaving its sign endpoint out.
    const END: &str = "-----END CERTIFICATE-----";
    let first = ca
        .cert_pem
        .find(END)
        .map_or(ca.cert_pem.len(), |i| i + END.len());
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem[..first])?;
    std::fs::write(dir.path().join("ca.key"), &ca.key_pem)?;
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"signing":{"default":{"expiry":"1h","usages":["digital signature","client auth"]}}}"#,
    )?;
    let port = free_port()?.to_string();
    let args = [
        "serve",
        "-address",
        "127.0.0.1",
        "-port",
        &port,
        "-ca",
        "ca.pem",
        "-ca-key",
        "ca.key",
        "-config",
        "config.json",
        "-loglevel",
        "4",
    ];
    let mut child = spawn(cfssl, &args, dir.path(), "cfssl.log")?;
    let addr = format!("127.0.0.1:{port}");
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let connect = || async { Ok(BufReader::new(TcpStream::connect(&addr).await?)) };
        connections.push(wait_for(&mut child, Duration::from_secs(30), connect).await?);
    }

    let bar = progress(csrs.len(), "cfssl sign (5)")?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for mut connection in connections {
        let (csrs, next, bar) = (csrs.clone(), next.clone(), bar.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while let Some(csr) = csrs.get(next.fetch_add(1, Ordering::Relaxed)) {
                let sent = Instant::now();
                sign(&mut connection, csr).await?;
                latencies.push(sent.elapsed());
                bar.inc(1);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(csrs.len());
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let per_second = csrs.len() as f64 / start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    child.kill().await?;
    Ok(Peer::Measured {
        version,
        clients,
        signatures: csrs.len(),
        per_second,
        latency: Latency::of(latencies),
        ratio: ours / per_second,
    })
}

/// `cfssl version`'s first line, or nothing when cfssl does not run.
async fn version(cfssl: &Path) -> Option<String> {
    let out = tokio::process::Command::new(cfssl)
        .arg("version")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| {
        let first = text.lines().next().unwrap_or_default();
        first.trim_start_matches("Version:").trim().to_owned()
    })
}

/// POST /api/v1/cfssl/sign on a kept-alive connection; fails unless cfssl signed.
async fn sign(connection: &mut BufReader<TcpStream>, csr: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "certificate_request": csr }).to_string();
    let request = format!(
        "POST /api/v1/cfssl/sign HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    connection.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    connection.read_line(&mut line).await?;
    let status = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut length = None;
    loop {
        line.clear();
        connection.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(value.trim().parse::<usize>()?);
        }
    }
    let mut answer = vec![0; length.context("cfssl answered without Content-Length")?];
    connection.read_exact(&mut answer).await?;
    let answer: serde_json::Value = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "cfssl answered HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        )
    })?;
    if status != "200" || answer["success"] != true {
        bail!("cfssl did not sign: HTTP {status}: {answer}");
    }
    Ok(())
}
