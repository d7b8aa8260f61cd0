//! `[risk]` and `[holds]` (DESIGN §12): the risk assessment's thresholds and weights, and how
//! long a hold waits for approvers. Every key is optional; the defaults are the domain's.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mintgate_domain::risk::{RiskConfig, Signal};
use mintgate_domain::service::HoldSettings;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};

/// `[risk]` in `mintgate.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskFile {
    /// A window spikes at this many times its caller's or identity's own baseline rate (10).
    pub spike_factor: Option<f64>,
    /// ... and with at least this many requests in the last minute (20) ...
    pub spike_min_per_minute: Option<u64>,
    /// ... or in the last hour (200).
    pub spike_min_per_hour: Option<u64>,
    /// `many_identities` fires at this many distinct identities from one node in an hour (50).
    pub many_identities_per_hour: Option<u64>,
    /// `unusual_ttl` fires above this many times the identity's longest lifetime (4).
    pub unusual_ttl_factor: Option<f64>,
    /// `node_cert_old` fires for a node certificate older than this many days (30).
    pub node_cert_max_age_days: Option<u64>,
    /// Scores from here on are `elevated` (30) ...
    pub elevated_from: Option<u8>,
    /// ... and from here on `high` (70).
    pub high_from: Option<u8>,
    /// Signal name → what it adds to the score (0–100), for the signals whose default
    /// weight does not suit.
    #[serde(default)]
    pub weights: HashMap<String, u8>,
}

/// `[holds]` in `mintgate.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldsFile {
    /// Undecided this many seconds after it was held, a hold expires (3600).
    pub expiry_seconds: Option<u64>,
    /// A held requester is told to ask again after this many seconds (10).
    pub retry_after_seconds: Option<u64>,
}

impl RiskFile {
    pub(super) fn config(&self) -> Result<RiskConfig, ConfigError> {
        let d = RiskConfig::default();
        let factor = |value: Option<f64>, field: &'static str, default: f64| match value {
            None => Ok(default),
            Some(f) if f.is_finite() && f >= 1.0 => Ok(f),
            Some(_) => Err(invalid(field, "must be a number of at least 1")),
        };
        let mut weights = BTreeMap::new();
        for (name, weight) in &self.weights {
            let signal = Signal::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Signal::ALL.iter().map(|s| s.as_str()).collect();
                invalid(
                    "risk.weights",
                    format!("unknown signal {name:?} (known: {})", known.join(", ")),
                )
            })?;
            if *weight > 100 {
                return Err(invalid("risk.weights", "a weight is 0 to 100"));
            }
            weights.insert(signal, *weight);
        }
        let config = RiskConfig {
            spike_factor: factor(self.spike_factor, "risk.spike_factor", d.spike_factor)?,
            spike_min_per_minute: positive(self.spike_min_per_minute, "risk.spike_min_per_minute")?
                .unwrap_or(d.spike_min_per_minute),
            spike_min_per_hour: positive(self.spike_min_per_hour, "risk.spike_min_per_hour")?
                .unwrap_or(d.spike_min_per_hour),
            many_identities_per_hour: positive(
                self.many_identities_per_hour,
                "risk.many_identities_per_hour",
            )?
            .unwrap_or(d.many_identities_per_hour),
            unusual_ttl_factor: factor(
                self.unusual_ttl_factor,
                "risk.unusual_ttl_factor",
                d.unusual_ttl_factor,
            )?,
            node_cert_max_age: positive(
                self.node_cert_max_age_days,
                "risk.node_cert_max_age_days",
            )?
            .map_or(d.node_cert_max_age, |days| {
                Duration::from_secs(days * 24 * 3600)
            }),
            elevated_from: self.elevated_from.unwrap_or(d.elevated_from),
            high_from: self.high_from.unwrap_or(d.high_from),
            weights,
        };
        if !(1..=100).contains(&config.elevated_from)
            || !(config.elevated_from..=100).contains(&config.high_from)
        {
            return Err(invalid(
                "risk.high_from",
                "tiers need 1 <= elevated_from <= high_from <= 100",
            ));
        }
        Ok(config)
    }
}

impl HoldsFile {
    pub(super) fn settings(&self) -> Result<HoldSettings, ConfigError> {
        let d = HoldSettings::default();
        Ok(HoldSettings {
            expiry: positive(self.expiry_seconds, "holds.expiry_seconds")?
                .map_or(d.expiry, Duration::from_secs),
            retry_after: positive(self.retry_after_seconds, "holds.retry_after_seconds")?
                .map_or(d.retry_after, Duration::from_secs),
        })
    }
}
