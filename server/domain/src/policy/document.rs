//! The policy file as written by an operator ([`PolicyDocument`], [`RuleDocument`]) and its
//! validation into a [`Policy`]. The server reads the file (TOML) and hands the deserialized
//! document here; this module never touches files or a TOML parser.
//!
//! Validation is all-or-nothing and every error names the entry it is about, e.g.
//! `rules[2] ("web").allow[0]: "spiffe://x/a*" is not a valid pattern: ...`.

// A policy error happens once, at load, and carries the entry it names: its size never matters.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pattern::{DnsPattern, DnsPatternError, IdPattern, PatternError};
use super::{Policy, Rule};
use crate::spiffe::TrustDomain;
use crate::types::KeyType;

/// `max_ttl_seconds` when a rule does not set it: one hour.
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 3600;
/// Smallest `max_ttl_seconds` a rule may set: one minute.
pub const MIN_MAX_TTL_SECONDS: u64 = 60;
/// Largest `max_ttl_seconds` a rule may set: 30 days.
pub const MAX_MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// A policy file: a version label and an ordered list of rules (first match wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Recorded in every grant and audit event, so a decision can be traced to the policy.
    pub version: String,
    #[serde(default)]
    pub rules: Vec<RuleDocument>,
}

/// One rule of a policy file. See the module documentation of [`crate::policy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    /// Unique within the document; named in grants and audit events.
    pub name: String,
    /// SPIFFE ID patterns of the node (bootstrap) identities this rule applies to.
    pub nodes: Vec<String>,
    /// SPIFFE ID patterns this rule grants.
    pub allow: Vec<String>,
    /// A node must also present a join token bound to exactly the requested SPIFFE ID.
    #[serde(default)]
    pub require_join_token: bool,
    /// Longest certificate lifetime granted; defaults to [`DEFAULT_MAX_TTL_SECONDS`].
    #[serde(default)]
    pub max_ttl_seconds: Option<u64>,
    /// Key types accepted (names per [`KeyType::as_str`]); defaults to all of [`KeyType::ALL`].
    #[serde(default)]
    pub key_types: Option<Vec<String>>,
    /// DNS SAN patterns granted: `a.b` or `*.b`. Empty: no DNS SANs.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Add the serverAuth EKU.
    #[serde(default)]
    pub server_auth: bool,
}

/// Where in a policy document a rule sits: `rules[2] ("web")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleAt {
    pub index: usize,
    pub name: String,
}

impl fmt::Display for RuleAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rules[{}] ({:?})", self.index, self.name)
    }
}

/// Why a policy document was refused. The message names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("version must not be empty")]
    EmptyVersion,
    #[error("{rule}.name must not be empty")]
    EmptyRuleName { rule: RuleAt },
    #[error("{rule}.name: duplicate rule name (also used by rules[{first}])")]
    DuplicateRuleName { rule: RuleAt, first: usize },
    #[error("{rule}.{field} must not be empty")]
    EmptyList { rule: RuleAt, field: &'static str },
    #[error("{rule}.{field}[{item}]: {pattern:?} is not a valid pattern: {source}")]
    BadIdPattern {
        rule: RuleAt,
        field: &'static str,
        item: usize,
        pattern: String,
        source: PatternError,
    },
    #[error("{rule}.key_types[{item}]: unknown key type {value:?} (expected one of {known})", known = known_key_types())]
    UnknownKeyType {
        rule: RuleAt,
        item: usize,
        value: String,
    },
    #[error(
        "{rule}.max_ttl_seconds: {value} is outside {MIN_MAX_TTL_SECONDS}..={MAX_MAX_TTL_SECONDS}"
    )]
    BadMaxTtl { rule: RuleAt, value: u64 },
    #[error("{rule}.dns_names[{item}]: {pattern:?} is not a valid DNS name pattern: {source}")]
    BadDnsPattern {
        rule: RuleAt,
        item: usize,
        pattern: String,
        source: DnsPatternError,
    },
}

impl Policy {
    /// Validates a document against the server's trust domain. Deny by default: a document
    /// without rules yields a policy that grants nothing.
    pub fn from_document(
        doc: PolicyDocument,
        trust_domain: &TrustDomain,
    ) -> Result<Policy, PolicyError> {
        if doc.version.trim().is_empty() {
            return Err(PolicyError::EmptyVersion);
        }
        let mut first_use: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(doc.rules.len());
        for (index, rule) in doc.rules.into_iter().enumerate() {
            let at = RuleAt {
                index,
                name: rule.name.clone(),
            };
            if rule.name.trim().is_empty() {
                return Err(PolicyError::EmptyRuleName { rule: at });
            }
            if let Some(first) = first_use.get(&rule.name) {
                return Err(PolicyError::DuplicateRuleName {
                    rule: at,
                    first: *first,
                });
            }
            first_use.insert(rule.name.clone(), index);
            rules.push(validate_rule(rule, &at, trust_domain)?);
        }
        Ok(Policy {
            version: doc.version,
            rules,
        })
    }
}

/// The policy Mintgate runs with in development (`--dev`): nodes under `/node/*` may request
/// any `/workload/**` identity with DNS names under `*.svc.cluster.local`, and `/joined/**`
/// identities with a join token bound to the requested ID.
pub fn dev_policy(trust_domain: &TrustDomain) -> PolicyDocument {
    let td = trust_domain.as_str();
    let nodes = vec![format!("spiffe://{td}/node/*")];
    PolicyDocument {
        version: "dev-1".to_owned(),
        rules: vec![
            RuleDocument {
                name: "dev-nodes".to_owned(),
                nodes: nodes.clone(),
                allow: vec![format!("spiffe://{td}/workload/**")],
                require_join_token: false,
                max_ttl_seconds: None,
                key_types: None,
                dns_names: vec!["*.svc.cluster.local".to_owned()],
                server_auth: false,
            },
            RuleDocument {
                name: "join-token".to_owned(),
                nodes,
                allow: vec![format!("spiffe://{td}/joined/**")],
                require_join_token: true,
                max_ttl_seconds: None,
                key_types: None,
                dns_names: Vec::new(),
                server_auth: false,
            },
        ],
    }
}

fn validate_rule(
    rule: RuleDocument,
    at: &RuleAt,
    trust_domain: &TrustDomain,
) -> Result<Rule, PolicyError> {
    let nodes = id_patterns(&rule.nodes, "nodes", at, trust_domain)?;
    let allow = id_patterns(&rule.allow, "allow", at, trust_domain)?;

    let ttl_secs = rule.max_ttl_seconds.unwrap_or(DEFAULT_MAX_TTL_SECONDS);
    if !(MIN_MAX_TTL_SECONDS..=MAX_MAX_TTL_SECONDS).contains(&ttl_secs) {
        return Err(PolicyError::BadMaxTtl {
            rule: at.clone(),
            value: ttl_secs,
        });
    }

    let key_types = match &rule.key_types {
        None => KeyType::ALL.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(PolicyError::EmptyList {
                rule: at.clone(),
                field: "key_types",
            });
        }
        Some(names) => {
            let mut key_types = Vec::with_capacity(names.len());
            for (item, name) in names.iter().enumerate() {
                let key_type = KeyType::parse(name).ok_or_else(|| PolicyError::UnknownKeyType {
                    rule: at.clone(),
                    item,
                    value: name.clone(),
                })?;
                key_types.push(key_type);
            }
            key_types
        }
    };

    let mut dns_names = Vec::with_capacity(rule.dns_names.len());
    for (item, pattern) in rule.dns_names.iter().enumerate() {
        let parsed = DnsPattern::parse(pattern).map_err(|source| PolicyError::BadDnsPattern {
            rule: at.clone(),
            item,
            pattern: pattern.clone(),
            source,
        })?;
        dns_names.push(parsed);
    }

    Ok(Rule {
        name: rule.name,
        nodes,
        allow,
        require_join_token: rule.require_join_token,
        max_ttl: Duration::from_secs(ttl_secs),
        key_types,
        dns_names,
        server_auth: rule.server_auth,
    })
}

fn id_patterns(
    patterns: &[String],
    field: &'static str,
    at: &RuleAt,
    trust_domain: &TrustDomain,
) -> Result<Vec<IdPattern>, PolicyError> {
    if patterns.is_empty() {
        return Err(PolicyError::EmptyList {
            rule: at.clone(),
            field,
        });
    }
    patterns
        .iter()
        .enumerate()
        .map(|(item, pattern)| {
            IdPattern::parse(pattern, trust_domain).map_err(|source| PolicyError::BadIdPattern {
                rule: at.clone(),
                field,
                item,
                pattern: pattern.clone(),
                source,
            })
        })
        .collect()
}

fn known_key_types() -> String {
    KeyType::ALL.map(KeyType::as_str).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("prod.example").unwrap()
    }

    fn rule(name: &str) -> RuleDocument {
        RuleDocument {
            name: name.to_owned(),
            nodes: vec!["spiffe://prod.example/node/*".to_owned()],
            allow: vec!["spiffe://prod.example/web/**".to_owned()],
            require_join_token: false,
            max_ttl_seconds: None,
            key_types: None,
            dns_names: Vec::new(),
            server_auth: false,
        }
    }

    fn doc(rules: Vec<RuleDocument>) -> PolicyDocument {
        PolicyDocument {
            version: "v1".to_owned(),
            rules,
        }
    }

    fn error(rules: Vec<RuleDocument>) -> String {
        Policy::from_document(doc(rules), &td())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_valid_document_loads_with_defaults() {
        let policy = Policy::from_document(doc(vec![rule("a"), rule("b")]), &td()).unwrap();
        assert_eq!(policy.version(), "v1");
        assert_eq!(policy.rule_count(), 2);
        assert_eq!(policy.rules[0].max_ttl, Duration::from_secs(3600));
        assert_eq!(policy.rules[0].key_types, KeyType::ALL.to_vec());
    }

    #[test]
    fn errors_name_the_entry() {
        let mut bad = rule("web");
        bad.allow.push("spiffe://prod.example/a*".to_owned());
        assert_eq!(
            error(vec![rule("a"), rule("b"), bad]),
            "rules[2] (\"web\").allow[1]: \"spiffe://prod.example/a*\" is not a valid pattern: \
             segment \"a*\" mixes \"*\" with other characters; \"*\" must be a whole segment"
        );

        let mut foreign = rule("db");
        foreign.nodes = vec!["spiffe://other.example/node/*".to_owned()];
        assert_eq!(
            error(vec![foreign]),
            "rules[0] (\"db\").nodes[0]: \"spiffe://other.example/node/*\" is not a valid \
             pattern: it names trust domain other.example, but this server's trust domain is \
             prod.example"
        );
    }

    #[test]
    fn empty_version_names_and_lists_are_refused() {
        let err = Policy::from_document(
            PolicyDocument {
                version: " ".to_owned(),
                rules: Vec::new(),
            },
            &td(),
        )
        .unwrap_err();
        assert_eq!(err, PolicyError::EmptyVersion);

        assert_eq!(
            error(vec![rule("")]),
            "rules[0] (\"\").name must not be empty"
        );

        let mut no_nodes = rule("n");
        no_nodes.nodes.clear();
        assert_eq!(
            error(vec![no_nodes]),
            "rules[0] (\"n\").nodes must not be empty"
        );

        let mut no_allow = rule("a");
        no_allow.allow.clear();
        assert_eq!(
            error(vec![no_allow]),
            "rules[0] (\"a\").allow must not be empty"
        );

        let mut no_keys = rule("k");
        no_keys.key_types = Some(Vec::new());
        assert_eq!(
            error(vec![no_keys]),
            "rules[0] (\"k\").key_types must not be empty"
        );
    }

    #[test]
    fn duplicate_rule_names_are_refused() {
        assert_eq!(
            error(vec![rule("a"), rule("b"), rule("a")]),
            "rules[2] (\"a\").name: duplicate rule name (also used by rules[0])"
        );
    }

    #[test]
    fn unknown_key_types_are_refused() {
        let mut r = rule("k");
        r.key_types = Some(vec!["P-256".to_owned(), "RSA-1024".to_owned()]);
        assert_eq!(
            error(vec![r]),
            "rules[0] (\"k\").key_types[1]: unknown key type \"RSA-1024\" (expected one of \
             P-256, P-384, Ed25519, RSA-2048, RSA-3072, RSA-4096)"
        );
    }

    #[test]
    fn ttl_bounds_are_enforced() {
        for (ttl, ok) in [
            (59, false),
            (60, true),
            (MAX_MAX_TTL_SECONDS, true),
            (MAX_MAX_TTL_SECONDS + 1, false),
            (0, false),
        ] {
            let mut r = rule("t");
            r.max_ttl_seconds = Some(ttl);
            let got = Policy::from_document(doc(vec![r]), &td());
            assert_eq!(got.is_ok(), ok, "{ttl}");
        }
        let mut r = rule("t");
        r.max_ttl_seconds = Some(10);
        assert_eq!(
            error(vec![r]),
            "rules[0] (\"t\").max_ttl_seconds: 10 is outside 60..=2592000"
        );
    }

    #[test]
    fn bad_dns_patterns_are_refused() {
        let mut r = rule("d");
        r.dns_names = vec!["ok.example.com".to_owned(), "*.com".to_owned()];
        assert_eq!(
            error(vec![r]),
            "rules[0] (\"d\").dns_names[1]: \"*.com\" is not a valid DNS name pattern: a \
             wildcard needs at least two labels after \"*.\""
        );
    }

    #[test]
    fn serde_refuses_unknown_fields() {
        let top = serde_json::json!({ "version": "v1", "rules": [], "default": "allow" });
        let err = serde_json::from_value::<PolicyDocument>(top).unwrap_err();
        assert!(err.to_string().contains("unknown field `default`"), "{err}");

        let in_rule = serde_json::json!({
            "version": "v1",
            "rules": [{ "name": "a", "nodes": [], "allow": [], "max_ttl": 60 }],
        });
        let err = serde_json::from_value::<PolicyDocument>(in_rule).unwrap_err();
        assert!(err.to_string().contains("unknown field `max_ttl`"), "{err}");
    }

    #[test]
    fn serde_fills_defaults_and_requires_the_rest() {
        let minimal = serde_json::json!({
            "version": "v1",
            "rules": [{ "name": "a", "nodes": ["spiffe://prod.example/n"], "allow": ["spiffe://prod.example/w"] }],
        });
        let parsed: PolicyDocument = serde_json::from_value(minimal).unwrap();
        let r = &parsed.rules[0];
        assert!(!r.require_join_token && !r.server_auth);
        assert_eq!((r.max_ttl_seconds, &r.key_types), (None, &None));
        assert!(r.dns_names.is_empty());

        let no_rules: PolicyDocument =
            serde_json::from_value(serde_json::json!({ "version": "v1" })).unwrap();
        assert!(no_rules.rules.is_empty());

        let missing_allow = serde_json::json!({
            "version": "v1",
            "rules": [{ "name": "a", "nodes": ["spiffe://prod.example/n"] }],
        });
        assert!(serde_json::from_value::<PolicyDocument>(missing_allow).is_err());
    }

    #[test]
    fn dev_policy_is_valid_and_round_trips() {
        let doc = dev_policy(&td());
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(serde_json::from_value::<PolicyDocument>(json).unwrap(), doc);
        let policy = Policy::from_document(doc, &td()).unwrap();
        assert_eq!(policy.version(), "dev-1");
        assert_eq!(policy.rule_count(), 2);
    }
}
