//! The use cases: enroll, renew, look up a request, create a join token. Runtime-agnostic:
//! everything outside comes through the ports.

mod attest;
mod authorities;
mod authorize;
mod governance;
mod holds;
mod issuance;
mod lease;
mod proposals;
mod retry;
mod revocation;
mod tokens;
mod unissued;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::lifetime::CaWindow;
use crate::policy::Policy;
use crate::ports::{Clock, Observer, Random, Signer};
use crate::risk::RiskConfig;
use crate::store::CertificateStore;
use crate::{Serial, TrustDomain};

pub use attest::{Attested, Attestor, Evidence, JoinToken, Jwt, NodeCert, default_attestors};
pub use authorities::CaProposalInput;
pub use authorize::{ShadowDisagreement, Verdict};
pub use governance::{GovernanceStart, GovernanceView};
pub use holds::{HoldChange, HoldEvent, HoldView};
pub use issuance::{Held, IssueInput, IssueOutcome, Issued};
pub use proposals::{MAX_LIST, PolicyProposalInput, ProposalView, RoleBindingInput};
pub use revocation::{
    CertificateStatus, EXPIRY_SKEW, IdentityRevoked, MAX_STATUS_SERIALS, RevokeIdentityInput,
    RevokeInput, StatusReport,
};
pub use tokens::{CreatedJoinToken, JoinTokenInput, JoinTokenSecret};

/// How long an APPROVED request may stay unsigned before a retry takes it over (the process
/// that approved it is presumed stuck). A retry takes it over at once when the server instance
/// that approved it is gone (see `lease`).
pub const APPROVAL_LEASE: Duration = Duration::from_secs(30);

/// The application service behind the Provisioning and Admin RPCs.
pub struct Mintgate<S> {
    store: S,
    attestors: Vec<Box<dyn Attestor<S>>>,
    signer: Arc<dyn Signer>,
    /// Nothing is issued once the active CA's notAfter is less than this away.
    min_lifetime: Duration,
    /// How long a prepared CA must have been in the trust bundle before it may be activated.
    ca_publish: Duration,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    /// The active policy, swapped when an activation commits.
    policy: ArcSwap<Policy>,
    /// A candidate policy deciding beside the active one (Admin/ShadowPolicy).
    shadow: ArcSwapOption<authorize::Shadow>,
    /// The `environment` every policy decision sees.
    environment: String,
    /// The version of the policy directory the server was started with, once known.
    configured_version: RwLock<Option<String>>,
    observer: Arc<dyn Observer>,
    /// The requests an attempt here is recording or signing (see `lease`).
    in_flight: lease::InFlight,
    trust_domain: TrustDomain,
    token_secret: JoinTokenSecret,
    risk: RiskConfig,
    holds: HoldSettings,
}

/// How holds behave (DESIGN §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSettings {
    /// Undecided this long after it was held, a hold becomes EXPIRED.
    pub expiry: Duration,
    /// How long a held requester is told to wait before asking again.
    pub retry_after: Duration,
}

impl Default for HoldSettings {
    fn default() -> Self {
        Self {
            expiry: crate::hold::DEFAULT_HOLD_EXPIRY,
            retry_after: crate::hold::DEFAULT_RETRY_AFTER,
        }
    }
}

/// What the service is built from.
pub struct Parts<S> {
    pub store: S,
    pub signer: Arc<dyn Signer>,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Random>,
    /// The policy to decide with until [`Mintgate::start_governance`] loads the active one.
    pub policy: Arc<Policy>,
    /// The `environment` in every decision's context.
    pub environment: String,
    pub observer: Arc<dyn Observer>,
    pub trust_domain: TrustDomain,
    pub token_secret: JoinTokenSecret,
    /// Nothing is issued once the CA's notAfter is less than this away
    /// ([`crate::lifetime::DEFAULT_MIN_LIFETIME`] unless configured).
    pub min_lifetime: Duration,
    /// The risk assessment's thresholds and weights.
    pub risk: RiskConfig,
    pub holds: HoldSettings,
    /// How long a prepared CA must have been in the trust bundle before it may be activated
    /// ([`crate::authority::DEFAULT_PUBLISH`] unless configured).
    pub ca_publish: Duration,
}

impl<S: CertificateStore> Mintgate<S> {
    pub fn new(parts: Parts<S>) -> Self {
        let Parts {
            store,
            signer,
            clock,
            random,
            policy,
            environment,
            observer,
            trust_domain,
            token_secret,
            min_lifetime,
            risk,
            holds,
            ca_publish,
        } = parts;
        Self {
            store,
            attestors: default_attestors(),
            signer,
            min_lifetime,
            ca_publish,
            clock,
            random,
            policy: ArcSwap::new(policy),
            shadow: ArcSwapOption::empty(),
            environment,
            configured_version: RwLock::new(None),
            observer,
            in_flight: lease::InFlight::default(),
            trust_domain,
            token_secret,
            risk,
            holds,
        }
    }

    /// Verifies Kubernetes service-account tokens on Enroll with `jwt` (`[attestation.jwt]`).
    pub fn with_jwt(mut self, jwt: Jwt) -> Self {
        let name = <Jwt as Attestor<S>>::name(&jwt);
        self.attestors.retain(|a| a.name() != name);
        self.attestors.push(Box::new(jwt));
        self
    }

    /// When the active CA may sign (its notAfter and the minimum lifetime).
    fn ca_window(&self) -> CaWindow {
        CaWindow {
            not_after: self.signer.not_after(),
            min_lifetime: self.min_lifetime,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    fn new_serial(&self) -> Serial {
        let mut bytes = [0u8; 17];
        self.random.fill(&mut bytes);
        Serial::from_random(bytes)
    }

    fn audit(&self, now: OffsetDateTime, actor: &str, action: &str, subject: String) -> AuditEvent {
        AuditEvent {
            seq: 0,
            at: now.unix_timestamp(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject,
            spiffe_id: None,
            dns_names: Vec::new(),
            key_type: None,
            not_before: None,
            not_after: None,
            policy_version: Some(self.policy.load().version().to_owned()),
            policy_rule: None,
            request_id: None,
            detail: None,
        }
    }
}

/// Hex SHA-256 over length-prefixed fields: the canonical payload of an idempotent request.
fn payload_hash(fields: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    hex::encode(h.finalize())
}
