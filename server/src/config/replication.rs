//! `[replication]`: how replicas sharing one PostgreSQL share the jobs that run once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, positive};

/// `[replication]`. Every key is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationFile {
    /// How often a replica tries to take the leader lock, and the leader checks it still holds
    /// it, in ms (default 1000): when the leader dies, another leads within about this long.
    pub leader_check_ms: Option<u64>,
}

/// See [`ReplicationFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationSettings {
    pub leader_check: Duration,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            leader_check: Duration::from_secs(1),
        }
    }
}

impl ReplicationFile {
    pub(super) fn settings(&self) -> Result<ReplicationSettings, ConfigError> {
        let d = ReplicationSettings::default();
        Ok(ReplicationSettings {
            leader_check: positive(self.leader_check_ms, "replication.leader_check_ms")?
                .map_or(d.leader_check, Duration::from_millis),
        })
    }
}
