//! The CA lifecycle's use cases (DESIGN §14): Admin/ProposeCa (prepare, activate, retire),
//! Revocation/RevokeIssuer (the compromise path) and Admin/ListAuthorities. Every step is a
//! two-person proposal; what approving one checks is [`Mintgate::check_ca_change`], and the
//! store applies it in the approving transaction.

use crate::authority::{CaAction, CaRecord, CaState};
use crate::error::Error;
use crate::governance::{Change, GovernanceError, ProposalKind, ProposalRecord};
use crate::model::{Caller, RevocationReason};
use crate::policy::{Operation, Target};
use crate::store::CertificateStore;
use crate::{InputError, RequestId};

use super::{Mintgate, payload_hash};

/// Admin/ProposeCa as the api hands it over.
#[derive(Debug, Clone)]
pub struct CaProposalInput {
    pub request_id: String,
    pub action: CaAction,
    /// PREPARE: the CA, then up to its root, PEM.
    pub chain_pem: String,
    /// PREPARE: where its key is (file path or PKCS#11 key label).
    pub key: String,
    /// ACTIVATE and RETIRE: which CA.
    pub key_id: String,
}

impl<S: CertificateStore> Mintgate<S> {
    /// Admin/ProposeCa.
    pub async fn propose_ca(
        &self,
        caller: &Caller,
        input: CaProposalInput,
    ) -> Result<ProposalRecord, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        self.authorize(
            caller,
            Operation::ProposeCa,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        let required = |value: &str, field: &'static str| {
            if value.trim().is_empty() {
                Err(InputError::Missing { field })
            } else {
                Ok(())
            }
        };
        match input.action {
            CaAction::Prepare => {
                required(&input.chain_pem, "chain_pem")?;
                required(&input.key, "key")?;
            }
            CaAction::Activate | CaAction::Retire => required(&input.key_id, "key_id")?,
        }
        let change = match input.action {
            CaAction::Prepare => {
                let inspected = self
                    .signer
                    .inspect(&input.chain_pem, &input.key)
                    .map_err(GovernanceError::CaInvalid)?;
                Change::Ca {
                    action: CaAction::Prepare,
                    key_id: inspected.key_id,
                    prepared: Some(inspected.prepared),
                }
            }
            action => Change::Ca {
                action,
                key_id: input.key_id.trim().to_ascii_lowercase(),
                prepared: None,
            },
        };
        let hash = payload_hash(&[
            ProposalKind::Ca.as_str().as_bytes(),
            input.action.as_str().as_bytes(),
            input.chain_pem.as_bytes(),
            input.key.as_bytes(),
            input.key_id.as_bytes(),
        ]);
        if let Some(existing) = self.duplicate(caller, &request_id, &hash).await? {
            return Ok(existing);
        }
        self.check_ca_change(&change, false).await?;
        let now = self.clock.now();
        self.propose(caller, request_id, hash, change, None, now)
            .await
    }

    /// Revocation/RevokeIssuer: proposes revoking everything the CA `key_id` signed.
    pub async fn propose_revoke_issuer(
        &self,
        caller: &Caller,
        request_id: &str,
        key_id: &str,
        reason: RevocationReason,
    ) -> Result<ProposalRecord, Error> {
        let request_id = RequestId::parse(request_id)?;
        self.authorize(
            caller,
            Operation::RevokeIssuer,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        let key_id = key_id.trim().to_ascii_lowercase();
        let hash = payload_hash(&[
            ProposalKind::RevokeIssuer.as_str().as_bytes(),
            key_id.as_bytes(),
            reason.as_str().as_bytes(),
        ]);
        if let Some(existing) = self.duplicate(caller, &request_id, &hash).await? {
            return Ok(existing);
        }
        let change = Change::RevokeIssuer { key_id, reason };
        self.check_ca_change(&change, false).await?;
        let now = self.clock.now();
        self.propose(caller, request_id, hash, change, None, now)
            .await
    }

    /// Admin/ListAuthorities: every CA, newest first.
    pub async fn list_authorities(&self, caller: &Caller) -> Result<Vec<CaRecord>, Error> {
        self.authorize(
            caller,
            Operation::ListAuthorities,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        Ok(self.store.authorities().await?)
    }

    /// Whether `change` can take effect now: the CA exists (or, to prepare, does not) and is in
    /// the state the step needs. `approving` adds what only holds at approval time: a prepared
    /// CA has been published long enough, a retiring one vouches for nothing unexpired.
    pub(super) async fn check_ca_change(
        &self,
        change: &Change,
        approving: bool,
    ) -> Result<(), Error> {
        let (key_id, action, needs): (&str, &'static str, &[CaState]) = match change {
            Change::Ca {
                action: CaAction::Prepare,
                key_id,
                ..
            } => (key_id, "prepare", &[]),
            Change::Ca {
                action: CaAction::Activate,
                key_id,
                ..
            } => (key_id, "activate", &[CaState::Prepared]),
            Change::Ca {
                action: CaAction::Retire,
                key_id,
                ..
            } => (key_id, "retire", &[CaState::Retiring]),
            Change::RevokeIssuer { key_id, .. } => (
                key_id,
                "revoke issuer",
                &[CaState::Prepared, CaState::Active, CaState::Retiring],
            ),
            _ => return Ok(()),
        };
        let all = self.store.authorities().await?;
        let found = all.iter().find(|ca| ca.key_id == key_id);
        let ca = match (found, needs.is_empty()) {
            (Some(_), true) => return Err(GovernanceError::CaExists(key_id.to_owned()).into()),
            (None, true) => return Ok(()),
            (None, false) => return Err(GovernanceError::CaNotFound(key_id.to_owned()).into()),
            (Some(ca), false) => ca,
        };
        if !needs.contains(&ca.state) {
            return Err(GovernanceError::CaState {
                key_id: key_id.to_owned(),
                state: ca.state.as_str(),
                action,
                needs: needs[0].as_str(),
            }
            .into());
        }
        let now = self.clock.now();
        match change {
            Change::RevokeIssuer { .. }
                if ca.state == CaState::Active
                    && !all.iter().any(|c| c.state == CaState::Prepared) =>
            {
                Err(GovernanceError::CaNoSuccessor(key_id.to_owned()).into())
            }
            Change::Ca {
                action: CaAction::Activate,
                ..
            } if approving && now < ca.prepared_at + self.ca_publish => {
                Err(GovernanceError::CaNotPublished {
                    key_id: key_id.to_owned(),
                    published: (now - ca.prepared_at).whole_seconds(),
                    required: self.ca_publish.as_secs(),
                }
                .into())
            }
            Change::Ca {
                action: CaAction::Retire,
                ..
            } if approving && self.store.issued_unexpired(key_id, now).await? => {
                Err(GovernanceError::CaStillIssued(key_id.to_owned()).into())
            }
            _ => Ok(()),
        }
    }
}
