//! Configuration: `mintgate.toml`, overridden by `MINTGATE_*` environment variables and flags
//! (clap reads both), resolved into [`Settings`] — every file read and checked. Unknown keys are
//! refused, and every error names the field it is about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use mintgate_api::{GrpcConfig, HubConfig};
use mintgate_domain::TrustDomain;
use mintgate_domain::policy::{DEFAULT_ENVIRONMENT, PolicySource};
use mintgate_domain::risk::RiskConfig;
use mintgate_domain::service::HoldSettings;
use mintgate_store::ProbeSettings;
use serde::{Deserialize, Serialize};

mod attestation;
mod audit;
mod ca;
mod policy_dir;
mod readiness;
mod replication;
mod risk;

pub use attestation::{AttestationFile, JwksSource, JwtFile, JwtSettings};
pub use audit::{
    AuditFile, AuditSettings, DEFAULT_CHECKPOINT_EVERY_EVENTS, DEFAULT_CHECKPOINT_EVERY_SECONDS,
};
pub use ca::{CaBackend, CaFiles, CaKeySource, CaSettings, Pkcs11File};
pub use policy_dir::load_policy_dir;
pub use readiness::ReadinessFile;
pub use replication::{ReplicationFile, ReplicationSettings};
pub use risk::{HoldsFile, RiskFile};

/// The dev trust domain used by `--dev`.
pub const DEV_TRUST_DOMAIN: &str = "dev.mintgate.local";
/// File descriptors the gRPC port leaves for the rest of the process by default.
pub const DEFAULT_DESCRIPTOR_RESERVE: u64 = 128;
/// Where `--dev` keeps its PKI.
pub const DEV_CERTS_DIR: &str = "certs-dev";
/// The database `--dev` uses.
pub const DEV_DATABASE_URL: &str = "sqlite://mintgate.db?mode=rwc";
/// The `environment` of `--dev`.
pub const DEV_ENVIRONMENT: &str = "dev";

/// A configuration problem. The process exits 64 with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("config: {field}: cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

/// The file format of `mintgate.toml`. See `mintgate.example.toml` for every key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub database_url: Option<String>,
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// A directory with `schema.cedarschema` and `*.cedar` files.
    pub policy_dir: Option<PathBuf>,
    /// The `environment` every policy decision sees in its context (default "production").
    pub environment: Option<String>,
    pub join_token_secret_file: Option<PathBuf>,
    pub crl_url: Option<String>,
    #[serde(default)]
    pub tls: TlsFiles,
    #[serde(default)]
    pub ca: CaFiles,
    #[serde(default)]
    pub trust: TrustFiles,
    #[serde(default)]
    pub revocation: RevocationFile,
    #[serde(default)]
    pub grpc: GrpcFile,
    #[serde(default)]
    pub telemetry: TelemetryFile,
    #[serde(default)]
    pub readiness: ReadinessFile,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub risk: RiskFile,
    #[serde(default)]
    pub holds: HoldsFile,
    #[serde(default)]
    pub replication: ReplicationFile,
    #[serde(default)]
    pub attestation: AttestationFile,
    /// Operator SPIFFE ID → roles: the first role bindings, taken only by the first server
    /// that starts on an empty database (with the policy directory). After that, roles change
    /// only through two-person proposals (Admin/ProposeRoleBinding).
    #[serde(default)]
    pub operators: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFiles {
    #[serde(default)]
    pub bootstrap_cas: Vec<PathBuf>,
    #[serde(default)]
    pub operator_cas: Vec<PathBuf>,
}

/// `[revocation]`: the registry's feed. Every key is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationFile {
    /// Seconds between heartbeats on an idle WatchRevocations stream (default 5).
    pub heartbeat_seconds: Option<u64>,
    /// Revocations one subscriber may fall behind the newest before it is closed as too slow
    /// (default 256).
    pub subscriber_buffer: Option<usize>,
    /// Concurrent WatchRevocations streams per identity (default 4).
    pub max_streams_per_identity: Option<usize>,
    /// How often the log is read for revocations made by other replicas, in ms (default 1000).
    pub poll_interval_ms: Option<u64>,
}

/// `[grpc]`: how the gRPC port bounds its connections and calls. Every key is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcFile {
    /// A call unanswered after this many ms ends DEADLINE_EXCEEDED / SERVER_TIMEOUT (30000).
    pub call_timeout_ms: Option<u64>,
    /// How long a new connection has to finish its TLS handshake, in ms (10000).
    pub handshake_timeout_ms: Option<u64>,
    /// The same under pressure (1000); at most `handshake_timeout_ms`.
    pub pressure_handshake_timeout_ms: Option<u64>,
    /// Handshakes in progress from which the server is under pressure (128), or half of
    /// the connection limit if that is lower.
    pub pressure_handshakes: Option<usize>,
    /// Handshakes in progress from one IPv4 address or IPv6 /64 (64).
    pub max_handshakes_per_source: Option<usize>,
    /// Handshakes in progress in all (1024).
    pub max_handshakes: Option<usize>,
    /// Connections open in all (default: the open-file limit minus `descriptor_reserve`).
    pub max_connections: Option<usize>,
    /// Enroll and Renew calls in progress in all, beyond which they are shed (512).
    pub max_issuances_in_flight: Option<usize>,
    /// ... and per caller (128).
    pub max_issuances_per_caller: Option<usize>,
    /// File descriptors kept back from the gRPC port for the HTTP port, the database and
    /// the rest of the process (128).
    pub descriptor_reserve: Option<u64>,
}

impl GrpcFile {
    fn config(&self) -> Result<GrpcConfig, ConfigError> {
        let d = GrpcConfig::default();
        let ms = |v: Option<u64>, field, default| {
            positive(v, field).map(|v| v.map_or(default, Duration::from_millis))
        };
        let count =
            |v: Option<usize>, field, default| positive(v, field).map(|v| v.unwrap_or(default));
        let config = GrpcConfig {
            call_timeout: ms(self.call_timeout_ms, "grpc.call_timeout_ms", d.call_timeout)?,
            handshake_timeout: ms(
                self.handshake_timeout_ms,
                "grpc.handshake_timeout_ms",
                d.handshake_timeout,
            )?,
            pressure_handshake_timeout: ms(
                self.pressure_handshake_timeout_ms,
                "grpc.pressure_handshake_timeout_ms",
                d.pressure_handshake_timeout,
            )?,
            pressure_handshakes: count(
                self.pressure_handshakes,
                "grpc.pressure_handshakes",
                d.pressure_handshakes,
            )?,
            max_handshakes_per_source: count(
                self.max_handshakes_per_source,
                "grpc.max_handshakes_per_source",
                d.max_handshakes_per_source,
            )?,
            max_handshakes: count(self.max_handshakes, "grpc.max_handshakes", d.max_handshakes)?,
            max_connections: count(
                self.max_connections,
                "grpc.max_connections",
                d.max_connections,
            )?,
            max_issuances_in_flight: count(
                self.max_issuances_in_flight,
                "grpc.max_issuances_in_flight",
                d.max_issuances_in_flight,
            )?,
            max_issuances_per_caller: count(
                self.max_issuances_per_caller,
                "grpc.max_issuances_per_caller",
                d.max_issuances_per_caller,
            )?,
        };
        if config.pressure_handshake_timeout > config.handshake_timeout {
            return Err(invalid(
                "grpc.pressure_handshake_timeout_ms",
                "must not exceed grpc.handshake_timeout_ms",
            ));
        }
        Ok(config)
    }

    fn descriptor_reserve(&self) -> Result<u64, ConfigError> {
        Ok(
            positive(self.descriptor_reserve, "grpc.descriptor_reserve")?
                .unwrap_or(DEFAULT_DESCRIPTOR_RESERVE),
        )
    }
}

/// `[telemetry]`: optional trace export. Metrics are always on `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// OTLP/gRPC collector for spans, `http://host:4317`; unset (the default) exports nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryFile {
    /// The endpoint, if set and usable. Plain `http://` only: the hop is meant to be a
    /// collector on the same host or pod, which handles onward TLS.
    fn otlp_endpoint(&self) -> Result<Option<String>, ConfigError> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let field = "telemetry.otlp_endpoint";
        let uri: axum::http::Uri = endpoint
            .parse()
            .map_err(|e| invalid(field, format!("{endpoint:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(invalid(
                field,
                format!("{endpoint:?}: expected http://host:port of a local OTLP/gRPC collector"),
            ));
        }
        Ok(Some(endpoint.clone()))
    }
}

impl RevocationFile {
    fn hub_config(&self) -> Result<HubConfig, ConfigError> {
        let d = HubConfig::default();
        Ok(HubConfig {
            heartbeat: positive(self.heartbeat_seconds, "revocation.heartbeat_seconds")?
                .map_or(d.heartbeat, Duration::from_secs),
            subscriber_buffer: positive(self.subscriber_buffer, "revocation.subscriber_buffer")?
                .unwrap_or(d.subscriber_buffer),
            max_streams_per_identity: positive(
                self.max_streams_per_identity,
                "revocation.max_streams_per_identity",
            )?
            .unwrap_or(d.max_streams_per_identity),
            poll_interval: positive(self.poll_interval_ms, "revocation.poll_interval_ms")?
                .map_or(d.poll_interval, Duration::from_millis),
            ..d
        })
    }
}

/// Overrides from flags and `MINTGATE_*` variables (clap fills these).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetryFile>,
}

/// Everything the application needs, read and checked.
#[derive(Clone)]
pub struct Settings {
    pub trust_domain: TrustDomain,
    pub database_url: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The issuing CA the server starts with, where its key is, and its lifecycle settings.
    pub ca: CaSettings,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub bootstrap_cas_pem: Vec<String>,
    pub operator_cas_pem: Vec<String>,
    pub operator_roles: HashMap<String, Vec<String>>,
    /// The policy directory's text, validated when the application is built.
    pub policy: PolicySource,
    /// Where `policy` came from, as problems with it are reported.
    pub policy_origin: String,
    /// The `environment` in every policy decision's context.
    pub environment: String,
    pub join_token_secret: [u8; 32],
    pub crl_url: Option<String>,
    /// The revocation registry's stream and polling behaviour.
    pub revocation: HubConfig,
    /// How the store's health (what `/readyz` reports) is kept current.
    pub store_probe: ProbeSettings,
    /// The gRPC port's limits on connections, handshakes and calls.
    pub grpc: GrpcConfig,
    /// File descriptors the gRPC port leaves free (see [`crate::Application::build`]).
    pub descriptor_reserve: u64,
    /// Where spans are exported over OTLP/gRPC; none by default.
    pub otlp_endpoint: Option<String>,
    /// Signed audit checkpoints; none without `audit.signing_key`.
    pub audit: Option<AuditSettings>,
    /// The risk assessment's thresholds and weights, and how holds wait (DESIGN §12).
    pub risk: RiskConfig,
    pub holds: HoldSettings,
    pub replication: ReplicationSettings,
    /// The `jwt` attestor (`[attestation.jwt]`); off when `None`.
    pub jwt: Option<JwtSettings>,
    /// Dev material is accepted only when this is set (`--dev`).
    pub dev: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("trust_domain", &self.trust_domain)
            .field("database_url", &redact_url(&self.database_url))
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("grpc", &self.grpc)
            .field("descriptor_reserve", &self.descriptor_reserve)
            .field("policy_origin", &self.policy_origin)
            .field("environment", &self.environment)
            .field("ca", &self.ca)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("audit", &self.audit)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl FileConfig {
    /// Reads `path` alone (no overrides, nothing resolved): for commands that need one table of
    /// it, such as `[ca]` for `mintgate ca`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Read {
                field: "--config",
                path: path.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Figment::new()
            .merge(Toml::file(path))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))
    }
}

impl Settings {
    /// Loads `path` (if given) and applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Read {
                    field: "--config",
                    path: p.to_owned(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            figment = figment.merge(Toml::file(p));
        }
        let file: FileConfig = figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        Self::from_file_config(file)
    }

    fn from_file_config(c: FileConfig) -> Result<Self, ConfigError> {
        let td = required(c.trust_domain, "trust_domain")?;
        let trust_domain = TrustDomain::parse(&td).map_err(|e| invalid("trust_domain", e))?;
        let policy_dir = required(c.policy_dir, "policy_dir")?;
        let policy = load_policy_dir(&policy_dir)?;
        let environment = c
            .environment
            .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_owned());
        if environment.trim().is_empty() {
            return Err(invalid("environment", "must not be empty"));
        }
        let secret_path = required(c.join_token_secret_file, "join_token_secret_file")?;
        let join_token_secret = parse_secret(&read(&secret_path, "join_token_secret_file")?)
            .ok_or_else(|| {
                invalid(
                    "join_token_secret_file",
                    "must hold 32 bytes as 64 hex digits",
                )
            })?;
        let jwt = c.attestation.jwt(&trust_domain)?;
        let read_all = |paths: &[PathBuf], field| -> Result<Vec<String>, ConfigError> {
            paths.iter().map(|p| read(p, field)).collect()
        };
        Ok(Self {
            trust_domain,
            database_url: required(c.database_url, "database_url")?,
            grpc_addr: required(c.grpc_addr, "grpc_addr")?,
            http_addr: required(c.http_addr, "http_addr")?,
            ca: c.ca.settings()?,
            server_cert_pem: read(
                &required(c.tls.server_cert, "tls.server_cert")?,
                "tls.server_cert",
            )?,
            server_key_pem: read(
                &required(c.tls.server_key, "tls.server_key")?,
                "tls.server_key",
            )?,
            bootstrap_cas_pem: read_all(&c.trust.bootstrap_cas, "trust.bootstrap_cas")?,
            operator_cas_pem: read_all(&c.trust.operator_cas, "trust.operator_cas")?,
            operator_roles: c.operators,
            policy,
            policy_origin: policy_dir.display().to_string(),
            environment,
            join_token_secret,
            crl_url: c.crl_url,
            revocation: c.revocation.hub_config()?,
            store_probe: c.readiness.probe_settings()?,
            grpc: c.grpc.config()?,
            descriptor_reserve: c.grpc.descriptor_reserve()?,
            otlp_endpoint: c.telemetry.otlp_endpoint()?,
            audit: c.audit.settings()?,
            risk: c.risk.config()?,
            holds: c.holds.settings()?,
            replication: c.replication.settings()?,
            jwt,
            dev: false,
        })
    }

    /// The `--dev` settings: the dev PKI in `dir`, SQLite in the working directory, the dev
    /// policy, and the default ports unless overridden.
    pub fn dev(dir: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let trust_domain =
            TrustDomain::parse(DEV_TRUST_DOMAIN).map_err(|e| invalid("trust_domain", e))?;
        let file = |name: &str| dir.join(name);
        let (policy, policy_origin) = match &overrides.policy_dir {
            Some(dir) => (load_policy_dir(dir)?, dir.display().to_string()),
            None => (PolicySource::dev(), "the built-in dev policy".to_owned()),
        };
        let join_token_secret =
            parse_secret(&read(&file("join-token.key"), "join_token_secret_file")?).ok_or_else(
                || {
                    invalid(
                        "join_token_secret_file",
                        "must hold 32 bytes as 64 hex digits",
                    )
                },
            )?;
        let audit = AuditSettings::dev(&join_token_secret)?;
        let operator_roles = dev_operators();
        let http_addr = overrides
            .http_addr
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
        // Stamped into every issued certificate; a port picked at bind time is not known yet.
        let crl_url = (http_addr.port() != 0).then(|| format!("http://{http_addr}/crl"));
        Ok(Self {
            database_url: overrides
                .database_url
                .clone()
                .unwrap_or_else(|| DEV_DATABASE_URL.to_owned()),
            grpc_addr: overrides
                .grpc_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
            http_addr,
            ca: CaSettings::dev(&file("ca.pem"), &file("ca.key"))?,
            server_cert_pem: read(&file("server.pem"), "tls.server_cert")?,
            server_key_pem: read(&file("server.key"), "tls.server_key")?,
            bootstrap_cas_pem: vec![read(&file("bootstrap-ca.pem"), "trust.bootstrap_cas")?],
            operator_cas_pem: vec![read(&file("operator-ca.pem"), "trust.operator_cas")?],
            operator_roles,
            policy,
            policy_origin,
            environment: DEV_ENVIRONMENT.to_owned(),
            join_token_secret,
            crl_url,
            revocation: HubConfig::default(),
            store_probe: ProbeSettings::default(),
            grpc: GrpcConfig::default(),
            descriptor_reserve: DEFAULT_DESCRIPTOR_RESERVE,
            otlp_endpoint: overrides
                .telemetry
                .as_ref()
                .map(TelemetryFile::otlp_endpoint)
                .transpose()?
                .flatten(),
            audit: Some(audit),
            risk: RiskConfig::default(),
            holds: HoldSettings::default(),
            replication: ReplicationSettings::default(),
            jwt: None,
            trust_domain,
            dev: true,
        })
    }
}

/// The dev operators and their roles: `admin` (break-glass), `alice` who proposes and `bob`
/// who approves, so that the two-person rule can be tried with the dev certificates.
pub fn dev_operators() -> HashMap<String, Vec<String>> {
    let id = |name: &str| format!("spiffe://{DEV_TRUST_DOMAIN}/operator/{name}");
    let roles = |roles: &[&str]| roles.iter().map(|r| (*r).to_owned()).collect();
    HashMap::from([
        (id("admin"), roles(&["admin"])),
        (
            id("alice"),
            roles(&["policy-author", "issuer", "revoker", "ca-custodian"]),
        ),
        (
            id("bob"),
            roles(&[
                "policy-approver",
                "approver",
                "revoker",
                "auditor",
                "ca-custodian",
            ]),
        ),
    ])
}

fn parse_secret(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

fn read(path: &Path, field: &'static str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| invalid(field, "is required"))
}

/// `value` unless it is zero.
fn positive<T: Default + PartialEq>(
    value: Option<T>,
    field: &str,
) -> Result<Option<T>, ConfigError> {
    match value {
        Some(v) if v == T::default() => Err(invalid(field, "must be positive")),
        v => Ok(v),
    }
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests;
