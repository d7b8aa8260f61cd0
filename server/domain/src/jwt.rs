//! Kubernetes projected service-account tokens (DESIGN §3, the `jwt` attestor): a JWS in compact
//! form, signed RS256 or ES256 by a key of the configured JWKS, from the configured issuer, for
//! one of the configured audiences, and fresh on the injected clock. Its claims name a
//! namespace, a service account and usually a pod; [`IdentityTemplate`] maps them to the one
//! SPIFFE ID the token lets a node enroll.
//!
//! Verified here with `ring` directly rather than through `jsonwebtoken`: that crate's 10.x and
//! later need a crypto backend installed process-wide (ring is no longer one of them), and its
//! time checks read the wall clock, which the domain never does. What a service-account token
//! needs is small: two algorithms, a JWKS, and claims checked on [`crate::ports::Clock`] time.
//! No `alg` but RS256 and ES256 is accepted (so `none` and HMAC never are), a key verifies only
//! tokens of its own algorithm, and header fields that point at other keys (`jwk`, `jku`,
//! `x5u`, `x5c`) are ignored: only the configured key set counts. This module does no I/O.

mod jwks;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use time::OffsetDateTime;

use jwks::Lookup;
pub use jwks::{Alg, JwkSet, JwksError, MAX_JWKS_BYTES, MAX_KEYS};

use crate::{SpiffeId, SpiffeIdError, TrustDomain};

/// Most bytes a token may have (a Kubernetes token has about a thousand).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How far clocks may disagree unless configured.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The oldest token (by `iat`) accepted unless configured: Kubernetes refreshes projected
/// tokens at 80% of their lifetime, an hour by default.
pub const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);
/// The identity a token maps to unless configured (`{td}` is the server's trust domain).
pub const DEFAULT_SPIFFE_ID_TEMPLATE: &str = "spiffe://{td}/ns/{namespace}/sa/{serviceaccount}";

/// Why a token was refused. Each has its own stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the service-account token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the service-account token's alg is refused: only RS256 and ES256 are accepted")]
    AlgRefused,
    #[error("no key of the configured key set has the token's kid")]
    KeyUnknown,
    #[error("the key the token names is not a key for its alg")]
    KeyMismatch,
    #[error("the service-account token's signature does not verify")]
    SignatureInvalid,
    #[error("the service-account token is from another issuer")]
    IssuerMismatch,
    #[error("the service-account token is not for this server's audience")]
    AudienceMismatch,
    #[error("the service-account token has expired")]
    Expired,
    #[error("the service-account token is not valid yet")]
    NotYetValid,
    #[error("the service-account token was issued longer ago than the server accepts")]
    TooOld,
    #[error("the service-account token's claims do not name a service account: {0}")]
    ClaimsInvalid(&'static str),
    #[error("the service-account token maps to {mapped}, not the SPIFFE ID asked for")]
    WrongIdentity { mapped: String },
    #[error("this server does not accept service-account tokens")]
    NotConfigured,
}

impl JwtError {
    /// The stable reason code sent in `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "JWT_MALFORMED",
            Self::AlgRefused => "JWT_ALG_REFUSED",
            Self::KeyUnknown => "JWT_KEY_UNKNOWN",
            Self::KeyMismatch => "JWT_KEY_MISMATCH",
            Self::SignatureInvalid => "JWT_SIGNATURE_INVALID",
            Self::IssuerMismatch => "JWT_ISSUER_MISMATCH",
            Self::AudienceMismatch => "JWT_AUDIENCE_MISMATCH",
            Self::Expired => "JWT_EXPIRED",
            Self::NotYetValid => "JWT_NOT_YET_VALID",
            Self::TooOld => "JWT_TOO_OLD",
            Self::ClaimsInvalid(_) => "JWT_CLAIMS_INVALID",
            Self::WrongIdentity { .. } => "JWT_WRONG_IDENTITY",
            Self::NotConfigured => "JWT_NOT_CONFIGURED",
        }
    }
}

/// What a token must satisfy, from `[attestation.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules {
    /// `iss` must equal this.
    pub issuer: String,
    /// `aud` must contain one of these (at least one is configured).
    pub audiences: Vec<String>,
    /// Tolerance for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// `iat` must be at most this long ago.
    pub max_token_age: Duration,
    /// The SPIFFE ID the claims map to.
    pub spiffe_id: IdentityTemplate,
}

/// The service account a verified token names: attested facts the policy sees as
/// `context.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    /// The pod the token was projected into (absent for a token made by TokenRequest alone).
    pub pod: Option<String>,
}

/// A token that verified, and the SPIFFE ID it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub account: ServiceAccount,
    pub spiffe_id: SpiffeId,
}

/// A SPIFFE ID with `{namespace}` and `{serviceaccount}` placeholders, such as
/// `spiffe://prod.example/ns/{namespace}/sa/{serviceaccount}`; `{td}` is replaced by the trust
/// domain when it is parsed. Valid by construction: it makes a SPIFFE ID of the trust domain for
/// any valid Kubernetes names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityTemplate {
    text: String,
    trust_domain: TrustDomain,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {0:?} (use {{namespace}}, {{serviceaccount}} or {{td}})")]
    UnknownPlaceholder(String),
    #[error("does not make a SPIFFE ID: {0}")]
    NotSpiffeId(#[source] SpiffeIdError),
}

impl IdentityTemplate {
    pub fn parse(text: &str, trust_domain: &TrustDomain) -> Result<Self, TemplateError> {
        let text = text.replace("{td}", trust_domain.as_str());
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
            let placeholder = &rest[open..close];
            if !matches!(placeholder, "{namespace}" | "{serviceaccount}") {
                return Err(TemplateError::UnknownPlaceholder(placeholder.to_owned()));
            }
            rest = &rest[close..];
        }
        let template = Self {
            text,
            trust_domain: trust_domain.clone(),
        };
        template
            .fill("default", "default")
            .map_err(TemplateError::NotSpiffeId)?;
        Ok(template)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn fill(&self, namespace: &str, account: &str) -> Result<SpiffeId, SpiffeIdError> {
        let id = self
            .text
            .replace("{namespace}", namespace)
            .replace("{serviceaccount}", account);
        SpiffeId::parse_in(&id, &self.trust_domain)
    }
}

/// Verifies `token` against `keys` and `rules` at `now`: its form, algorithm and signature
/// first, then (only once signed) its issuer, audience, times and service-account claims.
pub fn verify(
    token: &str,
    keys: &JwkSet,
    rules: &JwtRules,
    now: OffsetDateTime,
) -> Result<VerifiedToken, JwtError> {
    let claims = verify_signature(token, keys)?;
    check_claims(&claims, rules, now)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    iat: Option<serde_json::Number>,
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(JwtError::Malformed(
            "not a compact JWS (header.payload.signature)",
        )),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("a part is not the JSON expected"))
}

fn verify_signature(token: &str, keys: &JwkSet) -> Result<Claims, JwtError> {
    let (header_b64, payload_b64, signature_b64) = split(token)?;
    let header: Header = decode_json(header_b64)?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "crit names extensions this server does not know",
        ));
    }
    let alg = Alg::parse(&header.alg).ok_or(JwtError::AlgRefused)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwtError::Malformed("the signature is not base64url"))?;
    let candidates = match keys.lookup(header.kid.as_deref(), alg) {
        Lookup::Keys(keys) => keys,
        Lookup::Unknown => return Err(JwtError::KeyUnknown),
        Lookup::Mismatch => return Err(JwtError::KeyMismatch),
    };
    // The signing input is the token's own text up to the second dot.
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    if !candidates
        .iter()
        .any(|key| key.verify(signed.as_bytes(), &signature))
    {
        return Err(JwtError::SignatureInvalid);
    }
    decode_json(payload_b64)
}

fn check_claims(
    claims: &Claims,
    rules: &JwtRules,
    now: OffsetDateTime,
) -> Result<VerifiedToken, JwtError> {
    if claims.iss.as_deref() != Some(rules.issuer.as_str()) {
        return Err(JwtError::IssuerMismatch);
    }
    let audience_ok = match &claims.aud {
        Some(Audience::One(a)) => rules.audiences.contains(a),
        Some(Audience::Many(all)) => all.iter().any(|a| rules.audiences.contains(a)),
        None => false,
    };
    if !audience_ok {
        return Err(JwtError::AudienceMismatch);
    }
    let now = now.unix_timestamp();
    let skew = i64::try_from(rules.clock_skew.as_secs()).unwrap_or(i64::MAX);
    let max_age = i64::try_from(rules.max_token_age.as_secs()).unwrap_or(i64::MAX);
    let exp = seconds(claims.exp.as_ref()).ok_or(JwtError::Malformed("exp is missing"))?;
    let iat = seconds(claims.iat.as_ref()).ok_or(JwtError::Malformed("iat is missing"))?;
    if now >= exp.saturating_add(skew) {
        return Err(JwtError::Expired);
    }
    let nbf = seconds(claims.nbf.as_ref()).unwrap_or(iat);
    if nbf.max(iat) > now.saturating_add(skew) {
        return Err(JwtError::NotYetValid);
    }
    if now.saturating_sub(iat) > max_age.saturating_add(skew) {
        return Err(JwtError::TooOld);
    }
    let k8s = claims
        .kubernetes
        .as_ref()
        .ok_or(JwtError::ClaimsInvalid("kubernetes.io is missing"))?;
    let namespace =
        k8s.namespace
            .as_deref()
            .filter(|n| is_dns_name(n))
            .ok_or(JwtError::ClaimsInvalid(
                "kubernetes.io.namespace is missing or invalid",
            ))?;
    let name = k8s
        .serviceaccount
        .as_ref()
        .map(|s| s.name.as_str())
        .filter(|n| is_dns_name(n))
        .ok_or(JwtError::ClaimsInvalid(
            "kubernetes.io.serviceaccount.name is missing or invalid",
        ))?;
    let pod = match &k8s.pod {
        Some(p) if is_dns_name(&p.name) => Some(p.name.clone()),
        Some(_) => return Err(JwtError::ClaimsInvalid("kubernetes.io.pod.name is invalid")),
        None => None,
    };
    if claims
        .sub
        .as_deref()
        .is_some_and(|sub| sub != format!("system:serviceaccount:{namespace}:{name}"))
    {
        return Err(JwtError::ClaimsInvalid("sub names another service account"));
    }
    let spiffe_id = rules
        .spiffe_id
        .fill(namespace, name)
        .map_err(|_| JwtError::ClaimsInvalid("the names make no SPIFFE ID"))?;
    Ok(VerifiedToken {
        account: ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod,
        },
        spiffe_id,
    })
}

/// A NumericDate: whole seconds (a fraction is cut).
fn seconds(n: Option<&serde_json::Number>) -> Option<i64> {
    let n = n?;
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e15)
            .map(|f| f.floor() as i64)
    })
}

/// A Kubernetes object name (RFC 1123 subdomain): lower-case letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, at most 253 characters.
fn is_dns_name(name: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    name.len() <= 253
        && edge(name.bytes().next())
        && edge(name.bytes().last())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.contains("..")
}

#[cfg(test)]
mod tests;
