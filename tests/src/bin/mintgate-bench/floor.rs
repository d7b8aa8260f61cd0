//! The floor of benchmark 3: the same subscribers, each on its own mTLS connection with its own
//! certificate, served by bare tokio-rustls (no HTTP/2, no gRPC): one task per connection
//! writes the same pre-encoded event bytes when told. It runs as a child process (this binary's
//! hidden `floor-server` subcommand), as the Mintgate server does, and is told to send by a
//! line on its stdin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use mintgate_sdk::TlsMaterial;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::fanout::{Reporter, connect_all};
use crate::support::{rss_kib, spawn};

/// Arguments of the hidden `floor-server` subcommand.
#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Directory with server.pem, server.key and ca.pem (the client CA).
    #[arg(long)]
    pki: PathBuf,
    /// What to write to every connection for each line read on stdin, hex.
    #[arg(long)]
    payload: String,
}

/// What the floor measured.
pub struct Floor {
    pub latencies: Vec<Duration>,
    pub connect_seconds: f64,
    pub kib_per_connection: f64,
}

/// Starts the floor server, connects every identity to it and runs `rounds` sends.
pub async fn run(
    dir: &Path,
    pki: &Path,
    identities: &[TlsMaterial],
    payload: &[u8],
    rounds: usize,
) -> anyhow::Result<Floor> {
    let exe = std::env::current_exe()?;
    let pki_arg = pki.display().to_string();
    let args = [
        "floor-server",
        "--pki",
        &pki_arg,
        "--payload",
        &hex::encode(payload),
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
    let frame = payload.len();
    let mut subscribed = connect_all(n, "floor connections (3)", |i, reporter| {
        listen(addr, identities[i].clone(), frame, reporter)
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
    Ok(Floor {
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

/// The `floor-server` process: prints its address, then serves until stdin closes.
pub async fn serve(args: FloorArgs) -> anyhow::Result<()> {
    let payload: Arc<[u8]> = hex::decode(&args.payload)?.into();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&args.pki)?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let (send, _) = broadcast::channel::<Arc<[u8]>>(16);
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = commands.next_line() => match line? {
                Some(_) => drop(send.send(payload.clone())),
                None => return Ok(()),
            },
            accepted = listener.accept() => {
                let (tcp, _) = accepted?;
                tcp.set_nodelay(true)?;
                let (acceptor, events) = (acceptor.clone(), send.subscribe());
                tokio::spawn(connection(acceptor, tcp, events));
            }
        }
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    mut events: broadcast::Receiver<Arc<[u8]>>,
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
