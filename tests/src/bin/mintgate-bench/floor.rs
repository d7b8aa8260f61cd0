//! The floors of benchmarks 3 and 4: the same subscribers, each on its own mTLS connection with
//! its own certificate, served by less than Mintgate. Each runs as a child process (this binary's
//! hidden `floor-server` subcommand), as the Mintgate server does, and is told to send an event
//! by a line on its stdin.
//!
//! - [`Floor::Tls`]: bare tokio-rustls (no HTTP/2, no gRPC). One task per connection writes the
//!   same bytes as a gRPC-framed event when told.
//! - [`Floor::Http2`]: hyper's HTTP/2 server, which tonic serves with, and nothing else (no
//!   tonic, no layers, no store). The subscribers are the SDK's, each with a `WatchRevocations`
//!   call; each call is answered with a heartbeat and then the same event messages as ours,
//!   framed for gRPC. Between the two floors and ours, the figures say what HTTP/2 (h2 and
//!   hyper) costs by itself, and what tonic and Mintgate add to it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mintgate_sdk::v1::watch_revocations_response::Message;
use mintgate_sdk::{TlsMaterial, v1};
use prost::Message as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::fanout::{Reporter, connect_all, grpc_frame, watch};
use crate::support::{rss_kib, spawn};

/// Which floor.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Floor {
    /// Bare tokio-rustls.
    Tls,
    /// hyper's HTTP/2 server over the same TLS.
    Http2,
}

/// Arguments of the hidden `floor-server` subcommand.
#[derive(Debug, Args)]
pub struct FloorArgs {
    #[arg(long, value_enum)]
    floor: Floor,
    /// Directory with server.pem, server.key and ca.pem (the client CA).
    #[arg(long)]
    pki: PathBuf,
    /// The event sent for each line read on stdin: a `WatchRevocationsResponse`, hex. The
    /// HTTP/2 floor numbers it as the line's (1, 2, …) for the SDK's subscribers; the bare
    /// floor's subscribers count the events themselves, and it sends the same bytes each time.
    #[arg(long)]
    event: String,
}

/// What a floor measured.
pub struct Measured {
    pub latencies: Vec<Duration>,
    pub connect_seconds: f64,
    pub kib_per_connection: f64,
}

/// Starts the floor server, connects every identity to it and runs `rounds` sends of `event`.
pub async fn run(
    floor: Floor,
    dir: &Path,
    pki: &Path,
    identities: &[TlsMaterial],
    event: &v1::WatchRevocationsResponse,
    rounds: usize,
) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let pki_arg = pki.display().to_string();
    let kind = format!("{floor:?}").to_lowercase();
    let args = [
        "floor-server",
        "--floor",
        &kind,
        "--pki",
        &pki_arg,
        "--event",
        &hex::encode(event.encode_to_vec()),
    ];
    let mut child = spawn(&exe, &args, dir, "floor.log")?;
    let pid = child.id().context("the floor server has no pid")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let addr: SocketAddr = BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .context("the floor server did not say where it listens")?
        .parse()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;

    let n = identities.len();
    let frame = grpc_frame(&event.encode_to_vec()).len();
    let url = format!("https://{addr}");
    let what = format!("{kind} floor connections (3, 4)");
    let mut subscribed = connect_all(n, &what, |i, reporter| {
        let identity = identities[i].clone();
        let url = url.clone();
        async move {
            match floor {
                Floor::Tls => listen(addr, identity, frame, reporter).await,
                Floor::Http2 => watch(url, identity, reporter).await,
            }
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid)?;

    let mut latencies = Vec::with_capacity(n * rounds);
    for round in 1..=rounds as i64 {
        let sent = Instant::now();
        stdin.write_all(b"send\n").await?;
        stdin.flush().await?;
        latencies.extend(
            subscribed
                .heard(round)
                .await?
                .into_iter()
                .map(|at| at - sent),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    subscribed.tasks.shutdown().await;
    child.kill().await?;
    Ok(Measured {
        latencies,
        connect_seconds: subscribed.connect_seconds,
        kib_per_connection: (idle as f64 - before as f64) / n as f64,
    })
}

/// One floor subscriber: handshake, wait for the server's hello byte (it is then registered),
/// then read whole events.
async fn listen(
    addr: SocketAddr,
    tls: TlsMaterial,
    frame: usize,
    mut reporter: Reporter,
) -> anyhow::Result<()> {
    let config = Arc::new(client_config(&tls)?);
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let server_name = ServerName::try_from("localhost")?;
    let mut stream = TlsConnector::from(config).connect(server_name, tcp).await?;
    stream.read_exact(&mut [0u8]).await?;
    reporter.ready();
    let (mut event, mut round) = (vec![0; frame], 0);
    loop {
        stream.read_exact(&mut event).await?;
        round += 1;
        reporter.heard(round, Instant::now());
    }
}

fn client_config(tls: &TlsMaterial) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(tls.ca_pem.as_bytes())?)?;
    let chain =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())?;
    Ok(ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// `event` with sequence number `seq`, framed for gRPC.
fn numbered(event: &v1::WatchRevocationsResponse, seq: i64) -> Bytes {
    let mut event = event.clone();
    if let Some(Message::Event(e)) = &mut event.message {
        e.seq = seq;
    }
    grpc_frame(&event.encode_to_vec()).into()
}

/// The `floor-server` process: prints its address, then serves until stdin closes.
pub async fn serve(args: FloorArgs) -> anyhow::Result<()> {
    let event = v1::WatchRevocationsResponse::decode(hex::decode(&args.event)?.as_slice())?;
    let heartbeat = v1::WatchRevocationsResponse {
        message: Some(Message::Heartbeat(v1::Heartbeat::default())),
    };
    let heartbeat: Bytes = grpc_frame(&heartbeat.encode_to_vec()).into();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&args.pki)?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let (send, _) = broadcast::channel::<Bytes>(16);
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    // The bare floor's subscribers count events themselves: it sends the same bytes each time.
    let unnumbered: Bytes = grpc_frame(&event.encode_to_vec()).into();
    let mut seq = 0;
    loop {
        tokio::select! {
            line = commands.next_line() => match line? {
                Some(_) => {
                    seq += 1;
                    let bytes = match args.floor {
                        Floor::Tls => unnumbered.clone(),
                        Floor::Http2 => numbered(&event, seq),
                    };
                    drop(send.send(bytes));
                }
                None => return Ok(()),
            },
            accepted = listener.accept() => {
                let (tcp, _) = accepted?;
                tcp.set_nodelay(true)?;
                let acceptor = acceptor.clone();
                match args.floor {
                    Floor::Tls => tokio::spawn(tls_connection(acceptor, tcp, send.subscribe())),
                    Floor::Http2 => {
                        tokio::spawn(http2_connection(acceptor, tcp, send.clone(), heartbeat.clone()))
                    }
                };
            }
        }
    }
}

async fn tls_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    mut events: broadcast::Receiver<Bytes>,
) -> anyhow::Result<()> {
    let mut stream = acceptor.accept(tcp).await?;
    stream.write_all(&[0]).await?;
    stream.flush().await?;
    while let Ok(event) = events.recv().await {
        stream.write_all(&event).await?;
        stream.flush().await?;
    }
    Ok(())
}

/// One HTTP/2 connection: every call is answered with `hello`, then the events as they come.
async fn http2_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    events: broadcast::Sender<Bytes>,
    hello: Bytes,
) -> anyhow::Result<()> {
    let stream = acceptor.accept(tcp).await?;
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        let frames = futures_util::stream::unfold(
            (Some(hello.clone()), events.subscribe()),
            |(hello, mut events)| async move {
                let data = match hello {
                    Some(hello) => hello,
                    None => events.recv().await.ok()?,
                };
                Some((Ok::<_, Infallible>(Frame::data(data)), (None, events)))
            },
        );
        let mut response = Response::new(StreamBody::new(frames));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        async move { Ok::<_, Infallible>(response) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(mintgate_api::MAX_CONCURRENT_CALLS_PER_CONNECTION as u32)
        .serve_connection(TokioIo::new(stream), service)
        .await?;
    Ok(())
}

fn server_config(pki: &Path) -> anyhow::Result<ServerConfig> {
    let read =
        |name: &str| std::fs::read(pki.join(name)).with_context(|| format!("reading {name}"));
    let chain = CertificateDer::pem_slice_iter(&read("server.pem")?).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&read("server.key")?)?;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&read("ca.pem")?)?)?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    Ok(ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?)
}
