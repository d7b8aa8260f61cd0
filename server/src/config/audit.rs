//! `[audit]`: the audit key that signs checkpoints of the audit chain, and how often it does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mintgate_ca::FileAuditSigner;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive, read};

/// Events after which a checkpoint is written, by default.
pub const DEFAULT_CHECKPOINT_EVERY_EVENTS: u64 = 1000;
/// Seconds after which a checkpoint is written (if any event came since the last), by default.
pub const DEFAULT_CHECKPOINT_EVERY_SECONDS: u64 = 300;

/// `[audit]` in `mintgate.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// PKCS#8 PEM, Ed25519 or ECDSA P-256, mode 0600 or stricter. Unset: no checkpoints.
    pub signing_key: Option<PathBuf>,
    /// A checkpoint after this many events (default 1000).
    pub checkpoint_every_events: Option<u64>,
    /// A checkpoint after this many seconds, if events came since the last (default 300).
    pub checkpoint_every_seconds: Option<u64>,
}

/// Signed checkpoints, read and checked.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Its `Debug` shows the key id only.
    pub signer: Arc<FileAuditSigner>,
    pub every_events: u64,
    pub every: Duration,
}

impl AuditSettings {
    /// `signer` with the default intervals.
    pub fn with_defaults(signer: FileAuditSigner) -> Self {
        Self {
            signer: Arc::new(signer),
            every_events: DEFAULT_CHECKPOINT_EVERY_EVENTS,
            every: Duration::from_secs(DEFAULT_CHECKPOINT_EVERY_SECONDS),
        }
    }

    /// The `--dev` audit key, derived from the dev join-token secret (see
    /// [`FileAuditSigner::dev_pem`]).
    pub fn dev(join_token_secret: &[u8; 32]) -> Result<Self, ConfigError> {
        let signer = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(join_token_secret))
            .map_err(|e| invalid("audit.signing_key", e))?;
        Ok(Self::with_defaults(signer))
    }
}

impl AuditFile {
    /// The settings, or none when no signing key is configured.
    pub(super) fn settings(&self) -> Result<Option<AuditSettings>, ConfigError> {
        let every_events = positive(
            self.checkpoint_every_events,
            "audit.checkpoint_every_events",
        )?
        .unwrap_or(DEFAULT_CHECKPOINT_EVERY_EVENTS);
        let every = positive(
            self.checkpoint_every_seconds,
            "audit.checkpoint_every_seconds",
        )?
        .unwrap_or(DEFAULT_CHECKPOINT_EVERY_SECONDS);
        let Some(path) = &self.signing_key else {
            return Ok(None);
        };
        private_to_owner(path)?;
        let signer = FileAuditSigner::from_pem(&read(path, "audit.signing_key")?)
            .map_err(|e| invalid("audit.signing_key", format!("{}: {e}", path.display())))?;
        Ok(Some(AuditSettings {
            signer: Arc::new(signer),
            every_events,
            every: Duration::from_secs(every),
        }))
    }
}

/// Refuses a key file that group or others may read or write.
#[cfg(unix)]
fn private_to_owner(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        field: "audit.signing_key",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(
            "audit.signing_key",
            format!(
                "{} has mode {mode:o}: group and others must have no access (chmod 600)",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_to_owner(_path: &Path) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_file_must_be_private_and_a_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        std::fs::write(&path, FileAuditSigner::dev_pem(&[1; 32])).unwrap();
        let file = AuditFile {
            signing_key: Some(path.clone()),
            ..AuditFile::default()
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = file.settings().unwrap_err().to_string();
        assert!(
            err.contains("audit.signing_key") && err.contains("mode 640"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let settings = file.settings().unwrap().unwrap();
        assert_eq!(settings.every_events, 1000);
        assert_eq!(settings.every, Duration::from_secs(300));
        assert!(!format!("{settings:?}").contains("PRIVATE KEY"));

        std::fs::write(&path, "not a key").unwrap();
        let err = file.settings().unwrap_err().to_string();
        assert!(err.contains("audit.signing_key"), "{err}");
        assert!(AuditFile::default().settings().unwrap().is_none());
        let zero = AuditFile {
            checkpoint_every_events: Some(0),
            ..AuditFile::default()
        };
        let err = zero.settings().unwrap_err().to_string();
        assert!(err.contains("audit.checkpoint_every_events"), "{err}");
    }
}
