//! The end-to-end test harness: [`TestServer::spawn`] starts a real Mintgate on port 0 with a
//! fresh database (SQLite in a temp dir, or its own PostgreSQL database), an ephemeral PKI, and
//! an injected clock; it hands out ready mTLS clients for each kind of caller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bad_csr;
pub mod clock;
pub mod csr;
pub mod db;
pub mod disk;
pub mod logs;
pub mod proxy;
pub mod raw;
mod tools;

use std::collections::HashMap;
use std::sync::Arc;

use mintgate_api::{GrpcConfig, HubConfig};
use mintgate_ca::{
    DEV_VALIDITY, DevPki, Pkcs11Config, Pkcs11Key, generate_pki, generate_pki_with_issuing_key,
};
use mintgate_domain::TrustDomain;
use mintgate_domain::policy::PolicySource;
use mintgate_domain::risk::RiskConfig;
use mintgate_domain::service::HoldSettings;
use mintgate_sdk::{Client, TlsMaterial, v1};
use mintgate_server::config::{AuditSettings, CaKeySource, CaSettings, ReplicationSettings};
use mintgate_server::{Application, BuildError, Settings};
use mintgate_store::{ProbeSettings, SqlStore};
use sea_orm::{ConnectionTrait, Database, Statement};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use crate::clock::ManualClock;
pub use crate::db::Backend;
pub use tools::{python_module_available, tool_available};

pub const TRUST_DOMAIN: &str = "dev.mintgate.local";
pub const NODE_ID: &str = "spiffe://dev.mintgate.local/node/dev-node-1";
pub const ADMIN_ID: &str = "spiffe://dev.mintgate.local/operator/admin";
/// The dev policy author (policy-author, issuer, revoker).
pub const ALICE_ID: &str = "spiffe://dev.mintgate.local/operator/alice";
/// The dev policy approver (policy-approver, approver, revoker, auditor).
pub const BOB_ID: &str = "spiffe://dev.mintgate.local/operator/bob";

/// The `mintgate` binary of this build (built by `cargo test --workspace` for the server
/// package's own CLI tests, next to this test executable's `deps/` directory).
pub fn mintgate_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("mintgate");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p mintgate-server` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// GET `path` from the HTTP server at `addr`: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\n\r\n"), &[]).await
}

/// POST `body` as `content_type` to `path` on the HTTP server at `addr`: (status code, body).
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http_request(addr, &head, body).await
}

/// Sends `head` (request line and headers, ending in an empty line; Host and Connection are
/// added) and `body`, and reads the whole answer: (status code, body).
async fn http_request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (line, headers) = head.split_once("\r\n").unwrap();
    let head = format!("{line}\r\nHost: mintgate\r\nConnection: close\r\n{headers}");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

/// A running server and what a test needs to talk to it.
pub struct TestServer {
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub pki: DevPki,
    pub clock: Arc<ManualClock>,
    pub database_url: String,
    pub backend: Backend,
    store: SqlStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    db: db::TestDatabase,
}

/// What [`TestServer::stored_rows`] found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRows {
    /// (caller, request_id, state)
    pub requests: Vec<(String, String, String)>,
    /// (serial hex, state), by serial
    pub certificates: Vec<(String, String)>,
}

/// A [`TestServer`] that was stopped: its database, PKI and clock, waiting to start again.
pub struct StoppedServer {
    backend: Backend,
    db: db::TestDatabase,
    pki: DevPki,
    clock: Arc<ManualClock>,
    grpc_addr: std::net::SocketAddr,
}

impl StoppedServer {
    /// Starts a new server on the same database, PKI and clock (on a new port).
    pub async fn start(self) -> TestServer {
        TestServer::spawn_with(Options {
            reuse: Some((self.db, self.pki, self.clock)),
            ..Options::new(self.backend)
        })
        .await
    }

    /// Starts a new server on the same database, PKI and clock, with `options` otherwise
    /// (another policy directory or other operators, for example).
    pub async fn start_with(self, options: Options) -> TestServer {
        TestServer::spawn_with(Options {
            reuse: Some((self.db, self.pki, self.clock)),
            ..options
        })
        .await
    }

    /// The clock it had, and will have again.
    pub fn clock(&self) -> Arc<ManualClock> {
        self.clock.clone()
    }

    /// Starts it again, failing as the application does.
    pub async fn try_start(self) -> Result<TestServer, BuildError> {
        TestServer::try_spawn_with(Options {
            reuse: Some((self.db, self.pki, self.clock)),
            ..Options::new(self.backend)
        })
        .await
    }

    /// What an operator does when the issuing CA nears its end: a new issuing CA (and server
    /// certificate from it), valid for a year from the wall clock's now (test clients check the
    /// server's certificate by the wall clock). The node and operator PKI stay.
    pub fn replace_issuing_ca(&mut self) {
        let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
        let fresh = generate_pki(&td, time::OffsetDateTime::now_utc()).unwrap();
        self.pki.ca = fresh.ca;
        self.pki.server = fresh.server;
    }

    /// Like [`StoppedServer::start`], on the gRPC address it had (clients configured with it
    /// reach the new server).
    pub async fn start_on_same_port(self) -> TestServer {
        TestServer::spawn_with(Options {
            grpc_addr: self.grpc_addr,
            reuse: Some((self.db, self.pki, self.clock)),
            ..Options::new(self.backend)
        })
        .await
    }
}

/// Knobs for [`TestServer::spawn_with`].
pub struct Options {
    pub backend: Backend,
    /// The policy directory's text (default: the dev policy).
    pub policy: Option<PolicySource>,
    /// Reuse this database and PKI (a restart).
    pub reuse: Option<(db::TestDatabase, DevPki, Arc<ManualClock>)>,
    pub revocation: HubConfig,
    /// The gRPC port's limits on connections, handshakes and calls.
    pub grpc: GrpcConfig,
    /// Where gRPC listens (port 0: any free port).
    pub grpc_addr: std::net::SocketAddr,
    /// How often the store's health is probed, and for how long.
    pub store_probe: ProbeSettings,
    /// Use this database instead of a fresh one.
    pub database: Option<db::TestDatabase>,
    /// Give the server an issuing CA (and a server certificate from it) that ends this long
    /// after the clock's now, instead of in a year; the node and operator PKI are as usual.
    pub ca_expires_in: Option<std::time::Duration>,
    /// The operators' first role bindings (default: the dev operators admin, alice and bob).
    pub operators: Option<HashMap<String, Vec<String>>>,
    /// A signed audit checkpoint after this many events (default: the server's, 1000).
    pub checkpoint_every_events: u64,
    /// ... or after this long on the clock (default: the server's, 300 s).
    pub checkpoint_every: std::time::Duration,
    /// The risk assessment (default: [`quiet_risk`], so bursts do not trip holds).
    pub risk: RiskConfig,
    /// How holds wait (default: the server's).
    pub holds: HoldSettings,
    /// How often replicas try the leader lock (default: 100 ms, so handovers are quick).
    pub leader_check: std::time::Duration,
    /// Keep the issuing CA's key in this PKCS#11 token (generated there, or found by its
    /// label) instead of a file: the dev PKI gets an issuing CA certificate for it. Only for a
    /// fresh server (not with `reuse`).
    pub pkcs11: Option<Pkcs11Config>,
    /// How long a prepared CA is published before it may be activated (default: the
    /// server's, a day; rotation tests move the clock past it).
    pub ca_publish: std::time::Duration,
    /// The `jwt` attestor's settings (`[attestation.jwt]`; default: off).
    pub jwt: Option<mintgate_server::config::JwtSettings>,
}

/// The server's risk defaults without the rate and breadth signals: most tests issue in
/// bursts from one node, which is what those signals are for. The risk tests set their own.
pub fn quiet_risk() -> RiskConfig {
    RiskConfig {
        spike_min_per_minute: u64::MAX,
        spike_min_per_hour: u64::MAX,
        many_identities_per_hour: u64::MAX,
        ..RiskConfig::default()
    }
}

impl Options {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            policy: None,
            reuse: None,
            revocation: HubConfig::default(),
            grpc: GrpcConfig::default(),
            grpc_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            store_probe: ProbeSettings::default(),
            database: None,
            ca_expires_in: None,
            operators: None,
            checkpoint_every_events: mintgate_server::config::DEFAULT_CHECKPOINT_EVERY_EVENTS,
            checkpoint_every: std::time::Duration::from_secs(
                mintgate_server::config::DEFAULT_CHECKPOINT_EVERY_SECONDS,
            ),
            risk: quiet_risk(),
            holds: HoldSettings::default(),
            leader_check: std::time::Duration::from_millis(100),
            pkcs11: None,
            ca_publish: mintgate_domain::authority::DEFAULT_PUBLISH,
            jwt: None,
        }
    }
}

impl TestServer {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(Options::new(backend)).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        Self::try_spawn_with(options).await.unwrap()
    }

    /// [`TestServer::spawn_with`], returning what `Application::build` refused (the database
    /// is dropped then).
    pub async fn try_spawn_with(options: Options) -> Result<Self, BuildError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
        let (db, pki, clock) = match options.reuse {
            Some(r) => r,
            None => {
                let clock = Arc::new(ManualClock::new());
                let mut pki = match &options.pkcs11 {
                    Some(config) => {
                        let (key, _) = Pkcs11Key::open_or_generate(config).unwrap();
                        generate_pki_with_issuing_key(&td, clock.now_odt(), key).unwrap()
                    }
                    None => generate_pki(&td, clock.now_odt()).unwrap(),
                };
                if let Some(left) = options.ca_expires_in {
                    let old = generate_pki(&td, clock.now_odt() - DEV_VALIDITY + left).unwrap();
                    pki.ca = old.ca;
                    pki.server = old.server;
                }
                let db = match options.database {
                    Some(db) => db,
                    None => db::TestDatabase::create(options.backend).await,
                };
                (db, pki, clock)
            }
        };
        let operator_roles = options
            .operators
            .unwrap_or_else(mintgate_server::config::dev_operators);
        let secret: [u8; 32] = hex::decode(pki.join_token_key_hex.trim())
            .unwrap()
            .try_into()
            .unwrap();
        let settings = Settings {
            trust_domain: td.clone(),
            database_url: db.url.clone(),
            grpc_addr: options.grpc_addr,
            http_addr: "127.0.0.1:0".parse().unwrap(),
            ca: CaSettings {
                cert_pem: pki.ca.cert_pem.clone(),
                key_ref: options
                    .pkcs11
                    .as_ref()
                    .map_or_else(String::new, |c| c.key_label.clone()),
                key: match options.pkcs11 {
                    Some(config) => CaKeySource::Pkcs11(config),
                    None => CaKeySource::File(pki.ca.key_pem.clone()),
                },
                min_lifetime: mintgate_domain::lifetime::DEFAULT_MIN_LIFETIME,
                publish: options.ca_publish,
            },
            server_cert_pem: pki.server.cert_pem.clone(),
            server_key_pem: pki.server.key_pem.clone(),
            bootstrap_cas_pem: vec![pki.bootstrap_ca.cert_pem.clone()],
            operator_cas_pem: vec![pki.operator_ca.cert_pem.clone()],
            operator_roles,
            policy: options.policy.unwrap_or_else(PolicySource::dev),
            policy_origin: "the test policy".to_owned(),
            environment: "test".to_owned(),
            join_token_secret: secret,
            crl_url: None,
            revocation: options.revocation.clone(),
            store_probe: options.store_probe,
            grpc: options.grpc.clone(),
            descriptor_reserve: mintgate_server::config::DEFAULT_DESCRIPTOR_RESERVE,
            otlp_endpoint: None,
            // The --dev audit key, derived from the dev PKI's join-token secret.
            audit: Some(AuditSettings {
                every_events: options.checkpoint_every_events,
                every: options.checkpoint_every,
                ..AuditSettings::dev(&secret).unwrap()
            }),
            risk: options.risk.clone(),
            holds: options.holds,
            replication: ReplicationSettings {
                leader_check: options.leader_check,
            },
            jwt: options.jwt,
            dev: true,
        };
        let app = match Application::build(settings, clock.clone()).await {
            Ok(app) => app,
            Err(e) => {
                db.drop_database().await;
                return Err(e);
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let grpc_addr = app.grpc_addr();
        let http_addr = app.http_addr();
        let store = app.store().clone();
        let task = tokio::spawn(async move {
            app.run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Ok(Self {
            grpc_addr,
            http_addr,
            clock,
            database_url: db.url.clone(),
            backend: options.backend,
            store,
            stop: Some(stop),
            task: Some(task),
            db,
            pki,
        })
    }

    /// Another server on this one's database, PKI and clock, with ports of its own: a replica
    /// (`options` as for [`TestServer::spawn_with`]; its database and PKI are this server's).
    pub async fn replica(&self, options: Options) -> Self {
        let shared = db::TestDatabase::shared(&self.database_url);
        Self::spawn_with(Options {
            reuse: Some((shared, self.pki.clone(), self.clock.clone())),
            ..options
        })
        .await
    }

    /// Stops the server and starts a new one on the same database, PKI and clock.
    pub async fn restart(self) -> Self {
        self.stop().await.start().await
    }

    /// Stops the server, keeping its database, PKI and clock so that [`StoppedServer::start`]
    /// can bring it back (on a new port). Until then, calls to it fail as unavailable.
    pub async fn stop(mut self) -> StoppedServer {
        self.stop_server().await;
        StoppedServer {
            backend: self.backend,
            db: std::mem::replace(&mut self.db, db::TestDatabase::placeholder()),
            pki: self.pki.clone(),
            clock: self.clock.clone(),
            grpc_addr: self.grpc_addr,
        }
    }

    async fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// Stops the server and drops its database.
    pub async fn shutdown(mut self) {
        self.stop_server().await;
        let db = std::mem::replace(&mut self.db, db::TestDatabase::placeholder());
        db.drop_database().await;
    }

    pub fn store(&self) -> &SqlStore {
        &self.store
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// TLS material for a caller holding `cert_pem`/`key_pem`.
    pub fn material(&self, cert_pem: &str, key_pem: &str) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.pki.ca.cert_pem.clone(),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        }
    }

    pub async fn client_with(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Client, mintgate_sdk::Error> {
        Client::connect(&self.url(), "localhost", &self.material(cert_pem, key_pem)).await
    }

    /// A client holding the node (bootstrap) certificate.
    pub async fn node(&self) -> Client {
        self.client_with(&self.pki.node.cert_pem, &self.pki.node.key_pem)
            .await
            .unwrap()
    }

    /// A client holding a certificate of another node, `/node/<name>`, from the bootstrap CA.
    pub async fn node_named(&self, name: &str) -> Client {
        let id = format!("spiffe://{TRUST_DOMAIN}/node/{name}");
        let (cert, key) = csr::node_certificate(&self.pki.bootstrap_ca, &id, self.clock.now_odt());
        self.client_with(&cert, &key).await.unwrap()
    }

    /// An mTLS channel holding `cert_pem`/`key_pem`, connected.
    pub async fn channel(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pki.ca.cert_pem))
            .identity(Identity::from_pem(cert_pem, key_pem))
            .domain_name("localhost");
        Endpoint::from_shared(self.url())?
            .tls_config(tls)?
            .connect()
            .await
    }

    /// The raw generated Provisioning client holding the node certificate, for tests that look
    /// at the whole `tonic::Status` (ErrorInfo domain and metadata), which the SDK boils down.
    pub async fn node_provisioning(&self) -> v1::provisioning_client::ProvisioningClient<Channel> {
        let channel = self
            .channel(&self.pki.node.cert_pem, &self.pki.node.key_pem)
            .await
            .unwrap();
        v1::provisioning_client::ProvisioningClient::new(channel)
    }

    /// The Revocation client of whoever holds `cert_pem`/`key_pem`.
    pub async fn revocation_as(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> v1::revocation_client::RevocationClient<Channel> {
        v1::revocation_client::RevocationClient::new(self.channel(cert_pem, key_pem).await.unwrap())
    }

    /// The Revocation client of a dev operator with the revoker role (alice: not the
    /// break-glass admin, whose every use is audited).
    pub async fn admin_revocation(&self) -> v1::revocation_client::RevocationClient<Channel> {
        self.revocation_as(&self.pki.alice.cert_pem, &self.pki.alice.key_pem)
            .await
    }

    /// GET `path` on the HTTP port: (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(self.http_addr, path).await
    }

    pub async fn http_post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        http_post(self.http_addr, path, content_type, body).await
    }

    /// Every stored request as (caller, request_id, state), in insertion order, and every stored
    /// certificate as (serial, state), by serial; read straight from the database.
    pub async fn stored_rows(&self) -> StoredRows {
        let db = Database::connect(&self.database_url).await.unwrap();
        let backend = db.get_database_backend();
        let query = |sql: &str| Statement::from_string(backend, sql.to_owned());
        let requests = db
            .query_all_raw(query(
                "SELECT caller, request_id, state FROM requests ORDER BY pk",
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|row| {
                (
                    row.try_get_by_index(0).unwrap(),
                    row.try_get_by_index(1).unwrap(),
                    row.try_get_by_index(2).unwrap(),
                )
            })
            .collect();
        let certificates = db
            .query_all_raw(query(
                "SELECT serial, state FROM certificates ORDER BY serial",
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|row| {
                (
                    row.try_get_by_index(0).unwrap(),
                    row.try_get_by_index(1).unwrap(),
                )
            })
            .collect();
        let _ = db.close().await;
        StoredRows {
            requests,
            certificates,
        }
    }

    /// An mTLS channel of the dev operator `name` (admin, alice or bob).
    pub async fn operator_channel(&self, name: &str) -> Channel {
        let cert = match name {
            "admin" => &self.pki.admin,
            "alice" => &self.pki.alice,
            "bob" => &self.pki.bob,
            other => panic!("no dev operator {other}"),
        };
        self.channel(&cert.cert_pem, &cert.key_pem).await.unwrap()
    }

    /// The Admin client of the dev operator `name` (admin, alice or bob).
    pub async fn admin_as(&self, name: &str) -> v1::admin_client::AdminClient<Channel> {
        v1::admin_client::AdminClient::new(self.operator_channel(name).await)
    }

    /// A client holding the operator (admin) certificate.
    pub async fn admin(&self) -> Client {
        self.client_with(&self.pki.admin.cert_pem, &self.pki.admin.key_pem)
            .await
            .unwrap()
    }
}
