//! The agent's other identities on the Workload API: each registration entry besides the
//! agent's own gets a key of its own, generated here, enrolled through the node identity and
//! renewed on its own window. One that is revoked (its certificate, or the CA that signed it)
//! is withdrawn, which ends its callers' streams, and is not enrolled again.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::sync::watch;

use super::Svid;
use crate::{
    Attestation, Backoff, Client, Clock, Credential, CredentialManager, Endpoint, RenewalPolicy,
    RevocationSet,
};

/// What enrolling and following an identity needs.
#[derive(Clone)]
pub(crate) struct Enroller {
    pub(crate) bootstrap: Client,
    pub(crate) endpoint: Endpoint,
    pub(crate) policy: RenewalPolicy,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) revocations: Arc<RevocationSet>,
}

impl Enroller {
    /// Follows `spiffe_id` in the background: `None` until enrolled, then each certificate,
    /// then `None` for good once it is revoked. The task ends when the receiver is dropped.
    pub(crate) fn follow(&self, spiffe_id: String) -> watch::Receiver<Option<Svid>> {
        let (tx, rx) = watch::channel(None);
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            let manager = loop {
                let enrolled = CredentialManager::enroll(
                    &this.bootstrap,
                    this.endpoint.clone(),
                    &spiffe_id,
                    Attestation::default(),
                    this.policy.clone(),
                    this.clock.clone(),
                );
                tokio::select! {
                    () = tx.closed() => return,
                    enrolled = enrolled => match enrolled {
                        Ok(manager) => break manager,
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(%spiffe_id, error = %e, "enrolling a Workload API identity failed; retrying");
                            this.clock.sleep(backoff.next_delay_after(e.retry_after)).await;
                        }
                        Err(e) => {
                            tracing::error!(%spiffe_id, error = %e, "a Workload API identity was refused; it is not served");
                            return;
                        }
                    },
                }
            };
            let mut updates = manager.subscribe();
            loop {
                let current = updates.borrow_and_update().clone();
                if revoked(&this.revocations, &current) {
                    tracing::warn!(%spiffe_id, serial = %current.serial, "a Workload API identity was revoked: withdrawn");
                    tx.send_replace(None);
                    return;
                }
                tx.send_replace(Some(svid(&current)));
                let next = this.revocations.cursor() + 1;
                tokio::select! {
                    () = tx.closed() => return,
                    changed = updates.changed() => if changed.is_err() {
                        // Expired without renewal.
                        tx.send_replace(None);
                        return;
                    },
                    () = this.revocations.applied_through(next) => {}
                }
            }
        });
        rx
    }
}

fn revoked(set: &RevocationSet, credential: &Credential) -> bool {
    CertificateDer::pem_slice_iter(credential.chain_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .is_none_or(|leaf| set.is_revoked_certificate(&leaf))
}

/// A credential as the Workload API hands it out.
pub(crate) fn svid(c: &Credential) -> Svid {
    Svid {
        spiffe_id: c.spiffe_id.clone(),
        chain_der: super::pem_certs(&c.chain_pem),
        key_der: rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
            .map(|k| k.secret_der().to_vec())
            .unwrap_or_default(),
    }
}
