//! Operator RPCs (DESIGN §13): every Admin and Revocation RPC asks [`Policy::authorize`] before
//! it acts. One Cedar action per RPC, named like it; the caller is an `Operator` (in a
//! `Role::"<name>"` group for each of its valid role bindings), a `Node` or a `Workload`; the
//! resource is the SPIFFE ID, the trust domain or the proposal acted on. What each RPC may be
//! called by and acts on is fixed here ([`Operation::callers`], [`Operation::target`]); every
//! load proves the schema accepts those requests ([`unaccepted`]).

use std::fmt;

use cedar_policy::Schema;

use super::cedar::Engine;
use super::{DEFAULT_ENVIRONMENT, DecideError, Denied, Policy, PolicyDecision};
use crate::spiffe::{SpiffeId, TrustDomain};

/// The operator roles of DESIGN §13.
pub const ROLES: [&str; 8] = [
    "issuer",
    "revoker",
    "approver",
    "policy-author",
    "policy-approver",
    "ca-custodian",
    "auditor",
    "admin",
];

/// An RPC Cedar authorizes (DESIGN §13): one Cedar action each, named like the RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateJoinToken,
    Revoke,
    RevokeIdentity,
    UnblockIdentity,
    CheckStatus,
    WatchRevocations,
    ProposePolicy,
    ProposeRoleBinding,
    ListProposals,
    GetProposal,
    ShadowPolicy,
    ApproveProposal,
    GetGovernance,
    ListPending,
    Approve,
    Deny,
    WatchPending,
    ExportEvidence,
    ProposeCa,
    ListAuthorities,
    RevokeIssuer,
}

impl Operation {
    /// Every operation, in declaration order (so `op as usize` indexes it).
    pub const ALL: [Operation; 21] = [
        Self::CreateJoinToken,
        Self::Revoke,
        Self::RevokeIdentity,
        Self::UnblockIdentity,
        Self::CheckStatus,
        Self::WatchRevocations,
        Self::ProposePolicy,
        Self::ProposeRoleBinding,
        Self::ListProposals,
        Self::GetProposal,
        Self::ShadowPolicy,
        Self::ApproveProposal,
        Self::GetGovernance,
        Self::ListPending,
        Self::Approve,
        Self::Deny,
        Self::WatchPending,
        Self::ExportEvidence,
        Self::ProposeCa,
        Self::ListAuthorities,
        Self::RevokeIssuer,
    ];

    /// The Cedar action id and RPC name, e.g. "CreateJoinToken".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateJoinToken => "CreateJoinToken",
            Self::Revoke => "Revoke",
            Self::RevokeIdentity => "RevokeIdentity",
            Self::UnblockIdentity => "UnblockIdentity",
            Self::CheckStatus => "CheckStatus",
            Self::WatchRevocations => "WatchRevocations",
            Self::ProposePolicy => "ProposePolicy",
            Self::ProposeRoleBinding => "ProposeRoleBinding",
            Self::ListProposals => "ListProposals",
            Self::GetProposal => "GetProposal",
            Self::ShadowPolicy => "ShadowPolicy",
            Self::ApproveProposal => "ApproveProposal",
            Self::GetGovernance => "GetGovernance",
            Self::ListPending => "ListPending",
            Self::Approve => "Approve",
            Self::Deny => "Deny",
            Self::WatchPending => "WatchPending",
            Self::ExportEvidence => "ExportEvidence",
            Self::ProposeCa => "ProposeCa",
            Self::ListAuthorities => "ListAuthorities",
            Self::RevokeIssuer => "RevokeIssuer",
        }
    }

    /// Who may call it at all (the schema's `principal` list); anyone else is denied without
    /// asking Cedar.
    pub(super) fn callers(self) -> &'static [ActorKind] {
        use ActorKind::*;
        match self {
            Self::Revoke => &[Operator, Workload],
            Self::CheckStatus | Self::WatchRevocations => &[Operator, Workload, Node],
            Self::CreateJoinToken
            | Self::RevokeIdentity
            | Self::UnblockIdentity
            | Self::ProposePolicy
            | Self::ProposeRoleBinding
            | Self::ListProposals
            | Self::GetProposal
            | Self::ShadowPolicy
            | Self::ApproveProposal
            | Self::GetGovernance
            | Self::ListPending
            | Self::Approve
            | Self::Deny
            | Self::WatchPending => &[Operator],
            Self::ExportEvidence | Self::ProposeCa | Self::ListAuthorities | Self::RevokeIssuer => {
                &[Operator]
            }
        }
    }

    /// What it acts on (the schema's `resource`).
    pub(super) fn target(self) -> TargetKind {
        match self {
            Self::CreateJoinToken
            | Self::Revoke
            | Self::RevokeIdentity
            | Self::UnblockIdentity
            | Self::ProposeRoleBinding
            | Self::Approve
            | Self::Deny => TargetKind::Identity,
            Self::CheckStatus
            | Self::WatchRevocations
            | Self::ProposePolicy
            | Self::ListProposals
            | Self::GetGovernance
            | Self::ListPending
            | Self::WatchPending => TargetKind::TrustDomain,
            Self::GetProposal | Self::ShadowPolicy | Self::ApproveProposal => TargetKind::Proposal,
            Self::ExportEvidence | Self::ProposeCa | Self::ListAuthorities | Self::RevokeIssuer => {
                TargetKind::TrustDomain
            }
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asks. Roles are the caller's valid (unexpired) role bindings; the caller of `authorize`
/// decides which to pass.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Operator {
        id: &'a SpiffeId,
        roles: &'a [String],
    },
    Node(&'a SpiffeId),
    Workload(&'a SpiffeId),
}

impl Actor<'_> {
    pub(super) fn kind(&self) -> ActorKind {
        match self {
            Self::Operator { .. } => ActorKind::Operator,
            Self::Node(_) => ActorKind::Node,
            Self::Workload(_) => ActorKind::Workload,
        }
    }
}

/// What the operation acts on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A SPIFFE ID: the identity a join token is for, whose certificate is revoked, which is
    /// revoked/unblocked, whose held request is approved or denied, or the operator whose role
    /// binding a proposal changes.
    Identity(&'a SpiffeId),
    /// The server's trust domain as a whole (CheckStatus, WatchRevocations, ProposePolicy,
    /// ListProposals).
    TrustDomain(&'a TrustDomain),
    /// A proposal: its id, kind ("policy", "role_binding" or "unblock") and author (a SPIFFE ID
    /// string).
    Proposal {
        id: &'a str,
        kind: &'a str,
        author: &'a str,
        trust_domain: &'a TrustDomain,
    },
}

impl Target<'_> {
    pub(super) fn kind(&self) -> TargetKind {
        match self {
            Self::Identity(_) => TargetKind::Identity,
            Self::TrustDomain(_) => TargetKind::TrustDomain,
            Self::Proposal { .. } => TargetKind::Proposal,
        }
    }
}

/// What [`Policy::authorize`] needs: who asks to do what to what.
#[derive(Debug, Clone, Copy)]
pub struct OperationInput<'a> {
    pub actor: Actor<'a>,
    pub operation: Operation,
    pub target: Target<'a>,
}

impl Policy {
    /// Decides whether `input.actor` may do `input.operation` to `input.target`. Deny unless a
    /// permit applies and no forbid does (same rules as [`Policy::decide`], including errored
    /// forbids counting as applying); a caller the operation is not for (a node calling
    /// `CreateJoinToken`) is denied without asking Cedar. Ok carries the determining permits;
    /// `Err(DecideError::Denied(..))` the forbids (or none) with the version. A target of the
    /// wrong kind for the operation is a bug: [`DecideError::Engine`].
    pub fn authorize(&self, input: &OperationInput<'_>) -> Result<PolicyDecision, DecideError> {
        let expected = input.operation.target();
        if input.target.kind() != expected {
            return Err(DecideError::Engine(Box::new(WrongTarget {
                operation: input.operation,
                expected,
                got: input.target.kind(),
            })));
        }
        if !input.operation.callers().contains(&input.actor.kind()) {
            return Err(Denied {
                decision: self.decision(Vec::new()),
                forbidden: false,
                risk: None,
            }
            .into());
        }
        let outcome = self.engine.authorize(input, &self.environment)?;
        Ok(self.verdict(outcome)?)
    }
}

/// The principal type of an [`Actor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ActorKind {
    Operator,
    Node,
    Workload,
}

impl ActorKind {
    /// The Cedar entity type, as problems name it.
    pub(super) fn type_name(self) -> &'static str {
        match self {
            Self::Operator => "Operator",
            Self::Node => "Node",
            Self::Workload => "Workload",
        }
    }
}

/// The resource type of a [`Target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TargetKind {
    Identity,
    TrustDomain,
    Proposal,
}

impl TargetKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Identity => "a SPIFFE ID",
            Self::TrustDomain => "the trust domain",
            Self::Proposal => "a proposal",
        }
    }
}

/// A target that is not what the operation acts on: a bug in the caller of
/// [`Policy::authorize`].
#[derive(Debug, thiserror::Error)]
#[error("{operation} acts on {}, not {}", expected.describe(), got.describe())]
pub(super) struct WrongTarget {
    operation: Operation,
    expected: TargetKind,
    got: TargetKind,
}

/// Why `schema` would refuse requests Mintgate sends: every operation from every kind of caller
/// it is for, with the target it acts on, an operator holding every role. One message per caller
/// kind and cause, naming the actions it breaks; none when the schema accepts them all.
pub(super) fn unaccepted(engine: &Engine, schema: &Schema, td: &str) -> Vec<String> {
    let id = |path: &str| SpiffeId::parse(&format!("spiffe://{td}{path}"));
    let (Ok(trust_domain), Ok(operator), Ok(node), Ok(workload)) = (
        TrustDomain::parse(td),
        id("/operator/o"),
        id("/node/n"),
        id("/ns/web/sa/api"),
    ) else {
        return Vec::new();
    };
    let roles: Vec<String> = ROLES.iter().map(|r| (*r).to_owned()).collect();
    let mut messages = Vec::new();
    for caller in [ActorKind::Operator, ActorKind::Node, ActorKind::Workload] {
        let actor = match caller {
            ActorKind::Operator => Actor::Operator {
                id: &operator,
                roles: &roles,
            },
            ActorKind::Node => Actor::Node(&node),
            ActorKind::Workload => Actor::Workload(&workload),
        };
        let operations: Vec<Operation> = Operation::ALL
            .into_iter()
            .filter(|op| op.callers().contains(&caller))
            .collect();
        // Each cause with the actions it breaks, in the order of Operation::ALL.
        let mut causes: Vec<(String, Vec<String>)> = Vec::new();
        for &operation in &operations {
            let target = match operation.target() {
                TargetKind::Identity => Target::Identity(&workload),
                TargetKind::TrustDomain => Target::TrustDomain(&trust_domain),
                TargetKind::Proposal => Target::Proposal {
                    id: "p",
                    kind: "policy",
                    author: operator.as_str(),
                    trust_domain: &trust_domain,
                },
            };
            let input = OperationInput {
                actor,
                operation,
                target,
            };
            let Err(e) = engine.operation_request(&input, DEFAULT_ENVIRONMENT, Some(schema)) else {
                continue;
            };
            let cause = chain(e.as_ref());
            let action = format!("Action::{:?}", operation.as_str());
            match causes.iter_mut().find(|(c, _)| *c == cause) {
                Some((_, actions)) => actions.push(action),
                None => causes.push((cause, vec![action])),
            }
        }
        let article = match caller {
            ActorKind::Operator => "an",
            ActorKind::Node | ActorKind::Workload => "a",
        };
        let name = caller.type_name();
        for (cause, actions) in causes {
            let which = if actions.len() == operations.len() && actions.len() > 1 {
                format!("every request of {article} {name}")
            } else {
                format!("{article} {name}'s {}", actions.join(", "))
            };
            messages.push(format!(
                "does not describe the requests Mintgate makes: {which}: {cause}"
            ));
        }
    }
    messages
}

/// An error and its sources, each once (Cedar's wrappers often repeat their source).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
