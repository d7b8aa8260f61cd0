//! The active policy (DESIGN §11): bootstrapped from the policy directory by the first server on
//! an empty database, then changed only by approved proposals; swapped in memory once its
//! activation commits, here or (by [`Mintgate::refresh_policy`]) on another replica. The
//! configured directory is only compared with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::SpiffeId;
use crate::error::Error;
use crate::governance::{
    Activation, BOOTSTRAP_ACTOR, Bootstrapped, GovernanceError, ROLES, RoleBinding, StoredPolicy,
};
use crate::model::Caller;
use crate::policy::{Operation, Policy, PolicySource, Target};
use crate::store::CertificateStore;

use super::Mintgate;

/// What [`Mintgate::start_governance`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernanceStart {
    /// The version of the policy directory the server was configured with.
    pub configured_version: String,
    /// The active version (the configured one if this start bootstrapped it).
    pub active_version: String,
    pub bootstrapped: bool,
}

impl GovernanceStart {
    /// The configured policy directory differs from the active version.
    pub fn drift(&self) -> bool {
        self.configured_version != self.active_version
    }
}

/// The active policy and the role bindings, for GetGovernance.
#[derive(Debug, Clone)]
pub struct GovernanceView {
    pub activation: Option<Activation>,
    pub shadow_version: Option<String>,
    pub bindings: Vec<RoleBinding>,
}

impl<S: CertificateStore> Mintgate<S> {
    /// At start: if no policy was ever active, `configured` becomes the first version (and
    /// `operators` the first role bindings), audited; otherwise the stored active version is
    /// loaded and the configured directory is only compared with it. The server never replaces
    /// the active policy by itself.
    pub async fn start_governance(
        &self,
        configured: &PolicySource,
        origin: &str,
        operators: &BTreeMap<String, Vec<String>>,
    ) -> Result<GovernanceStart, Error> {
        let policy = Policy::load(configured, Some(&self.trust_domain))
            .map_err(GovernanceError::PolicyInvalid)?;
        let configured_version = policy.version().to_owned();
        let now = self.clock.now();
        let mut events = Vec::new();
        let mut activated = self.audit(
            now,
            BOOTSTRAP_ACTOR,
            "policy.activated",
            format!("policy:{configured_version}"),
        );
        activated.policy_version = Some(configured_version.clone());
        activated.detail = Some(format!("bootstrap from {origin}"));
        events.push(activated);
        let mut bindings = Vec::new();
        for (operator, roles) in operators {
            let operator = SpiffeId::parse_in(operator, &self.trust_domain)?;
            for role in roles {
                if !ROLES.contains(&role.as_str()) {
                    return Err(GovernanceError::RoleUnknown(role.clone()).into());
                }
                let mut event = self.audit(
                    now,
                    BOOTSTRAP_ACTOR,
                    "role.granted",
                    format!("operator:{operator}"),
                );
                event.detail = Some(format!("role {role} (bootstrap from the configuration)"));
                events.push(event);
                bindings.push(RoleBinding {
                    operator: operator.to_string(),
                    role: role.clone(),
                    valid_until: None,
                    granted_by: BOOTSTRAP_ACTOR.to_owned(),
                    granted_at: now,
                    proposal_id: None,
                });
            }
        }
        let stored = StoredPolicy {
            version: configured_version.clone(),
            source: configured.clone(),
            created_at: now,
            created_by: BOOTSTRAP_ACTOR.to_owned(),
        };
        let bootstrapped = match self.store.bootstrap(stored, bindings, events).await? {
            Bootstrapped::Done => {
                self.policy
                    .store(Arc::new(policy.with_environment(&self.environment)));
                true
            }
            Bootstrapped::Already(_) => false,
        };
        let active_version = self.refresh_policy().await?;
        let start = GovernanceStart {
            configured_version,
            active_version,
            bootstrapped,
        };
        *self
            .configured_version
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(start.configured_version.clone());
        self.observer
            .policy_active(&start.active_version, start.drift());
        Ok(start)
    }

    /// Loads the active version from the store if it is not the one in force (another replica,
    /// or this one, activated it). Returns the active version.
    pub async fn refresh_policy(&self) -> Result<String, Error> {
        // Only the newest activation is read on each poll; the text only when it changed.
        let Some(activation) = self.store.active_activation().await? else {
            return Ok(self.policy.load().version().to_owned());
        };
        let version = activation.version;
        if version != self.policy.load().version() {
            let stored = self.stored_policy(&version).await?;
            let policy = Policy::load(&stored.source, Some(&self.trust_domain)).map_err(|e| {
                Error::Internal(format!("the active policy {version} no longer loads: {e}").into())
            })?;
            self.policy
                .store(Arc::new(policy.with_environment(&self.environment)));
            let drift = self
                .configured_version
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| *c != version);
            self.observer.policy_active(&version, drift);
        }
        Ok(version)
    }

    /// Admin/GetGovernance: the active policy, the shadow and the role bindings.
    pub async fn governance(&self, caller: &Caller) -> Result<GovernanceView, Error> {
        self.authorize(
            caller,
            Operation::GetGovernance,
            Target::TrustDomain(&self.trust_domain),
        )
        .await?;
        let activation = self.store.active_activation().await?;
        Ok(GovernanceView {
            activation,
            shadow_version: self.shadow_version(),
            bindings: self.store.role_bindings().await?,
        })
    }

    pub(super) async fn stored_policy(&self, version: &str) -> Result<StoredPolicy, Error> {
        self.store.policy_version(version).await?.ok_or_else(|| {
            Error::Internal(format!("policy version {version} is not stored").into())
        })
    }

    pub(super) async fn active_version(&self) -> Result<String, Error> {
        Ok(match self.store.active_activation().await? {
            Some(activation) => activation.version,
            None => self.policy.load().version().to_owned(),
        })
    }

    pub(super) async fn active_source(&self) -> Result<PolicySource, Error> {
        Ok(match self.store.active_policy().await? {
            Some((_, stored)) => stored.source,
            None => PolicySource {
                schema: String::new(),
                files: Vec::new(),
            },
        })
    }
}
