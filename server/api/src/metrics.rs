//! What the gRPC edge and the revocation hub measure.
//!
//! Nothing here uses the process-wide `metrics` recorder: every server owns its recorder (the
//! server crate builds a Prometheus one per `Application`), so several servers in one process —
//! the end-to-end tests run many — never mix their series, and a library user keeps control of
//! the global one. Series with fixed labels are registered once, as handles bound to that
//! recorder. Series whose labels are known only per call (rpc, reason) go through
//! [`metrics::with_local_recorder`], which points the macros at our recorder for that one
//! synchronous call and cannot leak into other tasks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, NoopRecorder, Recorder, SharedString, Unit, counter,
    describe_counter, describe_gauge, describe_histogram, gauge, histogram, with_local_recorder,
};

/// Every finished Mintgate RPC, by `rpc`, `class` (`ok`, `user`, `system`) and `reason`.
pub const RPC_OUTCOMES: &str = "mintgate_rpc_outcomes_total";
/// Time from a call reaching the service to its response headers, by `rpc`.
pub const RPC_DURATION: &str = "mintgate_rpc_duration_seconds";
/// Time to answer an Enroll or Renew that returned a certificate, by `rpc`.
pub const ISSUANCE_DURATION: &str = "mintgate_issuance_duration_seconds";
/// Time from the hub applying a revocation to its event being queued on a subscriber's stream.
pub const PROPAGATION: &str = "mintgate_revocation_propagation_seconds";
/// Open WatchRevocations streams.
pub const SUBSCRIBERS: &str = "mintgate_revocation_subscribers";
/// Subscribers closed with `SUBSCRIBER_TOO_SLOW`.
pub const SLOW_SUBSCRIBERS: &str = "mintgate_revocation_slow_subscribers_total";

/// gRPC connections closed before their TLS handshake, by `reason` (`source_limit`,
/// `handshake_limit`, `connection_limit`; see the `admission` module).
pub const CONNECTIONS_REFUSED: &str = "mintgate_grpc_connections_refused_total";
/// TLS handshakes that did not complete, by `reason` (`certificate_revoked`, `tls`, `timeout`,
/// `pressure_timeout`).
pub const HANDSHAKE_FAILURES: &str = "mintgate_grpc_handshake_failures_total";
/// gRPC connections open: handshaking or authenticated (each holds a file descriptor).
pub const CONNECTIONS: &str = "mintgate_grpc_connections";
/// TLS handshakes in progress on the gRPC port.
pub const HANDSHAKES: &str = "mintgate_grpc_handshakes";
/// `accept` calls on the gRPC port that failed for want of resources (file descriptors).
pub const ACCEPT_ERRORS: &str = "mintgate_grpc_accept_errors_total";

/// The RPCs whose success is an issued certificate.
/// Issuance decisions where a shadowed policy and the active one differ, by each one's verdict.
pub const SHADOW_DISAGREEMENTS: &str = "mintgate_policy_shadow_disagreements_total";
/// Operator actions that only the break-glass `admin` role allowed, by operation.
pub const BREAK_GLASS: &str = "mintgate_break_glass_total";
/// 1 while the configured policy directory differs from the active policy version.
pub const POLICY_DRIFT: &str = "mintgate_policy_drift";
/// Enroll/Renew risk assessments, by tier.
pub const RISK_TIERS: &str = "mintgate_risk_tier_total";
/// Risk signals that fired, by signal.
pub const RISK_SIGNALS: &str = "mintgate_risk_signals_total";
/// Hold changes on this server: held, approved, released, denied, expired.
pub const HOLDS: &str = "mintgate_holds_total";
const ISSUING: [&str; 2] = ["Enroll", "Renew"];

/// Who a call's outcome is on (the `fault` of its `ErrorInfo`, or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// The caller's to fix: bad input, not allowed, wrong state, too many.
    User,
    /// Ours: unavailable, internal, our own deadline.
    System,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::User => "user",
            Self::System => "system",
        }
    }
}

/// The edge's series, recorded into one server's recorder. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: Arc<dyn Recorder + Send + Sync>,
    subscribers: Gauge,
    slow_subscribers: Counter,
    propagation: Histogram,
    connections: Gauge,
    handshakes: Gauge,
    accept_errors: Counter,
}

impl Metrics {
    /// Describes the series to `recorder` and registers those with fixed labels.
    pub fn new(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        let (subscribers, slow_subscribers, propagation) = with_local_recorder(&*recorder, || {
            describe_counter!(
                CONNECTIONS_REFUSED,
                "gRPC connections closed before their TLS handshake because a limit in [grpc] \
                 was reached, by reason (source_limit, handshake_limit, connection_limit)."
            );
            describe_counter!(
                HANDSHAKE_FAILURES,
                "TLS handshakes on the gRPC port that did not complete, by reason \
                 (certificate_revoked, tls, timeout, pressure_timeout)."
            );
            describe_gauge!(
                CONNECTIONS,
                "gRPC connections open (handshaking or authenticated); each holds a file \
                 descriptor."
            );
            describe_gauge!(HANDSHAKES, "TLS handshakes in progress on the gRPC port.");
            describe_counter!(
                ACCEPT_ERRORS,
                "accept() failures on the gRPC port for want of resources (file descriptors)."
            );
            describe_counter!(
                RPC_OUTCOMES,
                "Finished Mintgate RPCs by rpc, fault class (ok, user, system) and reason."
            );
            describe_histogram!(
                RPC_DURATION,
                Unit::Seconds,
                "Time from a call reaching the service to its response (stream set-up for \
                 WatchRevocations)."
            );
            describe_histogram!(
                ISSUANCE_DURATION,
                Unit::Seconds,
                "Time to answer an Enroll or Renew that returned a certificate."
            );
            describe_histogram!(
                PROPAGATION,
                Unit::Seconds,
                "Time from this server applying a committed revocation to queueing its event on \
                 a subscriber's stream, per subscriber."
            );
            describe_gauge!(SUBSCRIBERS, "Open WatchRevocations streams.");
            describe_counter!(
                SHADOW_DISAGREEMENTS,
                "Enroll/Renew decisions where the shadowed policy (Admin/ShadowPolicy) and the \
                 active one differ, by each one's verdict (allow, deny)."
            );
            describe_counter!(
                BREAK_GLASS,
                "Operator RPCs that only the break-glass admin role allowed, by operation."
            );
            describe_gauge!(
                POLICY_DRIFT,
                "1 while the policy directory the server was started with differs from the \
                 active policy version (mintgate policy diff shows how); the server never \
                 replaces the active policy by itself."
            );
            describe_counter!(
                RISK_TIERS,
                "Enroll/Renew risk assessments by tier (low, elevated, high)."
            );
            describe_counter!(
                RISK_SIGNALS,
                "Risk signals that fired in Enroll/Renew assessments, by signal name."
            );
            describe_counter!(
                HOLDS,
                "Held requests by change on this server: held, approved (a vote short of the \
                 quorum), released, denied, expired."
            );
            describe_counter!(
                SLOW_SUBSCRIBERS,
                "Subscribers closed with SUBSCRIBER_TOO_SLOW because their buffer was full."
            );
            (
                gauge!(SUBSCRIBERS),
                counter!(SLOW_SUBSCRIBERS),
                histogram!(PROPAGATION),
            )
        });
        let (connections, handshakes, accept_errors) = with_local_recorder(&*recorder, || {
            (
                gauge!(CONNECTIONS),
                gauge!(HANDSHAKES),
                counter!(ACCEPT_ERRORS),
            )
        });
        Self {
            inner: Arc::new(Inner {
                recorder,
                subscribers,
                slow_subscribers,
                propagation,
                connections,
                handshakes,
                accept_errors,
            }),
        }
    }

    /// Records nothing (a hub or server built without a recorder).
    pub fn disabled() -> Self {
        Self::new(Arc::new(NoopRecorder))
    }

    /// One finished call of `rpc`.
    pub(crate) fn rpc(
        &self,
        rpc: &'static str,
        elapsed: Duration,
        class: Class,
        reason: impl Into<SharedString>,
    ) {
        let seconds = elapsed.as_secs_f64();
        with_local_recorder(&*self.inner.recorder, || {
            histogram!(RPC_DURATION, "rpc" => rpc).record(seconds);
            counter!(
                RPC_OUTCOMES,
                "rpc" => rpc,
                "class" => class.as_str(),
                "reason" => reason.into()
            )
            .increment(1);
            if class == Class::Ok && ISSUING.contains(&rpc) {
                histogram!(ISSUANCE_DURATION, "rpc" => rpc).record(seconds);
            }
        });
    }

    pub(crate) fn subscriber_joined(&self) {
        self.inner.subscribers.increment(1.0);
    }

    pub(crate) fn subscriber_left(&self) {
        self.inner.subscribers.decrement(1.0);
    }

    pub(crate) fn subscriber_too_slow(&self) {
        self.inner.slow_subscribers.increment(1);
    }

    /// A connection closed before its handshake, for `reason`.
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        with_local_recorder(&*self.inner.recorder, || {
            counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
        });
    }

    /// A handshake that did not complete, for `reason`.
    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        with_local_recorder(&*self.inner.recorder, || {
            counter!(HANDSHAKE_FAILURES, "reason" => reason).increment(1);
        });
    }

    pub(crate) fn accept_failed(&self) {
        self.inner.accept_errors.increment(1);
    }

    /// The gRPC port's open connections and handshakes in progress, now.
    pub(crate) fn grpc_connections(&self, open: usize, handshakes: usize) {
        self.inner.connections.set(open as f64);
        self.inner.handshakes.set(handshakes as f64);
    }

    /// A live revocation queued for one subscriber, `lag` after the hub applied it.
    pub(crate) fn propagated(&self, lag: Duration) {
        self.inner.propagation.record(lag.as_secs_f64());
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl mintgate_domain::ports::Observer for Metrics {
    fn shadow_disagreement(&self, d: &mintgate_domain::service::ShadowDisagreement) {
        let verdict = |allowed: bool| if allowed { "allow" } else { "deny" };
        let policies = |v: &mintgate_domain::service::Verdict| {
            v.decision
                .as_ref()
                .map(|d| d.policies_text())
                .unwrap_or_default()
        };
        tracing::warn!(
            spiffe_id = %d.spiffe_id,
            active = verdict(d.active.allowed),
            active_policies = %policies(&d.active),
            active_limits = ?d.active.limits,
            shadow = verdict(d.shadow.allowed),
            shadow_policies = %policies(&d.shadow),
            shadow_limits = ?d.shadow.limits,
            shadow_version = d.shadow.decision.as_ref().map(|d| d.policy_version.as_str()),
            "the shadowed policy decides differently"
        );
        with_local_recorder(&*self.inner.recorder, || {
            counter!(
                SHADOW_DISAGREEMENTS,
                "active" => verdict(d.active.allowed),
                "shadow" => verdict(d.shadow.allowed)
            )
            .increment(1);
        });
    }

    fn break_glass(
        &self,
        operator: &mintgate_domain::SpiffeId,
        operation: mintgate_domain::policy::Operation,
    ) {
        tracing::warn!(
            operator = %operator,
            operation = operation.as_str(),
            "break-glass: allowed only by the admin role"
        );
        with_local_recorder(&*self.inner.recorder, || {
            counter!(BREAK_GLASS, "operation" => operation.as_str()).increment(1);
        });
    }

    fn policy_active(&self, version: &str, drift: bool) {
        if drift {
            tracing::warn!(
                active = version,
                "the configured policy directory differs from the active policy version; it \
                 takes effect only through a proposal (mintgate policy diff shows the \
                 difference)"
            );
        } else {
            tracing::info!(active = version, "active policy version");
        }
        with_local_recorder(&*self.inner.recorder, || {
            gauge!(POLICY_DRIFT).set(if drift { 1.0 } else { 0.0 });
        });
    }

    fn risk_assessed(&self, risk: &mintgate_domain::risk::RiskAssessment) {
        with_local_recorder(&*self.inner.recorder, || {
            counter!(RISK_TIERS, "tier" => risk.tier.as_str()).increment(1);
            for signal in &risk.signals {
                counter!(RISK_SIGNALS, "signal" => signal.as_str()).increment(1);
            }
        });
    }

    fn hold_changed(&self, event: &mintgate_domain::service::HoldEvent) {
        let hold = &event.hold;
        tracing::info!(
            hold_id = %hold.hold_id,
            change = event.change.as_str(),
            requester = %hold.requester,
            spiffe_id = %hold.spiffe_id,
            reason = %hold.terms.reason,
            approvals = hold.approvals(),
            quorum = hold.terms.quorum,
            "hold"
        );
        with_local_recorder(&*self.inner.recorder, || {
            counter!(HOLDS, "change" => event.change.as_str()).increment(1);
        });
    }
}
