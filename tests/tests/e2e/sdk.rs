//! The SDK in a user's own service: an mTLS server built with the revocation-aware verifier
//! accepts a Mintgate workload, then refuses it once it is revoked, without restarting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mintgate_sdk::{
    Attestation, Client, RevocationAwareClientVerifier, RevocationCheck, RevocationWatcher,
    WatcherConfig, WhenStale, v1,
};
use mintgate_tests::{Backend, TestServer, both_backends};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::revocation::{Workload, enroll, revoke_request};

const API: &str = "spiffe://dev.mintgate.local/workload/api";
const WEB: &str = "spiffe://dev.mintgate.local/workload/web";

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The user's service: mTLS with Mintgate workloads as clients, answering "hello" to each.
/// Its own server certificate is the user's business (here a self-signed one).
async fn spawn_service(
    mintgate_ca_pem: &str,
    check: RevocationCheck,
) -> (std::net::SocketAddr, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(mintgate_ca_pem));
    let inner = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let verifier = Arc::new(RevocationAwareClientVerifier { inner, check });
    let server_cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.cert.der().clone()],
            key(&server_cert.signing_key.serialize_pem()),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, server_cert.cert.pem())
}

/// Whether `client` completes a handshake with the service and hears "hello".
async fn greeted(addr: std::net::SocketAddr, service_pem: &str, client: &Workload) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(service_pem));
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&client.chain_pem), key(&client.key_pem))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    let mut heard = String::new();
    tls.read_to_string(&mut heard).await.is_ok() && heard == "hello\n"
}

both_backends!(an_sdk_server_refuses_a_peer_once_it_is_revoked, sdk_server);
async fn sdk_server(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let api = enroll(&server, API, "api").await;
    let web = enroll(&server, WEB, "web").await;

    // The service follows the feed with its own Mintgate identity.
    let url = server.url();
    let material = server.material(&api.chain_pem, &api.key_pem);
    let watcher = RevocationWatcher::spawn(
        Arc::new(move || {
            let (url, material) = (url.clone(), material.clone());
            Box::pin(async move { Client::connect(&url, "localhost", &material).await })
        }),
        WatcherConfig::default(),
    )
    .unwrap();
    let set = watcher.set();
    let check = RevocationCheck {
        set: set.clone(),
        max_staleness: Duration::from_secs(60),
        when_stale: WhenStale::FailClosed,
    };
    // Fail-closed: until the feed has been heard from, nobody gets in.
    let (addr, service_pem) = spawn_service(&server.pki.ca.cert_pem, check).await;
    tokio::time::timeout(Duration::from_secs(10), set.contacted())
        .await
        .expect("the watcher hears from the feed");
    assert!(
        greeted(addr, &service_pem, &web).await,
        "a good peer is accepted"
    );

    let started = Instant::now();
    let revoked = server
        .admin()
        .await
        .revoke(revoke_request(
            "r",
            &web.serial,
            v1::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    set.applied_through(revoked.seq).await;
    eprintln!(
        "sdk: revocation enforced in the user's service {:?} after the Revoke call started",
        started.elapsed()
    );
    assert!(set.is_revoked(&web.serial));
    assert!(
        !greeted(addr, &service_pem, &web).await,
        "the revoked peer is refused"
    );
    assert!(
        greeted(addr, &service_pem, &api).await,
        "others still get in"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_stale_feed_fails_open_or_closed_as_configured() {
    let server = TestServer::spawn(Backend::Sqlite).await;
    let web = enroll(&server, WEB, "web").await;
    let der = certs(&web.chain_pem).remove(0);
    // A set that never heard from the server is stale.
    let set = mintgate_sdk::RevocationSet::empty();
    let check = |when_stale| RevocationCheck {
        set: set.clone(),
        max_staleness: Duration::from_secs(60),
        when_stale,
    };
    assert!(check(WhenStale::FailOpen).check(&der).is_ok());
    assert!(check(WhenStale::FailClosed).check(&der).is_err());
    server.shutdown().await;
}

/// The SDK's clock over the server's manual clock: the first `jumps` sleeps move time forward
/// instead of waiting (so the renewal schedule plays out at once and the server agrees on the
/// time); later sleeps never end.
pub(crate) struct JumpingClock {
    pub(crate) clock: Arc<mintgate_tests::ManualClock>,
    pub(crate) jumps: std::sync::atomic::AtomicUsize,
}

impl mintgate_sdk::Clock for JumpingClock {
    fn now(&self) -> time::OffsetDateTime {
        self.clock.now_odt()
    }

    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        use std::sync::atomic::Ordering;
        let jump = self
            .jumps
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if jump.is_ok() {
            self.clock.advance(d);
            Box::pin(std::future::ready(()))
        } else {
            Box::pin(std::future::pending())
        }
    }
}

both_backends!(
    the_credential_manager_renews_inside_the_window,
    credential_manager
);
async fn credential_manager(backend: Backend) {
    use mintgate_sdk::{CredentialManager, Endpoint, RenewalPolicy};
    let server = TestServer::spawn(backend).await;
    let policy = RenewalPolicy {
        ttl: Some(Duration::from_secs(600)),
        ..RenewalPolicy::default()
    };
    let manager = CredentialManager::enroll(
        &server.node().await,
        Endpoint {
            url: server.url(),
            server_name: "localhost".into(),
        },
        WEB,
        Attestation::default(),
        policy,
        Arc::new(JumpingClock {
            clock: server.clock.clone(),
            jumps: 1.into(),
        }),
    )
    .await
    .unwrap();
    let mut updates = manager.subscribe();
    let first = manager.current();
    assert_eq!(first.spiffe_id, WEB);

    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .expect("renewed")
        .unwrap();
    let renewed = manager.current();
    assert_ne!(renewed.serial, first.serial);
    assert_ne!(renewed.key_pem, first.key_pem, "a renewal brings a new key");
    // Renewed inside the window: from 50 % (the server's hint) to 62.5 % of the first
    // certificate's lifetime (the server backdates notBefore by 30 s; timestamps are seconds).
    let lifetime = (first.not_after - first.not_before).whole_seconds();
    let at = (renewed.not_before + Duration::from_secs(30) - first.not_before).whole_seconds();
    assert!(
        (lifetime / 2 - 1..=lifetime * 5 / 8 + 1).contains(&at),
        "renewed at {at} s of {lifetime} s"
    );
    mintgate_tests::csr::check_issued(
        &renewed.chain_pem,
        &server.pki.ca.cert_pem,
        WEB,
        server.clock.now_odt().unix_timestamp(),
    );
    let status = server
        .admin()
        .await
        .check_status(vec![first.serial.clone(), renewed.serial.clone()])
        .await
        .unwrap();
    // The first certificate was superseded, not revoked: it stays valid until its notAfter.
    let statuses: Vec<_> = status.statuses.iter().map(|s| s.status()).collect();
    assert_eq!(
        statuses,
        [
            v1::CertificateStatus::Superseded,
            v1::CertificateStatus::Good
        ]
    );
    server.shutdown().await;
}

/// An SDK clock whose sleeps jump the server's clock forward, one at a time, each only when the
/// test lets it (so the test sees every renewal attempt and every backoff).
pub(crate) struct GatedClock {
    pub(crate) clock: Arc<mintgate_tests::ManualClock>,
    pub(crate) gate: Arc<tokio::sync::Semaphore>,
    pub(crate) sleeps: tokio::sync::mpsc::UnboundedSender<Duration>,
}

impl mintgate_sdk::Clock for GatedClock {
    fn now(&self) -> time::OffsetDateTime {
        self.clock.now_odt()
    }

    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let _ = self.sleeps.send(d);
        let (clock, gate) = (self.clock.clone(), self.gate.clone());
        Box::pin(async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
                clock.advance(d);
            }
        })
    }
}

both_backends!(
    renewal_backs_off_while_the_server_is_down_and_succeeds_when_it_returns,
    renewal_outage
);
async fn renewal_outage(backend: Backend) {
    use mintgate_sdk::{CredentialManager, Endpoint, RenewalPolicy};
    let server = TestServer::spawn(backend).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (sleeps_tx, mut sleeps) = tokio::sync::mpsc::unbounded_channel();
    let policy = RenewalPolicy {
        ttl: Some(Duration::from_secs(600)),
        min_backoff: Duration::from_secs(2),
        max_backoff: Duration::from_secs(20),
        ..RenewalPolicy::default()
    };
    let manager = CredentialManager::enroll(
        &server.node().await,
        Endpoint {
            url: server.url(),
            server_name: "localhost".into(),
        },
        WEB,
        Attestation::default(),
        policy,
        Arc::new(GatedClock {
            clock: server.clock.clone(),
            gate: gate.clone(),
            sleeps: sleeps_tx,
        }),
    )
    .await
    .unwrap();
    let first = manager.current();
    let mut updates = manager.subscribe();
    // The manager waits for its renewal time; the server goes down meanwhile.
    let stopped = server.stop().await;
    let next_sleep = async |sleeps: &mut tokio::sync::mpsc::UnboundedReceiver<Duration>| {
        let slept = tokio::time::timeout(Duration::from_secs(15), sleeps.recv()).await;
        slept.expect("the manager sleeps again").unwrap()
    };
    // The first sleep (until the renewal time) is asked for before any permit.
    let mut backoffs = vec![next_sleep(&mut sleeps).await];
    for _ in 0..3 {
        // Each permit ends one sleep; the failed attempt after it asks for a backoff sleep,
        // which then waits for the next permit.
        gate.add_permits(1);
        backoffs.push(next_sleep(&mut sleeps).await);
    }
    assert!(sleeps.try_recv().is_err(), "one attempt per permit");
    // Full jitter below a doubling ceiling (2, 4, 8 s) after the first sleep (the renewal time).
    for (delay, ceiling) in backoffs[1..].iter().zip([2, 4, 8]) {
        assert!(*delay <= Duration::from_secs(ceiling), "{backoffs:?}");
    }
    assert_eq!(
        manager.current().serial,
        first.serial,
        "nothing renewed while down"
    );

    // Back on the same address: the next attempt succeeds.
    let server = stopped.start_on_same_port().await;
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(15), updates.changed())
        .await
        .expect("renewed once the server is back")
        .unwrap();
    assert_ne!(manager.current().serial, first.serial);
    server.shutdown().await;
}
