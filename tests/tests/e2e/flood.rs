//! Connection floods (issue 16, item 6): half-open TCP connections that never send a TLS
//! ClientHello. One source gets a bounded number of handshakes in progress and the rest of its
//! connections are closed at once; many handshakes in progress get a shorter timeout; and a flood
//! that reaches the process's open-file limit leaves the HTTP port (`/readyz`) answering.
//! Every flood here is bounded in count and happens on 127.0.0.0/8 (any address in it reaches
//! the loopback interface on Linux, so a test can be several sources at once).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use mintgate_api::GrpcConfig;
use mintgate_sdk::{Client, TlsMaterial, v1};
use mintgate_tests::csr::csr;
use mintgate_tests::{Backend, Options, TestServer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::issuance::{WORKLOAD, enroll_request};
use crate::metrics::Scrape;

/// Bound on anything the server should do at once (it would take a minute, or ten seconds,
/// without the limits under test).
const WAIT: Duration = Duration::from_secs(10);
/// The server's handshake timeout without pressure, by default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REFUSED: &str = "mintgate_grpc_connections_refused_total";
const HANDSHAKES: &str = "mintgate_grpc_handshakes";
const HANDSHAKE_FAILURES: &str = "mintgate_grpc_handshake_failures_total";

/// Loopback address `127.0.0.n`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// `n` TCP connections from `from` to `to` that never send a byte, in order.
async fn half_open(from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        conns.push(socket.connect(to).await.unwrap());
    }
    conns
}

/// Waits until the server closes every one of `conns` (end of stream or reset, having sent
/// nothing), at most `bound`; panics naming how many are still open.
async fn closed_by_server(conns: Vec<TcpStream>, bound: Duration, what: &str) {
    let n = conns.len();
    let ends = conns.into_iter().map(|mut conn| async move {
        let mut byte = [0u8; 1];
        matches!(conn.read(&mut byte).await, Ok(0) | Err(_))
    });
    match timeout(bound, join_all(ends)).await {
        Ok(ends) => assert!(ends.into_iter().all(|closed| closed), "{what}: data sent"),
        Err(_) => panic!("{what}: not all {n} closed by the server within {bound:?}"),
    }
}

fn limits(config: GrpcConfig) -> Options {
    Options {
        grpc: config,
        ..Options::new(Backend::Sqlite)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_gets_a_few_handshakes_the_rest_are_closed_and_others_still_connect() {
    let server = TestServer::spawn_with(limits(GrpcConfig {
        max_handshakes_per_source: 8,
        // Long enough that the flooder's admitted handshakes outlive the test.
        handshake_timeout: Duration::from_secs(60),
        ..GrpcConfig::default()
    }))
    .await;

    let mut flood = half_open(loopback(2), server.grpc_addr, 40).await;
    let excess = flood.split_off(8);
    closed_by_server(excess, WAIT, "connections over the per-source limit").await;

    // With the flooder's 8 handshakes still in progress, a real client from another address
    // connects and gets its certificate.
    let (csr_pem, _key) = csr(WORKLOAD, &[]);
    let issued = timeout(WAIT, async {
        server
            .node()
            .await
            .enroll(enroll_request("during-flood", &csr_pem))
            .await
    })
    .await
    .expect("a real client is answered promptly during the flood")
    .unwrap();
    assert_eq!(issued.spiffe_id, WORKLOAD);

    let scrape = Scrape::take(&server).await;
    assert_eq!(scrape.value(REFUSED, &[("reason", "source_limit")]), 32.0);
    assert_eq!(
        scrape.value(HANDSHAKES, &[]),
        8.0,
        "the flooder's first 8 are still handshaking"
    );
    drop(flood);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_handshakes_in_progress_get_the_short_timeout_the_first_ones_too() {
    let server = TestServer::spawn_with(limits(GrpcConfig {
        handshake_timeout: Duration::from_secs(60),
        // Long enough that all 8 are admitted before the first 4 time out and end the
        // pressure, even on a loaded machine (the later ones would get the minute).
        pressure_handshake_timeout: Duration::from_secs(1),
        pressure_handshakes: 4,
        ..GrpcConfig::default()
    }))
    .await;

    // The first three start before there is any pressure; the fourth brings it on.
    let flood = half_open(loopback(3), server.grpc_addr, 8).await;
    closed_by_server(flood, WAIT, "half-open handshakes under pressure").await;

    let scrape = Scrape::take(&server).await;
    assert_eq!(
        scrape.value(HANDSHAKE_FAILURES, &[("reason", "pressure_timeout")]),
        8.0
    );
    assert_eq!(
        scrape.value(HANDSHAKE_FAILURES, &[("reason", "timeout")]),
        0.0
    );
    assert_eq!(scrape.value(HANDSHAKES, &[]), 0.0);
    server.shutdown().await;
}

/// `mintgate serve --dev` in a process of its own, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The open-file limit the server process runs with (soft and hard).
const SERVER_OPEN_FILES: u32 = 256;

// The descriptor reserve has to be tested on a process of its own: the test binary's own
// descriptors are shared by every test in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_while_a_flood_meets_the_open_file_limit() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // This side holds the whole flood open.
    let ours = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(ours >= 1024, "the test needs 1024 open files, has {ours}");

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {SERVER_OPEN_FILES} && exec \"$0\" serve --dev \
             --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0"
        ))
        .arg(mintgate_tests::mintgate_bin())
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Process(child);
    // The tour names both addresses once the server listens. Its output is read to the end,
    // so that the server never writes into a closed pipe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let (mut grpc, mut http, mut tx) = (None, None, Some(tx));
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("curl http://") {
                http = rest.split('/').next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_suffix(" list") {
                grpc = rest.rsplit(' ').next().map(str::to_owned);
            }
            if let (Some(g), Some(h)) = (&grpc, &http)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((g.clone(), h.clone()));
            }
        }
    });
    let (grpc, http) = timeout(Duration::from_secs(60), rx)
        .await
        .expect("the server starts within 60 s")
        .expect("the tour names the gRPC and HTTP addresses");
    let grpc: SocketAddr = grpc.parse().unwrap();
    let http: SocketAddr = http.parse().unwrap();

    // Eight sources, each under the per-source limit (64), together well over the open-file
    // limit: without a reserve, every descriptor goes to a half-open handshake and the HTTP
    // port cannot accept until they time out (10 s).
    // All at once, so the flood is in place well within the pressure timeout even on a busy
    // machine (opened one source after another, the first connections could time out and
    // free their slots before the last ones arrived).
    let sources = (2..10).map(|source| half_open(loopback(source), grpc, 60));
    let flood: Vec<_> = futures_util::future::join_all(sources)
        .await
        .into_iter()
        .flatten()
        .collect();
    let flood_size = flood.len();
    let (status, body) = timeout(
        Duration::from_secs(5),
        mintgate_tests::http_get(http, "/readyz"),
    )
    .await
    .expect("/readyz answers during the flood");
    assert_eq!((status, body.as_slice()), (200, &b"ready\n"[..]));

    // Connections beyond the limit were closed at once; those admitted run into the short
    // timeout (1 s) as the server is under pressure. On a busy machine the server may accept
    // the last ones after the first have timed out and the pressure has ended: those get the
    // normal timeout (10 s). Then real clients get in again.
    closed_by_server(flood, WAIT + HANDSHAKE_TIMEOUT, "the flood").await;
    let certs = dir.path().join("certs-dev");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let tls = TlsMaterial {
        ca_pem: read("ca.pem"),
        cert_pem: read("admin.pem"),
        key_pem: read("admin.key"),
    };
    timeout(WAIT, async {
        Client::connect(&format!("https://{grpc}"), "localhost", &tls)
            .await
            .unwrap()
            .create_join_token(v1::CreateJoinTokenRequest {
                request_id: "after-flood".into(),
                spiffe_id: "spiffe://dev.mintgate.local/joined/after-flood".into(),
                ttl: None,
            })
            .await
            .unwrap()
    })
    .await
    .expect("a real client is answered once the flood is gone");

    let (status, body) = mintgate_tests::http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = Scrape::parse(String::from_utf8(body).unwrap());
    assert_eq!(
        scrape.value("mintgate_grpc_accept_errors_total", &[]),
        0.0,
        "the server never ran out of file descriptors"
    );
    // Each connection of the flood was either refused at the connection limit or timed out in
    // its handshake. How many of each depends on how fast the server took them from the
    // backlog: the first ones admitted free their slots after a second.
    let refused = scrape.value(REFUSED, &[("reason", "connection_limit")]);
    let timed_out = ["pressure_timeout", "timeout"]
        .map(|reason| scrape.value(HANDSHAKE_FAILURES, &[("reason", reason)]))
        .iter()
        .sum::<f64>();
    assert!(
        refused > 0.0,
        "the connection limit refused none of the flood"
    );
    assert_eq!(
        (refused + timed_out) as usize,
        flood_size,
        "{refused} refused, {timed_out} timed out"
    );
    assert_eq!(scrape.value(REFUSED, &[("reason", "source_limit")]), 0.0);
}
