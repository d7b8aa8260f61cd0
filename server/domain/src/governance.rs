//! Change control (DESIGN §11, §13): the policy versions a server has had, the role bindings
//! that give operators their rights, and the two-person proposals that change either (or lift
//! an identity's block). The records here are what the store keeps; the use cases are in
//! `service::governance`.

use std::future::Future;

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::authority::{CaAction, PreparedCa};
use crate::model::RevocationReason;
use crate::policy::{LoadError, PolicySource};
use crate::store::StoreError;

/// How long a proposal waits for its second operator.
pub const PROPOSAL_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Longest proposal label.
pub const MAX_LABEL_LEN: usize = 200;
pub use crate::policy::ROLES;

/// The break-glass role.
pub const ADMIN_ROLE: &str = "admin";
/// Who activated the first policy version: the server, from its policy directory.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap";

/// What a proposal changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Activate `version`, proposed while `base_version` was active.
    Policy {
        version: String,
        base_version: String,
        label: Option<String>,
    },
    /// Grant `operator` the `role` (until `valid_until`), or take it away.
    RoleBinding {
        operator: String,
        role: String,
        valid_until: Option<OffsetDateTime>,
        remove: bool,
    },
    /// Lift the block on `spiffe_id`.
    Unblock { spiffe_id: String },
    /// A step of a CA's staged rotation; `prepared` is the new CA for [`CaAction::Prepare`].
    Ca {
        action: CaAction,
        key_id: String,
        prepared: Option<PreparedCa>,
    },
    /// The compromise path: revoke everything the CA `key_id` signed.
    RevokeIssuer {
        key_id: String,
        reason: RevocationReason,
    },
}

impl Change {
    pub fn kind(&self) -> ProposalKind {
        match self {
            Self::Policy { .. } => ProposalKind::Policy,
            Self::RoleBinding { .. } => ProposalKind::RoleBinding,
            Self::Unblock { .. } => ProposalKind::Unblock,
            Self::Ca { .. } => ProposalKind::Ca,
            Self::RevokeIssuer { .. } => ProposalKind::RevokeIssuer,
        }
    }

    /// One line for the audit trail.
    pub fn describe(&self) -> String {
        match self {
            Self::Policy {
                version,
                base_version,
                label,
            } => format!(
                "policy {base_version} -> {version}{}",
                label
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            ),
            Self::RoleBinding {
                operator,
                role,
                remove: true,
                ..
            } => format!("remove role {role} from {operator}"),
            Self::RoleBinding {
                operator,
                role,
                valid_until,
                ..
            } => match valid_until {
                Some(t) => format!(
                    "grant role {role} to {operator} until {}",
                    t.unix_timestamp()
                ),
                None => format!("grant role {role} to {operator}"),
            },
            Self::Unblock { spiffe_id } => format!("unblock {spiffe_id}"),
            Self::Ca {
                action: CaAction::Prepare,
                key_id,
                prepared,
            } => format!(
                "prepare CA {key_id}{}",
                prepared
                    .as_ref()
                    .map(|p| format!(" ({})", p.subject))
                    .unwrap_or_default()
            ),
            Self::Ca { action, key_id, .. } => {
                format!("{} CA {key_id}", action.as_str().to_ascii_lowercase())
            }
            Self::RevokeIssuer { key_id, reason } => {
                format!("revoke issuer {key_id} reason {reason}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProposalKind {
    Policy,
    RoleBinding,
    Unblock,
    Ca,
    RevokeIssuer,
}

impl ProposalKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "POLICY",
            Self::RoleBinding => "ROLE_BINDING",
            Self::Unblock => "UNBLOCK",
            Self::Ca => "CA",
            Self::RevokeIssuer => "REVOKE_ISSUER",
        }
    }

    /// As Cedar sees it (`resource.kind` of a `Proposal`).
    pub fn cedar_name(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::RoleBinding => "role_binding",
            Self::Unblock => "unblock",
            Self::Ca => "ca",
            Self::RevokeIssuer => "revoke_issuer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Policy,
            Self::RoleBinding,
            Self::Unblock,
            Self::Ca,
            Self::RevokeIssuer,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A proposal's stored state. An OPEN proposal past its expiry reads as
/// [`ProposalStatus::Expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProposalState {
    Open,
    Applied,
    Superseded,
}

impl ProposalState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Applied => "APPLIED",
            Self::Superseded => "SUPERSEDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Applied, Self::Superseded]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What a proposal is at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProposalStatus {
    Open,
    Applied,
    Expired,
    Superseded,
}

/// A new proposal.
#[derive(Debug, Clone)]
pub struct NewProposal {
    pub id: String,
    pub author: String,
    pub request_id: String,
    pub payload_hash: String,
    pub change: Change,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A proposal as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRecord {
    pub id: String,
    pub author: String,
    pub request_id: String,
    pub payload_hash: String,
    pub change: Change,
    pub state: ProposalState,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub approved_by: Option<String>,
    pub approved_at: Option<OffsetDateTime>,
    pub superseded_by: Option<String>,
}

impl ProposalRecord {
    pub fn status(&self, now: OffsetDateTime) -> ProposalStatus {
        match self.state {
            ProposalState::Applied => ProposalStatus::Applied,
            ProposalState::Superseded => ProposalStatus::Superseded,
            ProposalState::Open if now >= self.expires_at => ProposalStatus::Expired,
            ProposalState::Open => ProposalStatus::Open,
        }
    }
}

/// A policy version as stored: immutable, keyed by its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub version: String,
    pub source: PolicySource,
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

/// One activation of a policy version; the newest is the active policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub seq: i64,
    pub version: String,
    /// None for the bootstrap.
    pub proposal_id: Option<String>,
    pub label: Option<String>,
    pub activated_at: OffsetDateTime,
    pub activated_by: String,
}

/// An operator's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleBinding {
    pub operator: String,
    pub role: String,
    pub valid_until: Option<OffsetDateTime>,
    pub granted_by: String,
    pub granted_at: OffsetDateTime,
    pub proposal_id: Option<String>,
}

impl RoleBinding {
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }
}

/// What [`GovernanceStore::bootstrap`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// There was no active policy: this one is now, with these role bindings.
    Done,
    /// A policy was already active (this server is not the first); nothing was written.
    Already(Activation),
}

/// The outcome of inserting a proposal keyed by (author, request_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalInserted {
    New(ProposalRecord),
    Duplicate(ProposalRecord),
}

/// Storage for change control. Every change is one transaction with its audit events.
pub trait GovernanceStore: Send + Sync + 'static {
    /// The active policy: the newest activation and its version's text.
    fn active_policy(
        &self,
    ) -> impl Future<Output = Result<Option<(Activation, StoredPolicy)>, StoreError>> + Send;

    /// The newest activation alone (what a poll for another replica's change needs).
    fn active_activation(
        &self,
    ) -> impl Future<Output = Result<Option<Activation>, StoreError>> + Send;

    fn policy_version(
        &self,
        version: &str,
    ) -> impl Future<Output = Result<Option<StoredPolicy>, StoreError>> + Send;

    /// Every activation, oldest first.
    fn activations(&self) -> impl Future<Output = Result<Vec<Activation>, StoreError>> + Send;

    /// If no policy was ever active: stores `policy`, activates it and records `bindings`, with
    /// `audit`, in one transaction. Otherwise writes nothing.
    fn bootstrap(
        &self,
        policy: StoredPolicy,
        bindings: Vec<RoleBinding>,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Bootstrapped, StoreError>> + Send;

    /// Stores a proposal (and, for a policy proposal, its version's text unless stored already).
    /// A (author, request_id) seen before returns `Duplicate` and writes nothing.
    fn insert_proposal(
        &self,
        proposal: NewProposal,
        policy: Option<StoredPolicy>,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<ProposalInserted, StoreError>> + Send;

    fn proposal(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ProposalRecord>, StoreError>> + Send;

    /// The proposal `author` made with `request_id`, if any.
    fn proposals_by(
        &self,
        author: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<ProposalRecord>, StoreError>> + Send;

    /// Newest first, at most `limit`, only in `state` if given.
    fn proposals(
        &self,
        state: Option<ProposalState>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<ProposalRecord>, StoreError>> + Send;

    /// In one transaction: the proposal moves OPEN → APPLIED (approved by `approver` at `now`)
    /// and its change takes effect: a policy version is activated (only if its base version is
    /// still the active one, and every other OPEN policy proposal becomes SUPERSEDED by it), a
    /// role binding is set or removed, or a block is lifted. `Conflict` if the proposal is not
    /// OPEN or the active version moved; nothing is written then.
    fn apply_proposal(
        &self,
        id: &str,
        approver: &str,
        now: OffsetDateTime,
        audit: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<ProposalRecord, StoreError>> + Send;

    /// Every role binding in force or expired (not yet removed), by operator and role.
    fn role_bindings(&self) -> impl Future<Output = Result<Vec<RoleBinding>, StoreError>> + Send;

    fn role_bindings_of(
        &self,
        operator: &str,
    ) -> impl Future<Output = Result<Vec<RoleBinding>, StoreError>> + Send;
}

/// Why a change-control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernanceError {
    #[error(transparent)]
    PolicyInvalid(#[from] LoadError),
    #[error("the proposed policy is the active version {0}")]
    PolicyUnchanged(String),
    #[error("a proposal cannot be approved by its author ({0}), whatever their roles")]
    SelfApproval(String),
    #[error("proposal {0} not found")]
    ProposalNotFound(String),
    #[error("proposal {0} expired without approval; propose again")]
    ProposalExpired(String),
    #[error(
        "proposal {id} was superseded by proposal {by}; propose again against the active policy"
    )]
    ProposalSuperseded { id: String, by: String },
    #[error(
        "proposal {id} was made against policy {base}, but {active} is active now; propose again"
    )]
    ProposalStale {
        id: String,
        base: String,
        active: String,
    },
    #[error("proposal {id} was already approved by {by}")]
    ProposalClosed { id: String, by: String },
    #[error("only an open policy proposal can be shadowed; {0} is not one")]
    NotShadowable(String),
    #[error("unknown role {0:?}; roles are {roles}", roles = ROLES.join(", "))]
    RoleUnknown(String),
    #[error("valid_until must be in the future")]
    ValidUntilPast,
    #[error("{operator} holds no role {role} to remove")]
    RoleNotHeld { operator: String, role: String },
    #[error("the label is longer than {MAX_LABEL_LEN} characters or has control characters")]
    LabelInvalid,
    #[error("{0} is not blocked")]
    NotBlocked(String),
    #[error("the role binding that would allow this ({role}) expired at {expired_at}")]
    RoleExpired { role: String, expired_at: i64 },
    #[error("the CA could not be prepared: {0}")]
    CaInvalid(String),
    #[error("no CA has key id {0}")]
    CaNotFound(String),
    #[error("CA {key_id} is {state}; {action} needs a {needs} CA")]
    CaState {
        key_id: String,
        state: &'static str,
        action: &'static str,
        needs: &'static str,
    },
    #[error(
        "CA {key_id} has been in the trust bundle for {published}s of the {required}s \
             required before it may be activated"
    )]
    CaNotPublished {
        key_id: String,
        published: i64,
        required: u64,
    },
    #[error("CA {0} still vouches for unexpired certificates; retire it after the last expires")]
    CaStillIssued(String),
    #[error("CA {0} is active and no CA is prepared to succeed it: prepare one first")]
    CaNoSuccessor(String),
    #[error("CA {0} is already known")]
    CaExists(String),
}

impl GovernanceError {
    pub fn class(&self) -> crate::ErrorClass {
        use crate::ErrorClass as C;
        match self {
            Self::PolicyInvalid(_)
            | Self::RoleUnknown(_)
            | Self::ValidUntilPast
            | Self::LabelInvalid
            | Self::CaInvalid(_) => C::InvalidArgument,
            Self::SelfApproval(_) | Self::RoleExpired { .. } => C::PermissionDenied,
            Self::ProposalNotFound(_) | Self::CaNotFound(_) => C::NotFound,
            Self::PolicyUnchanged(_)
            | Self::ProposalExpired(_)
            | Self::ProposalSuperseded { .. }
            | Self::ProposalStale { .. }
            | Self::ProposalClosed { .. }
            | Self::NotShadowable(_)
            | Self::RoleNotHeld { .. }
            | Self::NotBlocked(_)
            | Self::CaState { .. }
            | Self::CaNotPublished { .. }
            | Self::CaStillIssued(_)
            | Self::CaNoSuccessor(_)
            | Self::CaExists(_) => C::FailedPrecondition,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::PolicyInvalid(e) if e.names_foreign_trust_domain() => "TRUST_DOMAIN_MISMATCH",
            Self::PolicyInvalid(_) => "POLICY_INVALID",
            Self::PolicyUnchanged(_) => "POLICY_UNCHANGED",
            Self::SelfApproval(_) => "SELF_APPROVAL",
            Self::ProposalNotFound(_) => "PROPOSAL_NOT_FOUND",
            Self::ProposalExpired(_) => "PROPOSAL_EXPIRED",
            Self::ProposalSuperseded { .. } => "PROPOSAL_SUPERSEDED",
            Self::ProposalStale { .. } => "PROPOSAL_STALE",
            Self::ProposalClosed { .. } => "PROPOSAL_CLOSED",
            Self::NotShadowable(_) => "PROPOSAL_NOT_SHADOWABLE",
            Self::RoleUnknown(_) => "ROLE_UNKNOWN",
            Self::ValidUntilPast => "VALID_UNTIL_INVALID",
            Self::RoleNotHeld { .. } => "ROLE_NOT_HELD",
            Self::LabelInvalid => "LABEL_INVALID",
            Self::NotBlocked(_) => "IDENTITY_NOT_BLOCKED",
            Self::RoleExpired { .. } => "ROLE_EXPIRED",
            Self::CaInvalid(_) => "CA_INVALID",
            Self::CaNotFound(_) => "CA_NOT_FOUND",
            Self::CaState { .. } => "CA_STATE",
            Self::CaNotPublished { .. } => "CA_NOT_PUBLISHED",
            Self::CaStillIssued(_) => "CA_STILL_ISSUED",
            Self::CaNoSuccessor(_) => "CA_NO_SUCCESSOR",
            Self::CaExists(_) => "CA_EXISTS",
        }
    }
}

impl LoadError {
    /// Whether a problem is a trust domain other than the server's (the message names both).
    pub fn names_foreign_trust_domain(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.message.contains("this server's trust domain is"))
    }
}

/// A unified diff of two policy directories, file by file (the schema first, then the
/// `.cedar` files by name); empty when they are the same.
pub fn diff(old: &PolicySource, new: &PolicySource) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    let files = |s: &PolicySource| -> BTreeMap<String, String> {
        s.files
            .iter()
            .map(|f| (f.name.clone(), f.text.clone()))
            .collect()
    };
    let (old_files, new_files) = (files(old), files(new));
    let mut names: Vec<&String> = old_files.keys().chain(new_files.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = String::new();
    let mut one = |name: &str, a: &str, b: &str| {
        if a != b {
            let text = similar::TextDiff::from_lines(a, b);
            let _ = write!(
                out,
                "{}",
                text.unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{name}"), &format!("b/{name}"))
            );
        }
    };
    one(crate::policy::SCHEMA_FILE, &old.schema, &new.schema);
    for name in names {
        one(
            name,
            old_files.get(name).map_or("", String::as_str),
            new_files.get(name).map_or("", String::as_str),
        );
    }
    out
}
