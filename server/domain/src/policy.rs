//! Policy as code (DESIGN §11, §13): Cedar decides issuance and authorizes every operator RPC. A policy is a directory of text, a
//! `schema.cedarschema` plus `*.cedar` files ([`PolicySource`]), loaded whole by
//! [`Policy::load`]: parsed, checked and validated in strict mode against its schema, and refused
//! whole with the file, line and message of every problem.
//!
//! [`Policy::decide`] asks Cedar whether a principal may take an action on the SPIFFE ID asked
//! for: a [`Principal::Node`] enrolling (`Action::"Issue"`) or a [`Principal::Workload`]
//! renewing its own ID (`Action::"Renew"`), with the facts of the request as context (ttl, key
//! type, DNS names, attestors, join token, Kubernetes service account, environment). Deny by default: a request is granted
//! only if a permit applies and no forbid does. Cedar alone decides; the annotations of the
//! permits that granted it only shape what is granted (`@max_ttl_seconds`, `@server_auth`).
//!
//! [`Policy::authorize`] asks the same engine whether an operator (in the `Role` groups of its
//! role bindings), a node or a workload may call an Admin or Revocation RPC ([`Operation`]) on
//! what it acts on ([`Target`]), under the same deny-by-default rules.
//!
//! Every decision carries the policy version (SHA-256 of the schema and the sorted policy texts)
//! and the `@id`s of the policies that determined it, for the request record, the audit trail and
//! the refusal. Cedar types never leave this module; it does no I/O (the server reads the
//! directory).

mod cedar;
mod load;
mod operation;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

pub use load::{LoadError, Problem};
pub use operation::{Actor, Operation, OperationInput, ROLES, Target};

use crate::risk::RiskAssessment;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::types::KeyType;

/// The schema's file name in a policy directory; every other policy file ends in `.cedar`.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// The extension of a policy file.
pub const POLICY_EXTENSION: &str = "cedar";
/// `@max_ttl_seconds` of a permit that does not set it: one hour.
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 3600;
/// Most approvers a `@quorum` may ask for.
pub const MAX_QUORUM: u8 = 5;
/// Smallest `@max_ttl_seconds` a permit may set: one minute.
pub const MIN_MAX_TTL_SECONDS: u64 = 60;
/// Largest `@max_ttl_seconds` a permit may set: 30 days.
pub const MAX_MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// The `environment` in every decision's context unless the server sets another.
pub const DEFAULT_ENVIRONMENT: &str = "production";
/// The reason code of every refusal by policy.
pub const POLICY_DENIED: &str = "POLICY_DENIED";

/// A policy directory as text: what [`Policy::load`] takes. The server reads it from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// The text of [`SCHEMA_FILE`].
    pub schema: String,
    /// The `*.cedar` files, in any order.
    pub files: Vec<PolicyFile>,
}

/// One `*.cedar` file: its name (as problems name it) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

impl PolicySource {
    /// The policy `mintgate serve --dev` runs with (trust domain `dev.mintgate.local`), shipped
    /// in `server/policy/dev/`: nodes `/node/<name>` may enroll `/workload/...` identities with
    /// DNS names one label under `svc.cluster.local`, and `/joined/...` identities with a join
    /// token bound to the identity asked for; those workloads renew themselves. Operators act by
    /// their roles (DESIGN §13); every caller may check status and follow revocations. Elevated
    /// risk holds a request for one approver, high risk for two (DESIGN §12).
    pub fn dev() -> Self {
        Self {
            schema: include_str!("../../policy/dev/schema.cedarschema").to_owned(),
            files: vec![
                PolicyFile {
                    name: "holds.cedar".to_owned(),
                    text: include_str!("../../policy/dev/holds.cedar").to_owned(),
                },
                PolicyFile {
                    name: "issuance.cedar".to_owned(),
                    text: include_str!("../../policy/dev/issuance.cedar").to_owned(),
                },
                PolicyFile {
                    name: "operators.cedar".to_owned(),
                    text: include_str!("../../policy/dev/operators.cedar").to_owned(),
                },
            ],
        }
    }
}

/// Who is asking, as attestation established it. Each principal has one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal<'a> {
    /// A node (bootstrap) identity calling Enroll: `Node`, `Action::"Issue"`.
    Node(&'a SpiffeId),
    /// A workload renewing its own identity: `Workload`, `Action::"Renew"`.
    Workload(&'a SpiffeId),
}

/// What a decision needs: who asks, what for, and how the caller was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionInput<'a> {
    pub principal: Principal<'a>,
    /// The SPIFFE ID asked for (the resource).
    pub spiffe_id: &'a SpiffeId,
    /// The lifetime asked for, if any.
    pub ttl: Option<Duration>,
    pub key_type: KeyType,
    /// Lower-case DNS names asked for.
    pub dns_names: &'a [String],
    /// Names of the attestors that vouched for the caller.
    pub attestors: &'a [&'a str],
    /// A valid join token bound to exactly `spiffe_id` came with the request.
    pub join_token: bool,
    /// The service account a verified `jwt` token named (`context.kubernetes`).
    pub kubernetes: Option<&'a crate::jwt::ServiceAccount>,
    /// What the risk assessment found (`context.risk`).
    pub risk: &'a RiskAssessment,
}

/// Which policy decided: the version of the policy set and the `@id`s of the policies that
/// determined the decision (the permits that granted it, or the forbids that refused it; none
/// when nothing permitted it). Recorded with the request, in the audit trail and in refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub policy_version: String,
    /// Sorted; `@id`s never contain a comma, so [`PolicyDecision::policies_text`] is unambiguous.
    pub policies: Vec<String>,
}

impl PolicyDecision {
    /// The ids joined by commas (empty when there are none), as stored and sent.
    pub fn policies_text(&self) -> String {
        self.policies.join(",")
    }
}

/// What the policy granted, and under which decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub decision: PolicyDecision,
    /// The longest `@max_ttl_seconds` of the permits that granted it.
    pub max_ttl: Duration,
    /// One of the permits that granted it has `@server_auth("true")`.
    pub server_auth: bool,
    /// Approvers must release it first: a permit that granted it carries `@hold`, or a permit
    /// of `Action::"Hold"` applies (and no forbid of it does).
    pub hold: Option<Hold>,
}

/// Why a granted request waits for approvers, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The `@hold` texts of the policies that hold it, joined by "; " (a default names the
    /// policy when a `Hold` permit has none).
    pub reason: String,
    /// Distinct approvers needed: the largest `@quorum` of those policies (default 1).
    pub quorum: u8,
    /// The `@id`s of the policies that hold it, sorted.
    pub policies: Vec<String>,
}

/// The policy refused a request: no permit applied, or a forbid did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Denied {
    pub decision: PolicyDecision,
    /// A forbid applied (its ids are the decision's policies), rather than no permit.
    pub forbidden: bool,
    /// The risk the policy saw, when it sees risk and a signal fired.
    pub risk: Option<RiskAssessment>,
}

impl Denied {
    /// The stable reason code sent in `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        POLICY_DENIED
    }

    fn describe(&self) -> String {
        let mut text = if self.forbidden {
            format!(
                "the policy forbids this request ({})",
                self.decision.policies.join(", ")
            )
        } else {
            "no policy permits this request".to_owned()
        };
        if let Some(risk) = &self.risk {
            text.push_str(&format!(" at {risk}"));
        }
        text
    }
}

/// Why [`Policy::decide`] gave no grant.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Cedar refused a request Mintgate built: a bug, since every load proves the schema
    /// accepts them.
    #[error("the policy engine refused the request it was given")]
    Engine(#[source] crate::error::Cause),
}

/// A loaded, validated policy set. Built only by [`Policy::load`]; decides without I/O.
pub struct Policy {
    version: String,
    environment: String,
    engine: cedar::Engine,
    /// What each permit grants, by `@id`.
    limits: HashMap<String, Limits>,
    warnings: Vec<Problem>,
}

/// What a permit's annotations grant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Limits {
    max_ttl: Duration,
    server_auth: bool,
    /// `@hold`: the request waits for approvers, for this reason.
    hold: Option<String>,
    /// `@quorum`: how many approvers (default 1).
    quorum: u8,
}

impl Policy {
    /// Loads a policy directory: every file parsed, every policy checked (a unique `@id`, known
    /// annotations with valid values, no trust domain but `trust_domain`'s, or with `None` no
    /// two different ones), the whole set validated in strict mode against the schema, and the
    /// schema proved to accept the requests Mintgate makes. Any problem refuses the whole
    /// directory, naming the file and line of each.
    pub fn load(
        source: &PolicySource,
        trust_domain: Option<&TrustDomain>,
    ) -> Result<Self, LoadError> {
        let loaded = load::load(source, trust_domain)?;
        Ok(Self {
            version: loaded.version,
            environment: DEFAULT_ENVIRONMENT.to_owned(),
            engine: loaded.engine,
            limits: loaded.limits,
            warnings: loaded.warnings,
        })
    }

    /// The `environment` decisions see in their context (default [`DEFAULT_ENVIRONMENT`]).
    pub fn with_environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Decides a request. Granted only if a permit applies and no forbid does; a forbid that
    /// fails to evaluate counts as applying (Cedar would skip it).
    pub fn decide(&self, input: &DecisionInput<'_>) -> Result<Grant, DecideError> {
        let (outcome, held) = self.engine.decide(input, &self.environment)?;
        let decision = self.verdict(outcome).map_err(|mut denied| {
            if self.engine.sees_risk && !input.risk.signals.is_empty() {
                denied.risk = Some(input.risk.clone());
            }
            denied
        })?;
        let granted = decision
            .policies
            .iter()
            .filter_map(|id| self.limits.get(id));
        let max_ttl = granted
            .clone()
            .map(|l| l.max_ttl)
            .max()
            .unwrap_or(Duration::from_secs(DEFAULT_MAX_TTL_SECONDS));
        let server_auth = granted.clone().any(|l| l.server_auth);
        let mut holding: Vec<(&str, &Limits)> = decision
            .policies
            .iter()
            .filter_map(|id| Some((id.as_str(), self.limits.get(id)?)))
            .filter(|(_, l)| l.hold.is_some())
            .collect();
        let held_by = match held {
            Some(outcome) if outcome.allowed && outcome.errored_forbids.is_empty() => {
                outcome.determining
            }
            _ => Vec::new(),
        };
        holding.extend(
            held_by
                .iter()
                .filter_map(|id| Some((id.as_str(), self.limits.get(id)?))),
        );
        Ok(Grant {
            hold: hold_of(&holding),
            decision,
            max_ttl,
            server_auth,
        })
    }

    /// Whether the schema declares `Action::"Hold"`.
    pub fn maps_risk_to_holds(&self) -> bool {
        self.engine.has_hold()
    }

    /// SHA-256 (hex) of the schema and the sorted policy texts, each length-prefixed: the same
    /// texts give the same version whatever the files are called.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn policy_count(&self) -> usize {
        self.engine.len()
    }

    /// What the validator warns about (never a reason to refuse the policy).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }
}

impl Policy {
    /// What Cedar said, as a decision: granted by its determining permits, or denied by the
    /// forbids that applied (a forbid that failed to evaluate counts; Cedar would skip it), or
    /// by nothing when no permit applied.
    fn verdict(&self, outcome: cedar::Outcome) -> Result<PolicyDecision, Denied> {
        if outcome.errored_forbids.is_empty() && outcome.allowed {
            return Ok(self.decision(outcome.determining));
        }
        let forbidden = !outcome.errored_forbids.is_empty() || !outcome.determining.is_empty();
        let mut ids = outcome.errored_forbids;
        if ids.is_empty() {
            ids = outcome.determining;
        }
        Err(Denied {
            decision: self.decision(ids),
            forbidden,
            risk: None,
        })
    }

    /// The decision of this version by `policies` (sorted here).
    fn decision(&self, mut policies: Vec<String>) -> PolicyDecision {
        policies.sort();
        PolicyDecision {
            policy_version: self.version.clone(),
            policies,
        }
    }
}

/// The hold of the policies that hold a request, if any.
fn hold_of(holding: &[(&str, &Limits)]) -> Option<Hold> {
    if holding.is_empty() {
        return None;
    }
    let mut policies: Vec<String> = holding.iter().map(|(id, _)| (*id).to_owned()).collect();
    policies.sort();
    policies.dedup();
    let mut reasons: Vec<String> = holding
        .iter()
        .map(|(id, l)| {
            l.hold
                .clone()
                .unwrap_or_else(|| format!("policy {id} holds it"))
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    Some(Hold {
        reason: reasons.join("; "),
        quorum: holding.iter().map(|(_, l)| l.quorum).max().unwrap_or(1),
        policies,
    })
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.version)
            .field("environment", &self.environment)
            .field("policies", &self.policy_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
