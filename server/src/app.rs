//! `Application::build` wires the domain to its adapters and binds both listeners before it
//! returns, so callers (and tests, with port 0) know the addresses; `run` serves until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mintgate_api::holds::{EdgeObserver, HoldFeed};
use mintgate_api::peer::PeerClassifier;
use mintgate_api::tls::{self, ClientTrust};
use mintgate_api::{BundleFeed, GrpcConfig, GrpcServer, Metrics, RevocationHub};
use mintgate_domain::lifetime::{CaExpiring, CaWindow};
use mintgate_domain::model::CallerKind;
use mintgate_domain::policy::Policy;
use mintgate_domain::ports::{AuditSigner as _, Clock, Signer};
use mintgate_domain::service::{JoinTokenSecret, Mintgate, Parts};
use mintgate_domain::store::StoreError;
use mintgate_store::{SqlStore, StoreMetrics};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::authorities::CaRegistry;
use crate::checkpoint::Checkpointer;
use crate::clock::OsRandom;
use crate::config::{ReplicationSettings, Settings, redact_url};
use crate::http::{CrlPublisher, HttpState};
use crate::metrics::Exporter;
use crate::ocsp::OcspResponder;

/// How often histogram samples are folded into buckets when nobody scrapes.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a server looks for a policy version activated on another replica.
const POLICY_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);
/// Risk counts are pruned every this many policy refreshes (10 minutes).
const RISK_PRUNE_TICKS: u32 = 300;

/// Why the application could not start. [`BuildError::is_config`] errors exit with 64.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The policy directory does not load; the source lists every problem.
    #[error("policy_dir {origin}: {source}")]
    Policy {
        origin: String,
        source: mintgate_domain::policy::LoadError,
    },
    #[error("{0} is dev material (made by `mintgate dev-certs`); it is accepted only with --dev")]
    DevMaterial(&'static str),
    #[error("{field}: no usable PEM {what} found")]
    Pem {
        field: &'static str,
        what: &'static str,
    },
    #[error("ca: {0}")]
    Ca(#[source] mintgate_ca::CaError),
    /// The CA expired or expires within `ca.min_lifetime_seconds`: it could issue nothing.
    #[error(
        "ca.cert \"{subject}\": {source} (ca.min_lifetime_seconds: {}); replace ca.cert and ca.key",
        source.min_lifetime.as_secs()
    )]
    CaExpiring { subject: String, source: CaExpiring },
    #[error("tls: {0}")]
    Tls(#[source] tls::TlsError),
    #[error("attestation.jwt: {0}")]
    Jwt(#[source] crate::jwks::ReadError),
    #[error("database {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "grpc.descriptor_reserve: {reserve} leaves no file descriptors for gRPC connections \
         under the open-file limit of {limit} (raise `ulimit -n` or lower the reserve)"
    )]
    NoDescriptors { reserve: u64, limit: u64 },
    /// Change control could not start: an operator entry is invalid (a configuration fault),
    /// or the store failed or holds an active policy that no longer loads.
    #[error("policy and operators ({origin}): {source}")]
    Governance {
        origin: String,
        source: mintgate_domain::Error,
    },
}

impl BuildError {
    /// A fault in what the operator configured (as opposed to the environment).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Policy { .. }
                | Self::DevMaterial(_)
                | Self::Pem { .. }
                | Self::Ca(_)
                | Self::CaExpiring { .. }
                | Self::Tls(_)
                | Self::Jwt(_)
                | Self::NoDescriptors { .. }
        ) || matches!(self, Self::Governance { source, .. } if source.class().is_user_fault())
    }
}

/// A built, bound, not yet serving Mintgate.
pub struct Application {
    grpc: TcpListener,
    http: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    server: GrpcServer<SqlStore>,
    store: SqlStore,
    crl: Arc<CrlPublisher>,
    ocsp: Arc<OcspResponder>,
    metrics: Arc<Exporter>,
    ca_window: CaWindow,
    /// The CAs, kept in step with the registry.
    registry: Arc<CaRegistry>,
    /// Signs audit checkpoints; none without an audit key.
    checkpoints: Option<Arc<Checkpointer>>,
    replication: ReplicationSettings,
}

impl Application {
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, BuildError> {
        let ca_chain = certs(&settings.ca.cert_pem, "ca.cert")?;
        let server_chain = certs(&settings.server_cert_pem, "tls.server_cert")?;
        let bootstrap = settings
            .bootstrap_cas_pem
            .iter()
            .map(|p| certs(p, "trust.bootstrap_cas"))
            .collect::<Result<Vec<_>, _>>()?;
        let operators = settings
            .operator_cas_pem
            .iter()
            .map(|p| certs(p, "trust.operator_cas"))
            .collect::<Result<Vec<_>, _>>()?;
        if !settings.dev {
            let named = [("ca.cert", &ca_chain), ("tls.server_cert", &server_chain)];
            for (field, chain) in named
                .into_iter()
                .chain(bootstrap.iter().map(|c| ("trust.bootstrap_cas", c)))
                .chain(operators.iter().map(|c| ("trust.operator_cas", c)))
            {
                if chain.iter().any(|c| mintgate_ca::is_dev_material(c)) {
                    return Err(BuildError::DevMaterial(field));
                }
            }
        }
        let policy = Policy::load(&settings.policy, Some(&settings.trust_domain))
            .map_err(|source| BuildError::Policy {
                origin: settings.policy_origin.clone(),
                source,
            })?
            .with_environment(settings.environment.clone());
        for warning in policy.warnings() {
            tracing::warn!(policy = %settings.policy_origin, "{warning}");
        }
        tracing::info!(
            policy = %settings.policy_origin,
            version = policy.version(),
            policies = policy.policy_count(),
            environment = %settings.environment,
            "policy loaded"
        );
        let jwt = crate::jwks::attestor(settings.jwt.as_ref())
            .await
            .map_err(BuildError::Jwt)?;
        let authorities = Arc::new(
            crate::authorities::load(&settings.ca, settings.crl_url.as_deref(), settings.dev)
                .map_err(BuildError::Ca)?,
        );
        let signer: Arc<dyn Signer> = authorities.clone();
        // The configured CA, before anything is opened.
        CaWindow {
            not_after: signer.not_after(),
            min_lifetime: settings.ca.min_lifetime,
        }
        .check(clock.now())
        .map_err(|source| BuildError::CaExpiring {
            subject: (authorities.current().active())
                .map(|ca| ca.subject().to_owned())
                .unwrap_or_default(),
            source,
        })?;
        let metrics = Arc::new(Exporter::new(signer.clone(), clock.clone()));
        let edge_metrics = Metrics::new(metrics.recorder());
        let holds = HoldFeed::default();
        let server_key = PrivateKeyDer::from_pem_slice(settings.server_key_pem.as_bytes())
            .map_err(|_| BuildError::Pem {
                field: "tls.server_key",
                what: "private key",
            })?;

        let store_metrics = StoreMetrics::new(&*metrics.recorder());
        let store = SqlStore::connect_with_metrics(
            &settings.database_url,
            store_metrics,
            settings.store_probe,
        )
        .await
        .map_err(|source| BuildError::Store {
            url: redact_url(&settings.database_url),
            source,
        })?;
        store.migrate().await.map_err(|source| BuildError::Store {
            url: redact_url(&settings.database_url),
            source,
        })?;
        // The live revocation set is loaded before the first handshake.
        let hub = RevocationHub::with_metrics(settings.revocation.clone(), edge_metrics.clone());
        mintgate_api::registry::catch_up(&hub, &store)
            .await
            .map_err(|source| BuildError::Store {
                url: redact_url(&settings.database_url),
                source,
            })?;

        // Workloads are told apart by their issuer, one of Mintgate's issuing CAs (the trust
        // follows the CA registry); nodes and operators by their configured CAs.
        let mut classified: Vec<(CallerKind, CertificateDer<'static>)> = Vec::new();
        classified.extend(
            bootstrap
                .iter()
                .flatten()
                .cloned()
                .map(|c| (CallerKind::Node, c)),
        );
        classified.extend(
            operators
                .iter()
                .flatten()
                .cloned()
                .map(|c| (CallerKind::Operator, c)),
        );
        let trust = ClientTrust::new(
            classified.iter().map(|(_, c)| c.clone()).collect(),
            &(authorities.current().cas())
                .iter()
                .map(|c| c.ca.chain_der().to_vec())
                .collect::<Vec<_>>(),
        )
        .map_err(BuildError::Tls)?;
        let bundle = BundleFeed::default();
        let registry = Arc::new(CaRegistry {
            store: store.clone(),
            signer: authorities.clone(),
            trust: trust.clone(),
            bundle: bundle.clone(),
            changed: tokio::sync::Notify::new(),
            in_step: true.into(),
            refreshing: tokio::sync::Mutex::default(),
        });
        bundle.set_reload(registry.reload_hook(hub.clone()));
        registry
            .start(&settings.ca.key_ref, settings.ca.min_lifetime, &*clock)
            .await
            .map_err(|source| BuildError::Store {
                url: redact_url(&settings.database_url),
                source,
            })?;
        // The registry's ACTIVE CA may have run out: the server still starts, so that operators
        // can rotate (issuance answers CA_EXPIRING and /readyz 503 meanwhile).
        let ca_window = CaWindow {
            not_after: signer.not_after(),
            min_lifetime: settings.ca.min_lifetime,
        };
        let tls_config = tls::server_config(
            trust.clone(),
            settings.trust_domain.clone(),
            server_chain,
            server_key,
            clock.clone(),
            hub.clone(),
        )
        .map_err(BuildError::Tls)?;
        let classifier = PeerClassifier::new(trust, classified);

        let checkpoints = match &settings.audit {
            Some(audit) => {
                tracing::info!(
                    key_id = %audit.signer.public_key().key_id,
                    algorithm = %audit.signer.public_key().algorithm,
                    every_events = audit.every_events,
                    every_seconds = audit.every.as_secs(),
                    "audit checkpoints on"
                );
                Some(Arc::new(Checkpointer::new(
                    store.clone(),
                    audit.signer.clone(),
                    clock.clone(),
                    audit.every_events,
                    audit.every,
                    &*metrics.recorder(),
                )))
            }
            None => {
                tracing::warn!(
                    "audit checkpoints are off: audit.signing_key is not set, so a rewrite of the \
                     whole audit trail would go unnoticed"
                );
                None
            }
        };
        let crl = Arc::new(CrlPublisher::new(
            authorities.clone(),
            hub.clone(),
            clock.clone(),
        ));
        let evidence = Arc::new(crate::evidence::ServerExporter::new(
            store.clone(),
            crl.clone(),
            signer.clone(),
            clock.clone(),
        ));
        let app = Mintgate::new(Parts {
            store: store.clone(),
            signer: signer.clone(),
            clock: clock.clone(),
            random: Arc::new(OsRandom),
            policy: Arc::new(policy),
            environment: settings.environment.clone(),
            observer: Arc::new(EdgeObserver {
                metrics: edge_metrics.clone(),
                holds: holds.clone(),
                announce: crate::replication::announce_holds(store.clone()),
                authorities: {
                    let registry = registry.clone();
                    Box::new(move || registry.nudge())
                },
            }),
            trust_domain: settings.trust_domain.clone(),
            token_secret: JoinTokenSecret::new(settings.join_token_secret),
            min_lifetime: settings.ca.min_lifetime,
            ca_publish: settings.ca.publish,
            risk: settings.risk.clone(),
            holds: settings.holds,
        });
        let app = Arc::new(app.with_jwt(jwt));
        let ocsp = Arc::new(OcspResponder::new(
            app.clone(),
            authorities.clone(),
            clock.clone(),
        ));
        let operators = settings
            .operator_roles
            .iter()
            .map(|(id, roles)| (id.clone(), roles.clone()))
            .collect();
        let governance = app
            .start_governance(&settings.policy, &settings.policy_origin, &operators)
            .await
            .map_err(|source| BuildError::Governance {
                origin: settings.policy_origin.clone(),
                source,
            })?;
        if governance.bootstrapped {
            tracing::info!(
                version = %governance.active_version,
                policy = %settings.policy_origin,
                "first start: the configured policy and operators are now active"
            );
        }

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BuildError::Bind { addr, source })
        };
        let grpc = bind(settings.grpc_addr).await?;
        let http = bind(settings.http_addr).await?;
        let local = |l: &TcpListener, addr| {
            l.local_addr()
                .map_err(|source| BuildError::Bind { addr, source })
        };
        let grpc_addr = local(&grpc, settings.grpc_addr)?;
        let http_addr = local(&http, settings.http_addr)?;
        let grpc_config = GrpcConfig {
            max_connections: crate::fd_limit::connection_limit(
                settings.grpc.max_connections,
                settings.descriptor_reserve,
            )?,
            ..settings.grpc.clone()
        };
        Ok(Self {
            grpc,
            http,
            grpc_addr,
            http_addr,
            server: GrpcServer {
                app,
                tls: Arc::new(tls_config),
                classifier: Arc::new(classifier),
                hub,
                clock,
                evidence,
                metrics: edge_metrics,
                holds,
                bundle,
                config: grpc_config,
            },
            store,
            crl,
            ocsp,
            metrics,
            ca_window,
            registry,
            checkpoints,
            replication: settings.replication,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn store(&self) -> &SqlStore {
        &self.store
    }

    /// Serves both ports until `shutdown` resolves, then drains and closes the database.
    pub async fn run<F>(self, shutdown: F) -> Result<(), std::io::Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tailer_stop = stop_rx.clone();
        let leading = self.store.clone();
        let tailer = tokio::spawn(mintgate_api::run_tailer(
            self.server.hub.clone(),
            self.store.clone(),
            self.server.clock.clone(),
            move || leading.is_leader(),
            async move {
                let _ = tailer_stop.wait_for(|s| *s).await;
            },
        ));
        let (listener, leader) = crate::replication::spawn(
            &self.store,
            &self.server,
            &self.registry,
            self.replication.leader_check,
            &stop_rx,
        );
        let mut upkeep_stop = stop_rx.clone();
        let metrics = self.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tokio::select! {
                    _ = tick.tick() => metrics.upkeep(),
                    _ = upkeep_stop.wait_for(|s| *s) => return,
                }
            }
        });
        let mut refresh_stop = stop_rx.clone();
        let app = self.server.app.clone();
        let leading = self.store.clone();
        let refresh = tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLICY_REFRESH);
            let mut ticks: u32 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = refresh_stop.wait_for(|s| *s) => return,
                }
                if let Err(e) = app.refresh_policy().await {
                    tracing::error!(error = %e, "the active policy could not be refreshed");
                }
                // The jobs below run on one replica (every replica may look; one needs to).
                if !leading.is_leader() {
                    continue;
                }
                // Holds nobody decided in time (on the injected clock) become EXPIRED.
                if let Err(e) = app.expire_holds().await {
                    tracing::error!(error = %e, "expired holds could not be recorded");
                }
                if ticks.is_multiple_of(RISK_PRUNE_TICKS) {
                    match app.prune_risk_counts().await {
                        Ok(n) => tracing::debug!(pruned = n, "pruned risk counts"),
                        Err(e) => tracing::warn!(error = %e, "pruning risk counts failed"),
                    }
                }
                ticks = ticks.wrapping_add(1);
            }
        });
        let registry = tokio::spawn(
            self.registry
                .clone()
                .run(self.server.hub.config().poll_interval, stop_rx.clone()),
        );
        let checkpoint_job = self.checkpoints.clone().map(|checkpoints| {
            let stop = stop_rx.clone();
            tokio::spawn(async move { checkpoints.run(stop).await })
        });
        let mut http_stop = stop_rx.clone();
        let state = HttpState {
            store: self.store.clone(),
            crl: self.crl,
            ocsp: self.ocsp,
            metrics: self.metrics,
            ca_window: self.ca_window,
            clock: self.server.clock.clone(),
            ca: self.registry.clone(),
        };
        let http =
            axum::serve(self.http, crate::http::router(state)).with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            });
        let http = tokio::spawn(async move { http.await });
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut grpc_stop = stop_rx;
        let (hub, holds) = (self.server.hub.clone(), self.server.holds.clone());
        let grpc = mintgate_api::serve(self.grpc, self.server, async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
            hub.close();
            holds.close();
        })
        .await;
        if let Err(e) = grpc {
            tracing::error!(error = %e, "gRPC server failed");
        }
        let _ = http.await;
        let _ = tailer.await;
        let _ = listener.await;
        let _ = leader.await;
        let _ = upkeep.await;
        let _ = refresh.await;
        let _ = registry.await;
        if let Some(job) = checkpoint_job {
            let _ = job.await;
        }
        // Nothing appends any more: the last checkpoint signs the final head.
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.write("shutdown").await;
        }
        self.store.close().await;
        Ok(())
    }
}

fn certs(pem: &str, field: &'static str) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| BuildError::Pem {
            field,
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(BuildError::Pem {
            field,
            what: "certificate",
        });
    }
    Ok(certs)
}
