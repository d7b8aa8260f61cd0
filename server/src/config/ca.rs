//! `[ca]`: the issuing CA's certificate and where its key lives: a PKCS#8 file (`backend =
//! "file"`, the default; mode 0600 or stricter) or a PKCS#11 token (`backend = "pkcs11"`, with
//! `[ca.pkcs11]`: module, token label, key label, and the PIN from a file or an environment
//! variable, never from the command line). Nothing here opens the token: the application does,
//! when it builds the CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mintgate_ca::{CaError, Pin, Pkcs11Config};
use mintgate_domain::authority::DEFAULT_PUBLISH;
use mintgate_domain::lifetime::DEFAULT_MIN_LIFETIME;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive, read, required};

/// `[ca]` in `mintgate.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    /// Where the key lives (default `file`).
    pub backend: Option<CaBackend>,
    pub cert: Option<PathBuf>,
    /// The PKCS#8 PEM key (`backend = "file"` only).
    pub key: Option<PathBuf>,
    /// Nothing is issued, `/readyz` fails and the server does not start while the CA's notAfter
    /// is less than this many seconds away (default 300).
    pub min_lifetime_seconds: Option<u64>,
    /// The token (`backend = "pkcs11"` only).
    pub pkcs11: Option<Pkcs11File>,
    /// A prepared CA may be activated once the trust bundle holding it has been published this
    /// many seconds (default 86400: a day for every relying party to fetch it).
    pub publish_seconds: Option<u64>,
}

/// `[ca]`, read and checked.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// The issuing CA certificate and the chain above it, PEM.
    pub cert_pem: String,
    pub key: CaKeySource,
    /// How the CA registry names where the key is: the key file's path, or the token's key
    /// label. A CA prepared later is named the same way (`ProposeCaRequest.key`).
    pub key_ref: String,
    /// Nothing is issued while the CA's notAfter is less than this away.
    pub min_lifetime: Duration,
    /// How long a prepared CA is published before it may be activated.
    pub publish: Duration,
}

impl CaSettings {
    /// The dev PKI's CA, from files. A prepared CA may be activated after a minute (a day
    /// outside --dev).
    pub fn dev(cert: &Path, key: &Path) -> Result<Self, ConfigError> {
        Ok(Self {
            cert_pem: read(cert, "ca.cert")?,
            key: CaKeySource::File(read_key_file(key)?),
            key_ref: key.display().to_string(),
            min_lifetime: DEFAULT_MIN_LIFETIME,
            publish: Duration::from_secs(60),
        })
    }
}

/// `[ca] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaBackend {
    File,
    Pkcs11,
}

/// `[ca.pkcs11]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11File {
    /// The PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: Option<PathBuf>,
    pub token_label: Option<String>,
    pub key_label: Option<String>,
    /// A file holding the user PIN (mode 0600 or stricter), or ...
    pub pin_file: Option<PathBuf>,
    /// ... the name of an environment variable holding it.
    pub pin_env: Option<String>,
    /// Sessions kept open for signing in parallel (default 4).
    pub sessions: Option<usize>,
}

/// Where the issuing CA's key is, read and checked (the key itself is loaded when the
/// application builds the CA). `Debug` prints neither the key nor the PIN.
#[derive(Clone)]
pub enum CaKeySource {
    /// PKCS#8 PEM, from a file private to its owner.
    File(String),
    Pkcs11(Pkcs11Config),
}

impl std::fmt::Debug for CaKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(_) => f.write_str("File([redacted])"),
            Self::Pkcs11(config) => f.debug_tuple("Pkcs11").field(config).finish(),
        }
    }
}

impl CaFiles {
    /// The whole section, read and checked.
    pub fn settings(&self) -> Result<CaSettings, ConfigError> {
        let key = self.key_source()?;
        let key_ref = match &key {
            CaKeySource::File(_) => required(self.key.clone(), "ca.key")?.display().to_string(),
            CaKeySource::Pkcs11(config) => config.key_label.clone(),
        };
        let publish = match self.publish_seconds {
            None => DEFAULT_PUBLISH,
            Some(s) => Duration::from_secs(s),
        };
        Ok(CaSettings {
            cert_pem: read(&required(self.cert.clone(), "ca.cert")?, "ca.cert")?,
            key,
            key_ref,
            min_lifetime: self.min_lifetime()?,
            publish,
        })
    }

    /// `min_lifetime_seconds`, or the default.
    pub fn min_lifetime(&self) -> Result<Duration, ConfigError> {
        match self.min_lifetime_seconds {
            None => Ok(DEFAULT_MIN_LIFETIME),
            Some(0) => Err(invalid("ca.min_lifetime_seconds", "must be positive")),
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }

    /// The key's backend and location, with the PIN read when the key is in a token.
    pub fn key_source(&self) -> Result<CaKeySource, ConfigError> {
        match self.backend.unwrap_or(CaBackend::File) {
            CaBackend::File => {
                if self.pkcs11.is_some() {
                    return Err(invalid(
                        "ca.pkcs11",
                        "is set but ca.backend is \"file\" (set backend = \"pkcs11\")",
                    ));
                }
                let path = required(self.key.clone(), "ca.key")?;
                read_key_file(&path).map(CaKeySource::File)
            }
            CaBackend::Pkcs11 => {
                if self.key.is_some() {
                    return Err(invalid(
                        "ca.key",
                        "is a key file, but ca.backend is \"pkcs11\": the key is in the token",
                    ));
                }
                let file = self
                    .pkcs11
                    .as_ref()
                    .ok_or_else(|| invalid("ca.pkcs11", "is required with backend = \"pkcs11\""))?;
                file.config().map(CaKeySource::Pkcs11)
            }
        }
    }
}

impl Pkcs11File {
    fn config(&self) -> Result<Pkcs11Config, ConfigError> {
        let module = required(self.module.clone(), "ca.pkcs11.module")?;
        let token_label = required(self.token_label.clone(), "ca.pkcs11.token_label")?;
        let key_label = required(self.key_label.clone(), "ca.pkcs11.key_label")?;
        // A token label is a 32-byte blank-padded field (CK_TOKEN_INFO).
        if token_label.is_empty() || token_label.len() > 32 {
            return Err(invalid("ca.pkcs11.token_label", "must be 1 to 32 bytes"));
        }
        if key_label.is_empty() {
            return Err(invalid("ca.pkcs11.key_label", "must not be empty"));
        }
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(path), None) => {
                let field = "ca.pkcs11.pin_file";
                private_to_owner(path, field)?;
                Pin::new(&read(path, field)?)
            }
            (None, Some(var)) => {
                let field = "ca.pkcs11.pin_env";
                let value = std::env::var(var).map_err(|_| {
                    invalid(field, format!("the environment variable {var} is not set"))
                })?;
                Pin::new(&value)
            }
            (None, None) => {
                return Err(invalid(
                    "ca.pkcs11.pin_file",
                    "one of pin_file and pin_env is required (the PIN is never a flag)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "ca.pkcs11.pin_env",
                    "set pin_file or pin_env, not both",
                ));
            }
        };
        let sessions = positive(self.sessions, "ca.pkcs11.sessions")?
            .unwrap_or(mintgate_ca::pkcs11::DEFAULT_SESSIONS);
        Ok(Pkcs11Config {
            module,
            token_label,
            key_label,
            pin,
            sessions,
        })
    }
}

/// The PEM of a key file, refused when group or others may access it.
pub(crate) fn read_key_file(path: &Path) -> Result<String, ConfigError> {
    private_to_owner(path, "ca.key")?;
    read(path, "ca.key")
}

fn private_to_owner(path: &Path, field: &'static str) -> Result<(), ConfigError> {
    match mintgate_ca::check_private_to_owner(path) {
        Ok(()) => Ok(()),
        Err(CaError::Io { source, .. }) => Err(ConfigError::Read {
            field,
            path: path.to_owned(),
            source,
        }),
        Err(e) => Err(invalid(field, e)),
    }
}

#[cfg(test)]
mod tests;
