//! SPIFFE identities: [`TrustDomain`] and [`SpiffeId`], valid by construction.
//!
//! The rules follow the SPIFFE ID specification, tightened where the spec leaves room:
//! lower-case trust domains of `[a-z0-9.-_]`, no userinfo, port, query or fragment; path segments of
//! `[A-Za-z0-9._-]` that are neither `.` nor `..`; no empty segment, no trailing `/`, no
//! percent-escapes; at most 2048 bytes in all.

use std::fmt;

/// Longest SPIFFE ID we accept, in bytes (SPIFFE spec: 2048).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error(
        "trust domain has a character outside [a-z0-9.-_] (upper case, userinfo, port, query and fragment are not allowed)"
    )]
    BadTrustDomainChar,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("SPIFFE ID has no path")]
    EmptyPath,
    #[error("SPIFFE ID path has an empty segment (\"//\" or a trailing \"/\")")]
    EmptySegment,
    #[error("SPIFFE ID path has a \".\" or \"..\" segment")]
    DotSegment,
    #[error(
        "SPIFFE ID path has a character outside [A-Za-z0-9._-] (percent-escapes, wildcards and queries are not allowed)"
    )]
    BadPathChar,
    #[error("SPIFFE ID belongs to trust domain {found}, expected {expected}")]
    ForeignTrustDomain { found: String, expected: String },
}

impl SpiffeIdError {
    /// The stable reason code sent to clients.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty | Self::WrongScheme | Self::EmptyPath => "SPIFFE_ID_MALFORMED",
            Self::TooLong => "SPIFFE_ID_TOO_LONG",
            Self::EmptyTrustDomain | Self::BadTrustDomainChar | Self::TrustDomainTooLong => {
                "TRUST_DOMAIN_INVALID"
            }
            Self::EmptySegment | Self::DotSegment | Self::BadPathChar => "SPIFFE_PATH_INVALID",
            Self::ForeignTrustDomain { .. } => "TRUST_DOMAIN_MISMATCH",
        }
    }
}

/// A trust domain such as `prod.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        let ok = s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
        if !ok {
            return Err(SpiffeIdError::BadTrustDomainChar);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID with a non-empty path, e.g. `spiffe://prod.example/ns/web/sa/api`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    /// Byte offset where the path (starting with `/`) begins in `full`.
    path_start: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        TrustDomain::parse(td)?;
        if path.is_empty() {
            return Err(SpiffeIdError::EmptyPath);
        }
        for segment in path[1..].split('/') {
            validate_segment(segment)?;
        }
        Ok(Self {
            full: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// Parses and also requires the ID to belong to `expected`.
    pub fn parse_in(s: &str, expected: &TrustDomain) -> Result<Self, SpiffeIdError> {
        let id = Self::parse(s)?;
        if id.trust_domain_str() != expected.as_str() {
            return Err(SpiffeIdError::ForeignTrustDomain {
                found: id.trust_domain_str().to_owned(),
                expected: expected.to_string(),
            });
        }
        Ok(id)
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.full[SCHEME.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[self.path_start..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        _ if segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Ok(())
        }
        _ => Err(SpiffeIdError::BadPathChar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/web/sa/api-1.v2_x").unwrap();
        assert_eq!(id.trust_domain_str(), "prod.example");
        assert_eq!(id.path(), "/ns/web/sa/api-1.v2_x");
        assert_eq!(id.to_string(), "spiffe://prod.example/ns/web/sa/api-1.v2_x");
    }

    #[test]
    fn refuses_bad_paths_with_their_reason() {
        let cases = [
            ("spiffe://td/a/../b", SpiffeIdError::DotSegment),
            ("spiffe://td/a/./b", SpiffeIdError::DotSegment),
            ("spiffe://td/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://td/a/", SpiffeIdError::EmptySegment),
            ("spiffe://td/a%2Fb", SpiffeIdError::BadPathChar),
            ("spiffe://td/a*", SpiffeIdError::BadPathChar),
            ("spiffe://td/a?x=1", SpiffeIdError::BadPathChar),
            ("spiffe://td/a#f", SpiffeIdError::BadPathChar),
            ("spiffe://td/caf\u{e9}", SpiffeIdError::BadPathChar),
            ("spiffe://td/a\0b", SpiffeIdError::BadPathChar),
            ("spiffe://td", SpiffeIdError::EmptyPath),
            ("spiffe://td/", SpiffeIdError::EmptySegment),
            ("http://td/a", SpiffeIdError::WrongScheme),
            ("", SpiffeIdError::Empty),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn refuses_bad_trust_domains() {
        for input in [
            "spiffe://Prod.example/a",
            "spiffe://user@td/a",
            "spiffe://td:8443/a",
            "spiffe://td?q/a",
            "spiffe://td#f/a",
            "spiffe://*.td/a",
        ] {
            assert_eq!(
                SpiffeId::parse(input).unwrap_err(),
                SpiffeIdError::BadTrustDomainChar,
                "{input:?}"
            );
        }
        assert_eq!(
            SpiffeId::parse("spiffe:///a").unwrap_err(),
            SpiffeIdError::EmptyTrustDomain
        );
    }

    #[test]
    fn refuses_ids_over_2048_bytes() {
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long).unwrap_err(), SpiffeIdError::TooLong);
        let exact = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN - 12));
        assert_eq!(
            SpiffeId::parse(&exact).unwrap().as_str().len(),
            MAX_SPIFFE_ID_LEN
        );
    }

    #[test]
    fn parse_in_checks_the_trust_domain() {
        let td = TrustDomain::parse("prod.example").unwrap();
        assert!(SpiffeId::parse_in("spiffe://prod.example/a", &td).is_ok());
        let err = SpiffeId::parse_in("spiffe://other.example/a", &td).unwrap_err();
        assert_eq!(err.reason(), "TRUST_DOMAIN_MISMATCH");
    }
}
