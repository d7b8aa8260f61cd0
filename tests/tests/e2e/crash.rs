//! A server killed mid-issue leaves its request APPROVED with the serial it reserved. The server
//! that comes up next is a new lease holder and knows the old one is gone, so a retry of that
//! request is answered at once (with a fresh serial: the reserved one may have been signed by the
//! dead process). A lease whose holder still runs is respected by other replicas; the holder
//! itself knows whether an attempt of its own still signs the request, and takes it over if not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mintgate_api::peer::PeerClassifier;
use mintgate_ca::{CertificateAuthority, DevPki};
use mintgate_domain::lifetime::DEFAULT_MIN_LIFETIME;
use mintgate_domain::model::{Caller, CallerKind};
use mintgate_domain::policy::{Policy, PolicySource};
use mintgate_domain::ports::{
    CrlSpec, IssueSpec, OcspSpec, SignedCertificate, Signer, SignerError,
};
use mintgate_domain::service::{
    APPROVAL_LEASE, IssueInput, IssueOutcome, JoinTokenSecret, Mintgate, Parts,
};
use mintgate_domain::store::CertificateStore;
use mintgate_domain::{RequestId, Serial, TrustDomain};
use mintgate_server::clock::OsRandom;
use mintgate_store::SqlStore;
use mintgate_tests::csr::{check_issued, csr};
use mintgate_tests::db::TestDatabase;
use mintgate_tests::{Backend, ManualClock, Options, TRUST_DOMAIN, TestServer, both_backends};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use tonic::Code;

use crate::issuance::{WORKLOAD, enroll_request};

both_backends!(
    a_retry_after_a_crash_mid_issue_is_answered_at_once_by_the_next_server,
    crashed_holder
);
async fn crashed_holder(backend: Backend) {
    let (db, pki, clock) = fresh(backend).await;
    let first = FirstServer::open(&db, &pki, clock.clone()).await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    let abandoned = first.crash_mid_issue("c-1", &csr_pem).await;
    // The process is gone: its connections (and on PostgreSQL its instance lock) with it.
    first.store.close().await;

    let server = restart_on(backend, db, pki, &clock).await;
    clock.virtual_sleeps();
    let before = clock.now_odt();
    let issued = server
        .node()
        .await
        .enroll(enroll_request("c-1", &csr_pem))
        .await
        .expect("the retry is answered, not told to wait for the dead server");
    assert_eq!(
        clock.now_odt(),
        before,
        "the retry did not wait for the lease"
    );
    let checked = check_issued(
        &issued.certificate_chain_pem,
        &server.pki.ca.cert_pem,
        WORKLOAD,
        before.unix_timestamp(),
    );
    assert_eq!(checked.serial_hex, issued.serial);
    assert_ne!(
        issued.serial,
        abandoned.to_hex(),
        "a reserved serial is never reused"
    );
    let status = server.node().await.get_request("c-1").await.unwrap();
    assert_eq!(status.state(), mintgate_sdk::v1::RequestState::Issued);
    assert_eq!(status.serial, issued.serial);

    // The takeover is in the audit trail, with the serial the dead server had reserved.
    let chain = server.store().audit_chain().await.unwrap();
    let retried = chain
        .iter()
        .find(|e| e.event.action == "request.retried")
        .expect("a request.retried event");
    let detail = retried.event.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("abandoned serial {}", abandoned.to_hex()))
            && detail.contains("is gone"),
        "{detail}"
    );
    server.shutdown().await;
}

both_backends!(
    a_lease_whose_holder_still_runs_is_respected_by_others_and_retaken_by_the_holder,
    live_holder
);
async fn live_holder(backend: Backend) {
    let (db, pki, clock) = fresh(backend).await;
    let first = FirstServer::open(&db, &pki, clock.clone()).await;
    let (csr_pem, _) = csr(WORKLOAD, &[]);
    // Only the issuing task died: the server holding the lease runs on.
    let abandoned = first.crash_mid_issue("l-1", &csr_pem).await;
    clock.virtual_sleeps();
    let approved_at = clock.now_odt();

    let (replica, sqlite_db) = if backend == Backend::Postgres {
        // Another replica sharing the database cannot know the attempt died: it respects the
        // running holder's lease, and the client is told to retry.
        let server = restart_on(backend, db, pki.clone(), &clock).await;
        let err = server
            .node()
            .await
            .enroll(enroll_request("l-1", &csr_pem))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.reason.as_str()),
            (Code::Unavailable, "REQUEST_IN_PROGRESS")
        );
        assert!(clock.now_odt() - approved_at < APPROVAL_LEASE);
        (Some(server), None)
    } else {
        (None, Some(db))
    };

    // The holder knows that no attempt of its own signs the request any more (its attempt
    // failed and could not record so): a retry there takes it over at once, with a fresh serial.
    let before = clock.now_odt();
    let issued = first
        .app
        .enroll(&first.node, input("l-1", &csr_pem))
        .await
        .unwrap();
    let IssueOutcome::Issued(issued) = issued else {
        panic!("held: {issued:?}");
    };
    assert_eq!(clock.now_odt(), before, "the retry did not wait");
    assert_ne!(issued.serial, abandoned);
    check_issued(
        &issued.chain_pem,
        &pki.ca.cert_pem,
        WORKLOAD,
        before.unix_timestamp(),
    );
    let request = first
        .store
        .find_request(&first.node.id.to_string(), "l-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.serial.as_ref(), Some(&issued.serial));
    first.store.close().await;
    if let Some(server) = replica {
        server.shutdown().await;
    }
    if let Some(db) = sqlite_db {
        db.drop_database().await;
    }
}

/// A database, PKI and clock for a first server and the one that follows it.
async fn fresh(backend: Backend) -> (TestDatabase, DevPki, Arc<ManualClock>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clock = Arc::new(ManualClock::new());
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let pki = mintgate_ca::generate_pki(&td, clock.now_odt()).unwrap();
    (TestDatabase::create(backend).await, pki, clock)
}

/// A [`TestServer`] on the first server's database, PKI and clock.
async fn restart_on(
    backend: Backend,
    db: TestDatabase,
    pki: DevPki,
    clock: &Arc<ManualClock>,
) -> TestServer {
    TestServer::spawn_with(Options {
        reuse: Some((db, pki, clock.clone())),
        ..Options::new(backend)
    })
    .await
}

/// The server that dies: the service on a store of its own, with a signer that kills the
/// issuance it is asked to sign first (a panic, as abrupt as `kill -9` for that request).
struct FirstServer {
    app: Arc<Mintgate<SqlStore>>,
    store: SqlStore,
    /// The node as the server sees it behind mTLS.
    node: Caller,
}

impl FirstServer {
    async fn open(db: &TestDatabase, pki: &DevPki, clock: Arc<ManualClock>) -> Self {
        let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
        let store = SqlStore::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let ca = CertificateAuthority::from_pem(&pki.ca.cert_pem, &pki.ca.key_pem, None).unwrap();
        let secret: [u8; 32] = hex::decode(pki.join_token_key_hex.trim())
            .unwrap()
            .try_into()
            .unwrap();
        let app = Mintgate::new(Parts {
            store: store.clone(),
            signer: Arc::new(DiesSigning {
                ca,
                armed: AtomicBool::new(true),
            }),
            clock,
            random: Arc::new(OsRandom),
            policy: Arc::new(Policy::load(&PolicySource::dev(), Some(&td)).unwrap()),
            environment: "test".to_owned(),
            observer: Arc::new(mintgate_domain::ports::Unobserved),
            trust_domain: td,
            token_secret: JoinTokenSecret::new(secret),
            min_lifetime: DEFAULT_MIN_LIFETIME,
            risk: mintgate_tests::quiet_risk(),
            holds: Default::default(),
            ca_publish: mintgate_domain::authority::DEFAULT_PUBLISH,
        });
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let nodes = vec![der(&pki.bootstrap_ca.cert_pem)];
        let trust = mintgate_api::tls::ClientTrust::new(nodes.clone(), &[]).unwrap();
        let classifier = PeerClassifier::new(
            trust,
            nodes.into_iter().map(|c| (CallerKind::Node, c)).collect(),
        );
        let node = classifier.classify(&der(&pki.node.cert_pem)).unwrap();
        Self {
            app: Arc::new(app),
            store,
            node: Caller::clone(&node),
        }
    }

    /// Enrolls `request_id` and dies while signing it; returns the serial it had reserved.
    async fn crash_mid_issue(&self, request_id: &str, csr_pem: &str) -> Serial {
        let (app, node, input) = (
            self.app.clone(),
            self.node.clone(),
            input(request_id, csr_pem),
        );
        let died = tokio::spawn(async move { app.enroll(&node, input).await }).await;
        assert!(
            died.is_err_and(|e| e.is_panic()),
            "the first attempt must die"
        );
        let left = self
            .store
            .find_request(
                self.node.id.as_str(),
                RequestId::parse(request_id).unwrap().as_str(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(left.state.as_str(), "APPROVED");
        assert_eq!(left.lease_holder, Some(self.store.instance_id()));
        left.serial.unwrap()
    }
}

/// What `enroll_request` sends, as the service takes it.
fn input(request_id: &str, csr_pem: &str) -> IssueInput {
    IssueInput {
        request_id: request_id.to_owned(),
        csr: csr_pem.as_bytes().to_vec(),
        ttl: None,
        join_token: None,
        service_account_token: None,
    }
}

/// The issuing CA, except that the first signature never happens: the signing task dies.
struct DiesSigning {
    ca: CertificateAuthority,
    armed: AtomicBool,
}

impl Signer for DiesSigning {
    fn sign(&self, spec: &IssueSpec<'_>) -> Result<SignedCertificate, SignerError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("simulated crash: the server dies while signing");
        }
        self.ca.sign(spec)
    }

    fn sign_crl(&self, spec: &CrlSpec<'_>) -> Result<Vec<u8>, SignerError> {
        self.ca.sign_crl(spec)
    }

    fn sign_ocsp(&self, spec: &OcspSpec<'_>) -> Result<Vec<u8>, SignerError> {
        self.ca.sign_ocsp(spec)
    }

    fn trust_bundle_pem(&self) -> String {
        self.ca.trust_bundle_pem()
    }

    fn issuer_key_id(&self) -> String {
        self.ca.issuer_key_id()
    }

    fn not_after(&self) -> OffsetDateTime {
        self.ca.not_after()
    }

    fn backdate(&self) -> Duration {
        self.ca.backdate()
    }
}
