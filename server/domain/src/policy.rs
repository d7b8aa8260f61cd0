//! Issuance policy: which caller may obtain a certificate for which SPIFFE ID, with which DNS
//! names, key types and maximum lifetime. Deny by default: a request is granted only by a rule
//! that matches it, and a policy without rules grants nothing.
//!
//! An operator writes a [`PolicyDocument`] (the server reads it from TOML);
//! [`Policy::from_document`] validates it once against the server's trust domain, so
//! [`Policy::decide`] never meets a malformed pattern. Rules are tried in order and the first
//! rule that matches decides:
//!
//! - A **node** (bootstrap identity) is matched by a rule whose `nodes` match the node's ID and
//!   whose `allow` matches the requested ID. If that rule has `require_join_token`, the node must
//!   also have presented a valid join token bound to exactly the requested ID.
//! - A **workload** renews its own ID: the first rule whose `allow` matches it decides; `nodes`
//!   and join tokens do not apply.
//!
//! The deciding rule then checks the key type and every requested DNS name. This module is pure:
//! no files, no TOML, no clock.

mod document;
mod pattern;

use std::time::Duration;

pub use document::{
    DEFAULT_MAX_TTL_SECONDS, MAX_MAX_TTL_SECONDS, MIN_MAX_TTL_SECONDS, PolicyDocument, PolicyError,
    RuleAt, RuleDocument, dev_policy,
};
pub use pattern::{DnsPattern, DnsPatternError, IdPattern, PatternError};

use crate::spiffe::SpiffeId;
use crate::types::KeyType;

/// The policy refused a request. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no policy rule grants {0} to this caller")]
    SpiffeIdNotGranted(SpiffeId),
    #[error("the policy rule that grants this SPIFFE ID does not grant the DNS name {0:?}")]
    DnsNameNotGranted(String),
    #[error("the policy rule that grants this SPIFFE ID does not allow {0} keys")]
    KeyTypeNotAllowed(KeyType),
    #[error("the policy requires a join token bound to the requested SPIFFE ID")]
    JoinTokenRequired,
}

impl Denied {
    /// The stable reason code sent in `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SpiffeIdNotGranted(_) => "SPIFFE_ID_NOT_GRANTED",
            Self::DnsNameNotGranted(_) => "DNS_NAME_NOT_GRANTED",
            Self::KeyTypeNotAllowed(_) => "KEY_TYPE_NOT_ALLOWED_BY_POLICY",
            Self::JoinTokenRequired => "JOIN_TOKEN_REQUIRED",
        }
    }
}

/// Who is asking, as established by the handshake and attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester<'a> {
    /// A node (bootstrap) identity. `join_token_for` is the SPIFFE ID a valid join token it
    /// presented is bound to, if it presented one.
    Node {
        id: &'a SpiffeId,
        join_token_for: Option<&'a SpiffeId>,
    },
    /// A workload renewing its own identity.
    Workload { id: &'a SpiffeId },
}

/// What a decision needs: the requester and what the CSR asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionInput<'a> {
    pub requester: Requester<'a>,
    pub spiffe_id: &'a SpiffeId,
    pub dns_names: &'a [String],
    pub key_type: KeyType,
}

/// What the policy granted, and which rule of which policy version granted it (for the audit
/// trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub rule: String,
    pub policy_version: String,
    pub max_ttl: Duration,
    pub server_auth: bool,
}

/// A validated policy. Built only by [`Policy::from_document`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    version: String,
    rules: Vec<Rule>,
}

/// A validated rule: patterns parsed, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: String,
    nodes: Vec<IdPattern>,
    allow: Vec<IdPattern>,
    require_join_token: bool,
    max_ttl: Duration,
    key_types: Vec<KeyType>,
    dns_names: Vec<DnsPattern>,
    server_auth: bool,
}

impl Policy {
    /// Decides a request: the first matching rule grants or refuses it; no rule refuses it.
    pub fn decide(&self, input: &DecisionInput<'_>) -> Result<Grant, Denied> {
        let wanted = input.spiffe_id;
        let not_granted = || Denied::SpiffeIdNotGranted(wanted.clone());
        let rule = match input.requester {
            Requester::Node { id, join_token_for } => {
                let rule = self
                    .rules
                    .iter()
                    .find(|rule| rule.applies_to_node(id) && rule.allows(wanted))
                    .ok_or_else(not_granted)?;
                if rule.require_join_token && join_token_for != Some(wanted) {
                    return Err(Denied::JoinTokenRequired);
                }
                rule
            }
            Requester::Workload { id } => {
                // A workload may only renew its own identity; attestation checks this too.
                if id != wanted {
                    return Err(not_granted());
                }
                self.rules
                    .iter()
                    .find(|rule| rule.allows(wanted))
                    .ok_or_else(not_granted)?
            }
        };
        rule.check_request(input)?;
        Ok(Grant {
            rule: rule.name.clone(),
            policy_version: self.version.clone(),
            max_ttl: rule.max_ttl,
            server_auth: rule.server_auth,
        })
    }

    /// The version label of the document this policy was built from.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

impl Rule {
    fn applies_to_node(&self, node: &SpiffeId) -> bool {
        self.nodes.iter().any(|pattern| pattern.matches(node))
    }

    fn allows(&self, id: &SpiffeId) -> bool {
        self.allow.iter().any(|pattern| pattern.matches(id))
    }

    /// The checks made by the deciding rule once it is chosen: key type, then DNS names.
    fn check_request(&self, input: &DecisionInput<'_>) -> Result<(), Denied> {
        if !self.key_types.contains(&input.key_type) {
            return Err(Denied::KeyTypeNotAllowed(input.key_type));
        }
        for name in input.dns_names {
            if !self.dns_names.iter().any(|pattern| pattern.matches(name)) {
                return Err(Denied::DnsNameNotGranted(name.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
