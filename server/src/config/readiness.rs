//! `[readiness]`: how `/readyz` learns whether the database can commit.

use std::time::Duration;

use mintgate_store::ProbeSettings;
use serde::{Deserialize, Serialize};

use super::{ConfigError, positive};

/// `[readiness]`: how `/readyz` learns whether the database can commit. Every key is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessFile {
    /// How often the store is probed (a read, and a committed write unless one succeeded
    /// lately), in ms (default 1000).
    pub probe_interval_ms: Option<u64>,
    /// How long a probe may take before the store counts as unready, in ms (default 800).
    pub probe_timeout_ms: Option<u64>,
}

impl ReadinessFile {
    pub(super) fn probe_settings(&self) -> Result<ProbeSettings, ConfigError> {
        let d = ProbeSettings::default();
        Ok(ProbeSettings {
            interval: positive(self.probe_interval_ms, "readiness.probe_interval_ms")?
                .map_or(d.interval, Duration::from_millis),
            timeout: positive(self.probe_timeout_ms, "readiness.probe_timeout_ms")?
                .map_or(d.timeout, Duration::from_millis),
        })
    }
}
