//! `[attestation.jwt]`: the `jwt` attestor (DESIGN §3), which verifies Kubernetes projected
//! service-account tokens sent as `EnrollRequest.service_account_token`. Off unless the table is
//! there. The key set comes from a file or an HTTPS URL (`crate::jwks` reads it).

use std::path::PathBuf;
use std::time::Duration;

use mintgate_domain::TrustDomain;
use mintgate_domain::jwt::{
    DEFAULT_CLOCK_SKEW, DEFAULT_MAX_TOKEN_AGE, DEFAULT_SPIFFE_ID_TEMPLATE, IdentityTemplate,
    JwtRules,
};
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive, read, required};

/// How often the key set is read again unless configured.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// The least time between two reads a token with an unknown `kid` may cause, unless configured.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// `[attestation]`: optional attestors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationFile {
    pub jwt: Option<JwtFile>,
}

/// `[attestation.jwt]`. `issuer`, `audiences` and one of `jwks_file` or `jwks_url` are required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// The tokens' `iss`, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: Option<String>,
    /// A token's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// A JWKS document on disk (`kubectl get --raw /openid/v1/jwks`).
    pub jwks_file: Option<PathBuf>,
    /// Or an `https://` URL serving it.
    pub jwks_url: Option<String>,
    /// PEM CA certificates that verify `jwks_url`'s server (required with it).
    pub jwks_ca_file: Option<PathBuf>,
    /// A file holding a bearer token sent to `jwks_url` (read at each fetch).
    pub jwks_bearer_token_file: Option<PathBuf>,
    /// Seconds between reads of the key set (default 300).
    pub jwks_refresh_seconds: Option<u64>,
    /// Least seconds between two reads caused by tokens naming an unknown key (default 30).
    pub jwks_min_refresh_seconds: Option<u64>,
    /// How far `exp`, `nbf` and `iat` may be off, in seconds (default 60).
    pub clock_skew_seconds: Option<u64>,
    /// The oldest `iat` accepted, in seconds before now (default 86400).
    pub max_token_age_seconds: Option<u64>,
    /// The SPIFFE ID a token maps to, and the one a node may then enroll with it (default
    /// `spiffe://{td}/ns/{namespace}/sa/{serviceaccount}`).
    pub spiffe_id: Option<String>,
}

/// The `jwt` attestor's settings, read and checked.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub rules: JwtRules,
    pub jwks: JwksSource,
    pub refresh: Duration,
    pub min_refresh: Duration,
}

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url {
        url: String,
        /// PEM roots for the server's certificate.
        ca_pem: String,
        bearer_token_file: Option<PathBuf>,
    },
}

impl AttestationFile {
    pub(super) fn jwt(&self, td: &TrustDomain) -> Result<Option<JwtSettings>, ConfigError> {
        self.jwt.as_ref().map(|jwt| jwt.settings(td)).transpose()
    }
}

impl JwtFile {
    fn settings(&self, td: &TrustDomain) -> Result<JwtSettings, ConfigError> {
        const T: &str = "attestation.jwt";
        let issuer = required(self.issuer.clone(), "attestation.jwt.issuer")?;
        if issuer.trim().is_empty() {
            return Err(invalid("attestation.jwt.issuer", "must not be empty"));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(invalid(
                "attestation.jwt.audiences",
                "needs at least one audience, none empty",
            ));
        }
        let jwks = match (&self.jwks_file, &self.jwks_url) {
            (Some(path), None) => JwksSource::File(path.clone()),
            (None, Some(url)) => {
                let field = "attestation.jwt.jwks_url";
                let uri: axum::http::Uri = url.parse().map_err(|e| invalid(field, e))?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    return Err(invalid(
                        field,
                        format!("{url:?}: only https://host/... URLs"),
                    ));
                }
                let ca = required(self.jwks_ca_file.clone(), "attestation.jwt.jwks_ca_file")?;
                JwksSource::Url {
                    url: url.clone(),
                    ca_pem: read(&ca, "attestation.jwt.jwks_ca_file")?,
                    bearer_token_file: self.jwks_bearer_token_file.clone(),
                }
            }
            _ => return Err(invalid(T, "set exactly one of jwks_file and jwks_url")),
        };
        let seconds =
            |v, field, default| positive(v, field).map(|v| v.map_or(default, Duration::from_secs));
        let template = self
            .spiffe_id
            .as_deref()
            .unwrap_or(DEFAULT_SPIFFE_ID_TEMPLATE);
        Ok(JwtSettings {
            rules: JwtRules {
                issuer,
                audiences: self.audiences.clone(),
                clock_skew: match self.clock_skew_seconds {
                    Some(s) => Duration::from_secs(s),
                    None => DEFAULT_CLOCK_SKEW,
                },
                max_token_age: seconds(
                    self.max_token_age_seconds,
                    "attestation.jwt.max_token_age_seconds",
                    DEFAULT_MAX_TOKEN_AGE,
                )?,
                spiffe_id: IdentityTemplate::parse(template, td)
                    .map_err(|e| invalid("attestation.jwt.spiffe_id", e))?,
            },
            jwks,
            refresh: seconds(
                self.jwks_refresh_seconds,
                "attestation.jwt.jwks_refresh_seconds",
                DEFAULT_JWKS_REFRESH,
            )?,
            min_refresh: seconds(
                self.jwks_min_refresh_seconds,
                "attestation.jwt.jwks_min_refresh_seconds",
                DEFAULT_JWKS_MIN_REFRESH,
            )?,
        })
    }
}
