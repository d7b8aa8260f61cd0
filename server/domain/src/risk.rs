//! Risk assessment (DESIGN §12): a pure function from what the store knows about a caller and an
//! identity ([`RiskFacts`], read through [`crate::store::CertificateStore::risk_facts`]) and
//! the request itself to a score 0–100, a tier and the names of the signals that fired. The
//! assessment goes into the Cedar context (`context.risk`), where the policy maps it to allow,
//! hold or deny, and into the request record, the audit event and the metrics.
//!
//! Each signal that fires adds its weight to the score (capped at 100); the tier follows from the
//! score and two thresholds. Every threshold and weight comes from [`RiskConfig`], whose defaults
//! leave a steady mesh at `low` and need several signals, or a spike, to reach `elevated`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::KeyType;

/// One thing that can look wrong about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// This node's requests in the last minute are a spike against its own baseline.
    NodeRateSpike1m,
    /// The same over the last hour.
    NodeRateSpike1h,
    /// Requests for this identity in the last minute are a spike against its baseline.
    IdentityRateSpike1m,
    /// The same over the last hour.
    IdentityRateSpike1h,
    /// No certificate was ever issued for this SPIFFE ID.
    FirstIssuance,
    /// This node never obtained this identity before.
    FirstFromNode,
    /// This node asked for many distinct identities in the last hour.
    ManyIdentities,
    /// The lifetime asked for is far longer than this identity was ever given.
    UnusualTtl,
    /// This identity never used this key type.
    UnusualKeyType,
    /// The node's own certificate is older than the configured maximum.
    NodeCertOld,
}

impl Signal {
    pub const ALL: [Self; 10] = [
        Self::NodeRateSpike1m,
        Self::NodeRateSpike1h,
        Self::IdentityRateSpike1m,
        Self::IdentityRateSpike1h,
        Self::FirstIssuance,
        Self::FirstFromNode,
        Self::ManyIdentities,
        Self::UnusualTtl,
        Self::UnusualKeyType,
        Self::NodeCertOld,
    ];

    /// The name policies, records, audit events and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeRateSpike1m => "node_rate_spike_1m",
            Self::NodeRateSpike1h => "node_rate_spike_1h",
            Self::IdentityRateSpike1m => "identity_rate_spike_1m",
            Self::IdentityRateSpike1h => "identity_rate_spike_1h",
            Self::FirstIssuance => "first_issuance",
            Self::FirstFromNode => "first_from_node",
            Self::ManyIdentities => "many_identities",
            Self::UnusualTtl => "unusual_ttl",
            Self::UnusualKeyType => "unusual_key_type",
            Self::NodeCertOld => "node_cert_old",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|signal| signal.as_str() == s)
    }

    /// What the signal adds to the score unless configured otherwise.
    pub fn default_weight(self) -> u8 {
        match self {
            Self::NodeRateSpike1m | Self::IdentityRateSpike1m | Self::ManyIdentities => 40,
            Self::NodeRateSpike1h | Self::IdentityRateSpike1h => 30,
            Self::UnusualTtl | Self::UnusualKeyType => 20,
            Self::FirstIssuance | Self::FirstFromNode | Self::NodeCertOld => 10,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a score falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RiskTier {
    Low,
    Elevated,
    High,
}

impl RiskTier {
    pub const ALL: [Self; 3] = [Self::Low, Self::Elevated, Self::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Elevated => "elevated",
            Self::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tier| tier.as_str() == s)
    }
}

impl fmt::Display for RiskTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many requests a caller or an identity made, by window. None of them counts the request
/// being assessed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// In the last minute.
    pub last_minute: u64,
    /// In the last hour.
    pub last_hour: u64,
    /// In the 23 hours before the last hour: the baseline both windows are compared with.
    pub baseline: u64,
}

/// The length of [`Rates::baseline`], in minutes.
const BASELINE_MINUTES: f64 = 23.0 * 60.0;

/// The widths, in seconds, of the buckets the store counts requests in: minutes for the last
/// minute and hour, hours for the baseline.
pub const MINUTE_SPAN: i64 = 60;
pub const HOUR_SPAN: i64 = 3600;
const DAY: i64 = 24 * HOUR_SPAN;

/// Requests counted in one bucket: its start ÷ its span, and how many.
pub type Bucket = (i64, u64);

impl Rates {
    /// The windows at `now` (Unix seconds) from per-minute counts covering at least the last
    /// 61 minutes and per-hour counts covering at least the last 25 hours (older buckets count
    /// in no window). A bucket a window
    /// covers only in part counts in proportion to the part (its requests are taken as spread
    /// evenly over the time it has run so far, the estimate sliding-window rate limiters use),
    /// so a burst inside one minute is counted exactly and a steady rate to within a bucket's
    /// share.
    pub fn from_buckets(now: i64, minutes: &[Bucket], hours: &[Bucket]) -> Self {
        Self {
            last_minute: estimate(minutes, MINUTE_SPAN, now - MINUTE_SPAN, now + 1, now),
            last_hour: estimate(minutes, MINUTE_SPAN, now - HOUR_SPAN, now + 1, now),
            baseline: estimate(hours, HOUR_SPAN, now - DAY, now - HOUR_SPAN, now),
        }
    }
}

/// The requests of `buckets` (of width `span`) in `[from, until)`, none of them after `now`.
fn estimate(buckets: &[Bucket], span: i64, from: i64, until: i64, now: i64) -> u64 {
    let total: f64 = buckets
        .iter()
        .map(|&(bucket, requests)| {
            let start = bucket * span;
            // The current bucket has only run until now.
            let end = (start + span).min(now + 1);
            if end <= start {
                return 0.0;
            }
            let covered = (end.min(until) - start.max(from)).max(0);
            requests as f64 * covered as f64 / (end - start) as f64
        })
        .sum();
    total.round() as u64
}

/// What the store knows about a request's caller and identity, read before it is recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskFacts {
    /// The enrolling node's requests (none for a renewal: its caller is the identity).
    pub node: Option<Rates>,
    /// The requests for the identity asked for.
    pub identity: Rates,
    /// The distinct identities the node asked for in the last hour (with the one asked now),
    /// counted up to the `many_identities` threshold.
    pub node_identities_last_hour: u64,
    /// A certificate was ever issued for the identity.
    pub identity_issued_before: bool,
    /// Policy allowed the node the identity before (in the last 30 days).
    pub node_issued_identity_before: bool,
    /// The key types of the identity's recent certificates (the last [`PROFILE_CERTIFICATES`]
    /// of the last 30 days).
    pub identity_key_types: Vec<String>,
    /// The longest lifetime among the same certificates.
    pub identity_longest_lifetime: Option<Duration>,
    /// An operator blocked the identity. Not a risk: it refuses the request outright, and is
    /// read here so that one read answers everything decided before signing.
    pub identity_blocked: bool,
    /// The request asked about ([`crate::hold::RiskQuery::request_id`]) is recorded already:
    /// this one is a retry of it.
    pub request_recorded: bool,
}

/// How far back [`RiskFacts::identity_key_types`] and the longest lifetime look, and how long
/// a node's identities are remembered.
pub const HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How many of an identity's newest certificates make its profile (key types, lifetimes).
pub const PROFILE_CERTIFICATES: u64 = 64;

/// The thresholds and weights of [`assess`].
#[derive(Debug, Clone, PartialEq)]
pub struct RiskConfig {
    /// A window spikes when it holds this many times its baseline rate …
    pub spike_factor: f64,
    /// … and at least this many requests in a minute …
    pub spike_min_per_minute: u64,
    /// … or in an hour.
    pub spike_min_per_hour: u64,
    /// `many_identities` fires at this many distinct identities from one node in an hour.
    pub many_identities_per_hour: u64,
    /// `unusual_ttl` fires when the lifetime asked for exceeds the identity's longest by this
    /// factor.
    pub unusual_ttl_factor: f64,
    /// `node_cert_old` fires when the node's certificate is older than this.
    pub node_cert_max_age: Duration,
    /// Scores from here on are `elevated` …
    pub elevated_from: u8,
    /// … and from here on `high`.
    pub high_from: u8,
    /// Weights that differ from [`Signal::default_weight`].
    pub weights: BTreeMap<Signal, u8>,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            spike_factor: 10.0,
            spike_min_per_minute: 20,
            spike_min_per_hour: 200,
            many_identities_per_hour: 50,
            unusual_ttl_factor: 4.0,
            node_cert_max_age: Duration::from_secs(30 * 24 * 3600),
            elevated_from: 30,
            high_from: 70,
            weights: BTreeMap::new(),
        }
    }
}

impl RiskConfig {
    pub fn weight(&self, signal: Signal) -> u8 {
        self.weights
            .get(&signal)
            .copied()
            .unwrap_or_else(|| signal.default_weight())
    }

    pub fn tier(&self, score: u8) -> RiskTier {
        if score >= self.high_from {
            RiskTier::High
        } else if score >= self.elevated_from {
            RiskTier::Elevated
        } else {
            RiskTier::Low
        }
    }
}

/// The request being assessed, beside the facts.
#[derive(Debug, Clone, Copy)]
pub struct RiskInput<'a> {
    /// The lifetime asked for, if any.
    pub ttl: Option<Duration>,
    pub key_type: KeyType,
    /// The enrolling node's certificate's notBefore (none for a renewal).
    pub node_cert_not_before: Option<OffsetDateTime>,
    pub now: OffsetDateTime,
    pub facts: &'a RiskFacts,
}

/// What [`assess`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskAssessment {
    /// 0–100.
    pub score: u8,
    pub tier: RiskTier,
    /// The signals that fired, in [`Signal::ALL`] order.
    pub signals: Vec<Signal>,
}

impl RiskAssessment {
    /// No signal: what a request assessed with no history looks like to a policy that ignores
    /// risk.
    pub fn none() -> Self {
        Self {
            score: 0,
            tier: RiskTier::Low,
            signals: Vec::new(),
        }
    }

    /// The signal names, comma-separated (empty when none fired), as stored and sent.
    pub fn signals_text(&self) -> String {
        let names: Vec<&str> = self.signals.iter().map(|s| s.as_str()).collect();
        names.join(",")
    }

    /// Reads back what [`RiskAssessment::signals_text`] wrote; unknown names are skipped (a
    /// newer server may know more signals).
    pub fn parse_signals(text: &str) -> Vec<Signal> {
        text.split(',').filter_map(Signal::parse).collect()
    }
}

impl fmt::Display for RiskAssessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "risk {} ({})", self.score, self.tier)?;
        if !self.signals.is_empty() {
            write!(f, ": {}", self.signals_text())?;
        }
        Ok(())
    }
}

/// Assesses one request. Pure: the same facts give the same answer.
pub fn assess(config: &RiskConfig, input: &RiskInput<'_>) -> RiskAssessment {
    let facts = input.facts;
    let mut fired = Vec::new();
    if let Some(node) = &facts.node {
        let (minute, hour) = spikes(config, node);
        fired.extend(minute.then_some(Signal::NodeRateSpike1m));
        fired.extend(hour.then_some(Signal::NodeRateSpike1h));
    }
    let (minute, hour) = spikes(config, &facts.identity);
    fired.extend(minute.then_some(Signal::IdentityRateSpike1m));
    fired.extend(hour.then_some(Signal::IdentityRateSpike1h));
    if !facts.identity_issued_before {
        fired.push(Signal::FirstIssuance);
    }
    if facts.node.is_some() && !facts.node_issued_identity_before {
        fired.push(Signal::FirstFromNode);
    }
    if facts.node.is_some() && facts.node_identities_last_hour >= config.many_identities_per_hour {
        fired.push(Signal::ManyIdentities);
    }
    if let (Some(asked), Some(longest)) = (input.ttl, facts.identity_longest_lifetime)
        && asked.as_secs_f64() > longest.as_secs_f64() * config.unusual_ttl_factor
    {
        fired.push(Signal::UnusualTtl);
    }
    if !facts.identity_key_types.is_empty()
        && !facts
            .identity_key_types
            .iter()
            .any(|k| k == input.key_type.as_str())
    {
        fired.push(Signal::UnusualKeyType);
    }
    if let Some(not_before) = input.node_cert_not_before
        && input.now - not_before > config.node_cert_max_age
    {
        fired.push(Signal::NodeCertOld);
    }
    fired.sort();
    let total: u32 = fired.iter().map(|s| u32::from(config.weight(*s))).sum();
    let score = u8::try_from(total.min(100)).unwrap_or(100);
    RiskAssessment {
        score,
        tier: config.tier(score),
        signals: fired,
    }
}

/// Whether the last minute and the last hour (each with the request being assessed) are spikes
/// against the baseline.
fn spikes(config: &RiskConfig, rates: &Rates) -> (bool, bool) {
    let per_minute = rates.baseline as f64 / BASELINE_MINUTES;
    let minute = rates.last_minute + 1;
    let hour = rates.last_hour + 1;
    let spike = |count: u64, min: u64, baseline: f64| {
        count >= min && count as f64 >= config.spike_factor * baseline
    };
    (
        spike(minute, config.spike_min_per_minute, per_minute),
        spike(hour, config.spike_min_per_hour, per_minute * 60.0),
    )
}

#[cfg(test)]
mod tests;
