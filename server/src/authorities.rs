//! The server's CAs kept in step with the registry (DESIGN §14). The CA in `[ca]` is recorded
//! as ACTIVE on the first start; from then on the registry decides: every CA in the trust
//! bundle is loaded (its key opened by the configured backend), the ACTIVE one signs, the
//! listener trusts them all, and the bundle is published to `/bundle.pem`, ListAuthorities and
//! WatchTrustBundle. A change approved here, a notification from another replica, or the
//! periodic look ([`CaRegistry::run`]) refreshes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mintgate_api::bundle::Reload;
use mintgate_api::tls::ClientTrust;
use mintgate_api::{BundleFeed, RevocationHub};
use mintgate_ca::{Authorities, CaError, CaKey, FileKey, KeyLoader, Pkcs11Key};
use mintgate_domain::authority::{AuthorityStore, CaState};
use mintgate_domain::ports::Clock;
use mintgate_domain::store::{CertificateStore as _, StoreError};
use mintgate_store::SqlStore;
use tokio::sync::{Notify, watch};

use crate::config::{CaKeySource, CaSettings};

/// Loads the CA the server starts with, and how to open the key of any CA the registry names.
pub(crate) fn load(
    ca: &CaSettings,
    crl_base: Option<&str>,
    dev: bool,
) -> Result<Authorities, CaError> {
    let first_key = match &ca.key {
        CaKeySource::File(pem) => CaKey::File(FileKey::from_pem(pem)?),
        CaKeySource::Pkcs11(config) => {
            CaKey::Pkcs11(Pkcs11Key::open(config).map_err(CaError::Pkcs11)?)
        }
    };
    let backend = first_key.backend();
    let first = Authorities::load(&ca.cert_pem, first_key, crl_base)?;
    tracing::info!(subject = %first.subject(), backend, "issuing CA loaded");
    Ok(Authorities::new(
        first,
        key_loader(&ca.key),
        crl_base.map(str::to_owned),
        dev,
    ))
}

/// Opens a CA key named as the registry names it: a key file's path (mode 0600 or stricter)
/// for the `file` backend, a key label in the configured token for `pkcs11`.
fn key_loader(source: &CaKeySource) -> Box<KeyLoader> {
    match source {
        CaKeySource::File(_) => Box::new(|path: &str| {
            mintgate_ca::check_private_to_owner(std::path::Path::new(path))?;
            let pem = std::fs::read_to_string(path).map_err(|source| CaError::Io {
                path: path.into(),
                source,
            })?;
            FileKey::from_pem(&pem).map(CaKey::File)
        }),
        CaKeySource::Pkcs11(config) => {
            let config = config.clone();
            Box::new(move |label: &str| {
                let mut config = config.clone();
                label.clone_into(&mut config.key_label);
                Pkcs11Key::open(&config)
                    .map(CaKey::Pkcs11)
                    .map_err(CaError::Pkcs11)
            })
        }
    }
}

/// Keeps the signer, the listener's trust and the published bundle on the registry's CAs.
pub(crate) struct CaRegistry {
    pub(crate) store: SqlStore,
    pub(crate) signer: Arc<Authorities>,
    pub(crate) trust: Arc<ClientTrust>,
    pub(crate) bundle: BundleFeed,
    pub(crate) changed: Notify,
    /// Whether this server signs with the registry's ACTIVE CA (it could open its key).
    pub(crate) in_step: AtomicBool,
    /// One refresh at a time: an older read never lands after a newer one.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
}

impl CaRegistry {
    /// Records the configured CA on the first start, then loads the registry's CAs.
    ///
    /// Later, a CA in `[ca]` that the registry does not know is ignored (rotations go through
    /// proposals), except when the registry's ACTIVE CA has run out (within `min_lifetime` of
    /// its notAfter): then the configured one is adopted as ACTIVE, audited as `ca.adopted`, so
    /// that replacing `[ca]` still revives a server whose CA expired unrotated.
    pub(crate) async fn start(
        &self,
        key_ref: &str,
        min_lifetime: Duration,
        clock: &dyn Clock,
    ) -> Result<(), StoreError> {
        let now = clock.now();
        let first = self
            .signer
            .first_record(key_ref, now)
            .map_err(|e| StoreError::Corrupt(Box::new(e)))?;
        let key_id = first.key_id.clone();
        if self.store.register_first_authority(first.clone()).await? {
            tracing::info!(%key_id, "first start: the configured CA is recorded as ACTIVE");
            return self.refresh().await;
        }
        let records = self.store.authorities().await?;
        if !records.iter().any(|ca| ca.key_id == key_id) {
            let active = records.iter().find(|ca| ca.state == CaState::Active);
            let run_out = active.is_none_or(|ca| ca.not_after - min_lifetime <= now);
            if run_out {
                let event = adopted(&first, active.map(|ca| ca.key_id.as_str()), now);
                self.store.adopt_authority(first, event).await?;
                tracing::warn!(
                    %key_id,
                    "the registry's ACTIVE CA has run out: the CA in [ca] is adopted as ACTIVE"
                );
            } else {
                tracing::warn!(
                    %key_id,
                    "the CA in [ca] is not in the CA registry: the registry's ACTIVE CA signs \
                     (rotate with Admin/ProposeCa)"
                );
            }
        }
        self.refresh().await
    }

    /// Whether this server signs with the registry's ACTIVE CA; `/readyz` fails otherwise.
    pub(crate) fn in_step(&self) -> bool {
        self.in_step.load(Ordering::Relaxed)
    }

    /// What an approval of a CA change awaits before it is answered: the CAs reloaded, and the
    /// revocation log applied up to its head (a revoked issuer is cut off).
    pub(crate) fn reload_hook(self: &Arc<Self>, hub: Arc<RevocationHub>) -> Reload {
        let registry = self.clone();
        Arc::new(move || {
            let (registry, hub) = (registry.clone(), hub.clone());
            Box::pin(async move {
                if let Err(e) = registry.refresh().await {
                    tracing::warn!(error = %e, "the CA registry could not be read");
                }
                if let Ok(bounds) = registry.store.revocation_bounds().await {
                    hub.nudge();
                    hub.applied_through(bounds.head).await;
                }
            })
        })
    }

    /// Asks for a refresh (a CA changed here or on another replica).
    pub(crate) fn nudge(&self) {
        self.changed.notify_one();
    }

    /// Reads the registry and makes it current.
    pub(crate) async fn refresh(&self) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        let records = self.store.authorities().await?;
        for (key_id, e) in self.signer.reload(&records) {
            tracing::error!(%key_id, error = %e, "a CA in the trust bundle could not be loaded here");
        }
        let set = self.signer.current();
        let active = records.iter().find(|ca| ca.state == CaState::Active);
        let signing = set.active().map(|ca| ca.key_id_hex());
        let in_step = active.is_none_or(|ca| Some(ca.key_id.as_str()) == signing);
        if !in_step && self.in_step.load(Ordering::Relaxed) {
            tracing::error!(
                active = ?active.map(|ca| &ca.key_id),
                "the registry's ACTIVE CA cannot be used here: this server signs nothing and is not ready"
            );
        }
        self.in_step.store(in_step, Ordering::Relaxed);
        let chains: Vec<_> = set
            .cas()
            .iter()
            .map(|c| c.ca.chain_der().to_vec())
            .collect();
        if let Err(e) = self.trust.update(&chains) {
            tracing::error!(error = %e, "the listener's trust could not be updated");
        }
        self.bundle
            .publish(set.bundle_pem(), set.version(), &records);
        Ok(())
    }

    /// Refreshes when nudged, and every `every` in case a notification was lost, until `stop`.
    pub(crate) async fn run(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "the CA registry could not be read");
            }
        }
    }
}

/// The audit event of a CA adopted from `[ca]`.
fn adopted(
    ca: &mintgate_domain::authority::CaRecord,
    replaced: Option<&str>,
    now: time::OffsetDateTime,
) -> mintgate_domain::audit::AuditEvent {
    mintgate_domain::audit::AuditEvent {
        seq: 0,
        at: now.unix_timestamp(),
        actor: mintgate_domain::governance::BOOTSTRAP_ACTOR.to_owned(),
        action: "ca.adopted".to_owned(),
        subject: format!("ca:{}", ca.key_id),
        spiffe_id: None,
        dns_names: Vec::new(),
        key_type: None,
        not_before: None,
        not_after: Some(ca.not_after.unix_timestamp()),
        policy_version: None,
        policy_rule: None,
        request_id: None,
        detail: Some(format!(
            "{} from [ca]: the ACTIVE CA {} had run out",
            ca.subject,
            replaced.unwrap_or("(none)")
        )),
    }
}
