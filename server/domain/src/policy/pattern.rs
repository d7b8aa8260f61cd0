//! The two pattern languages of a policy rule, parsed once when the policy loads:
//!
//! - [`IdPattern`]: `spiffe://<td>/a/*/c`, where `*` is exactly one path segment and a trailing
//!   `/**` matches one or more further segments. Literal segments match exactly (case-sensitive,
//!   as SPIFFE paths are); a `*` inside a segment (`web-*`) is refused, never a partial match.
//! - [`DnsPattern`]: an exact host name `api.example.com` or `*.example.com`, where `*` stands
//!   for exactly one label. Comparison ignores ASCII case.

use std::fmt;

use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

const SCHEME: &str = "spiffe://";
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// Why a SPIFFE ID pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("it must start with \"spiffe://\"")]
    WrongScheme,
    #[error("its trust domain is not valid: {0}")]
    TrustDomain(#[source] SpiffeIdError),
    #[error("it names trust domain {found}, but this server's trust domain is {expected}")]
    ForeignTrustDomain { found: String, expected: String },
    #[error("it has no path")]
    EmptyPath,
    #[error("it has an empty segment (\"//\" or a trailing \"/\")")]
    EmptySegment,
    #[error("it has a \".\" or \"..\" segment")]
    DotSegment,
    #[error("segment {0:?} mixes \"*\" with other characters; \"*\" must be a whole segment")]
    PartialWildcard(String),
    #[error("\"**\" is only allowed as the last segment")]
    DoubleStarNotLast,
    #[error("segment {0:?} has a character outside [A-Za-z0-9._-]")]
    BadChar(String),
}

/// A SPIFFE ID pattern in one trust domain, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    source: String,
    trust_domain: String,
    segments: Vec<Segment>,
    /// Ends in `/**`: one or more further segments.
    open_tail: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
}

impl IdPattern {
    /// Parses a pattern and requires it to belong to `trust_domain`.
    pub fn parse(s: &str, trust_domain: &TrustDomain) -> Result<Self, PatternError> {
        let rest = s.strip_prefix(SCHEME).ok_or(PatternError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        TrustDomain::parse(td).map_err(PatternError::TrustDomain)?;
        if td != trust_domain.as_str() {
            return Err(PatternError::ForeignTrustDomain {
                found: td.to_owned(),
                expected: trust_domain.to_string(),
            });
        }
        let Some(path) = path.strip_prefix('/') else {
            return Err(PatternError::EmptyPath);
        };
        let raw: Vec<&str> = path.split('/').collect();
        let last = raw.len() - 1;
        let mut segments = Vec::with_capacity(raw.len());
        let mut open_tail = false;
        for (i, segment) in raw.into_iter().enumerate() {
            match segment {
                "**" if i == last => open_tail = true,
                "**" => return Err(PatternError::DoubleStarNotLast),
                "*" => segments.push(Segment::Any),
                _ => segments.push(Segment::Literal(literal_segment(segment)?)),
            }
        }
        Ok(Self {
            source: s.to_owned(),
            trust_domain: td.to_owned(),
            segments,
            open_tail,
        })
    }

    /// True when `id` is in the pattern's trust domain and its path matches segment by segment.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_str() != self.trust_domain {
            return false;
        }
        // A SpiffeId path always starts with "/" and has no empty segment.
        let path = id.path().strip_prefix('/').unwrap_or_default();
        let mut given = path.split('/');
        for want in &self.segments {
            let Some(segment) = given.next() else {
                return false;
            };
            match want {
                Segment::Any => {}
                Segment::Literal(literal) => {
                    if literal != segment {
                        return false;
                    }
                }
            }
        }
        let remaining = given.count();
        if self.open_tail {
            remaining >= 1
        } else {
            remaining == 0
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why a DNS name pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsPatternError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_DNS_NAME_LEN} characters")]
    TooLong,
    #[error("it has an empty label")]
    EmptyLabel,
    #[error(
        "label {0:?} is not 1 to 63 characters of [a-z0-9-] that neither start nor end with \"-\""
    )]
    BadLabel(String),
    #[error("\"*\" is only allowed as the whole first label (\"*.example.com\")")]
    MisplacedWildcard,
    #[error("a wildcard needs at least two labels after \"*.\"")]
    WildcardTooBroad,
}

/// A DNS SAN pattern: an exact name, or `*.` and a suffix where `*` is exactly one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPattern {
    /// `api.example.com`, stored in lower case.
    Exact(String),
    /// `*.example.com`, stored as the lower-case suffix `example.com`.
    OneLabelUnder(String),
}

impl DnsPattern {
    pub fn parse(s: &str) -> Result<Self, DnsPatternError> {
        if s.is_empty() {
            return Err(DnsPatternError::Empty);
        }
        if s.len() > MAX_DNS_NAME_LEN {
            return Err(DnsPatternError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        match lower.strip_prefix("*.") {
            Some(suffix) => {
                check_host_name(suffix)?;
                if suffix.split('.').count() < 2 {
                    return Err(DnsPatternError::WildcardTooBroad);
                }
                Ok(Self::OneLabelUnder(suffix.to_owned()))
            }
            None => {
                check_host_name(&lower)?;
                Ok(Self::Exact(lower))
            }
        }
    }

    /// True when `name` (a requested DNS SAN) is granted by this pattern. A requested wildcard
    /// name is never granted: it does not match `*` as a label.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            Self::Exact(exact) => *exact == name,
            Self::OneLabelUnder(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(is_valid_label),
        }
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::OneLabelUnder(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

fn literal_segment(segment: &str) -> Result<String, PatternError> {
    match segment {
        "" => Err(PatternError::EmptySegment),
        "." | ".." => Err(PatternError::DotSegment),
        _ if segment.contains('*') => Err(PatternError::PartialWildcard(segment.to_owned())),
        _ if segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Ok(segment.to_owned())
        }
        _ => Err(PatternError::BadChar(segment.to_owned())),
    }
}

/// Checks a lower-case host name without wildcards.
fn check_host_name(name: &str) -> Result<(), DnsPatternError> {
    for label in name.split('.') {
        if label.is_empty() {
            return Err(DnsPatternError::EmptyLabel);
        }
        if label.contains('*') {
            return Err(DnsPatternError::MisplacedWildcard);
        }
        if !is_valid_label(label) {
            return Err(DnsPatternError::BadLabel(label.to_owned()));
        }
    }
    Ok(())
}

/// A lower-case LDH label: 1..=63 of `[a-z0-9-]`, not starting or ending with `-`.
fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_DNS_LABEL_LEN
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("prod.example").unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn pattern(s: &str) -> IdPattern {
        IdPattern::parse(s, &td()).unwrap()
    }

    #[test]
    fn literal_patterns_match_exactly() {
        let p = pattern("spiffe://prod.example/ns/web/sa/api");
        assert!(p.matches(&id("spiffe://prod.example/ns/web/sa/api")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/web/sa/api/x")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/web/sa")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/web/sa/API")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/web/sa/api-2")));
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let p = pattern("spiffe://prod.example/ns/*/sa/api");
        assert!(p.matches(&id("spiffe://prod.example/ns/web/sa/api")));
        assert!(p.matches(&id("spiffe://prod.example/ns/db/sa/api")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/a/b/sa/api")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/sa/api")));
        let tail = pattern("spiffe://prod.example/node/*");
        assert!(tail.matches(&id("spiffe://prod.example/node/n1")));
        assert!(!tail.matches(&id("spiffe://prod.example/node")));
        assert!(!tail.matches(&id("spiffe://prod.example/node/n1/x")));
    }

    #[test]
    fn double_star_matches_one_or_more_further_segments() {
        let p = pattern("spiffe://prod.example/workload/**");
        assert!(p.matches(&id("spiffe://prod.example/workload/a")));
        assert!(p.matches(&id("spiffe://prod.example/workload/a/b/c")));
        assert!(!p.matches(&id("spiffe://prod.example/workload")));
        assert!(!p.matches(&id("spiffe://prod.example/workloads/a")));
        assert!(!p.matches(&id("spiffe://prod.example/other/workload/a")));
        let mixed = pattern("spiffe://prod.example/ns/*/sa/**");
        assert!(mixed.matches(&id("spiffe://prod.example/ns/web/sa/api/v1")));
        assert!(!mixed.matches(&id("spiffe://prod.example/ns/web/sa")));
        let everything = pattern("spiffe://prod.example/**");
        assert!(everything.matches(&id("spiffe://prod.example/x")));
    }

    #[test]
    fn segments_never_match_partially() {
        let p = pattern("spiffe://prod.example/web");
        assert!(!p.matches(&id("spiffe://prod.example/web-admin")));
        assert!(!p.matches(&id("spiffe://prod.example/we")));
        assert_eq!(
            IdPattern::parse("spiffe://prod.example/web-*", &td()),
            Err(PatternError::PartialWildcard("web-*".into()))
        );
        assert_eq!(
            IdPattern::parse("spiffe://prod.example/a/**b", &td()),
            Err(PatternError::PartialWildcard("**b".into()))
        );
    }

    #[test]
    fn trust_domain_must_match() {
        let err = IdPattern::parse("spiffe://other.example/a", &td()).unwrap_err();
        assert!(matches!(err, PatternError::ForeignTrustDomain { .. }));
        let p = pattern("spiffe://prod.example/**");
        assert!(!p.matches(&id("spiffe://other.example/a")));
        assert!(!p.matches(&id("spiffe://prod.example.evil/a")));
        assert!(!pattern("spiffe://prod.example/*").matches(&id("spiffe://prod.exampl/a")));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        let cases = [
            ("prod.example/a", PatternError::WrongScheme),
            ("spiffe://prod.example", PatternError::EmptyPath),
            ("spiffe://prod.example/", PatternError::EmptySegment),
            ("spiffe://prod.example/a//b", PatternError::EmptySegment),
            ("spiffe://prod.example/a/", PatternError::EmptySegment),
            ("spiffe://prod.example/a/../b", PatternError::DotSegment),
            (
                "spiffe://prod.example/**/a",
                PatternError::DoubleStarNotLast,
            ),
            (
                "spiffe://prod.example/a/b?c",
                PatternError::BadChar("b?c".into()),
            ),
            (
                "spiffe://prod.example/a%2f",
                PatternError::BadChar("a%2f".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(IdPattern::parse(input, &td()), Err(want), "{input:?}");
        }
        assert!(matches!(
            IdPattern::parse("spiffe://Prod.example/a", &td()),
            Err(PatternError::TrustDomain(_))
        ));
    }

    #[test]
    fn dns_exact_and_one_label_wildcard() {
        let exact = DnsPattern::parse("api.example.com").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.Example.com"));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("example.com"));

        let wild = DnsPattern::parse("*.svc.cluster.local").unwrap();
        assert!(wild.matches("web.svc.cluster.local"));
        assert!(!wild.matches("svc.cluster.local"));
        assert!(!wild.matches("a.b.svc.cluster.local"));
        assert!(!wild.matches("evilsvc.cluster.local"));
        assert!(!wild.matches("*.svc.cluster.local"));
        assert!(!wild.matches(".svc.cluster.local"));
        assert!(!wild.matches("-a.svc.cluster.local"));
        assert_eq!(wild.to_string(), "*.svc.cluster.local");
    }

    #[test]
    fn bad_dns_patterns_are_refused() {
        let cases = [
            ("", DnsPatternError::Empty),
            ("a..b", DnsPatternError::EmptyLabel),
            ("a.b.", DnsPatternError::EmptyLabel),
            ("*.com", DnsPatternError::WildcardTooBroad),
            ("*", DnsPatternError::MisplacedWildcard),
            ("a.*.b", DnsPatternError::MisplacedWildcard),
            ("*.*.b.c", DnsPatternError::MisplacedWildcard),
            ("web*.b.c", DnsPatternError::MisplacedWildcard),
            (
                "under_score.b",
                DnsPatternError::BadLabel("under_score".into()),
            ),
            ("-a.b", DnsPatternError::BadLabel("-a".into())),
        ];
        for (input, want) in cases {
            assert_eq!(DnsPattern::parse(input), Err(want), "{input:?}");
        }
        let long_label = format!("{}.b", "a".repeat(64));
        assert!(matches!(
            DnsPattern::parse(&long_label),
            Err(DnsPatternError::BadLabel(_))
        ));
        let long_name = ["a"; 128].join(".");
        assert_eq!(DnsPattern::parse(&long_name), Err(DnsPatternError::TooLong));
    }
}
