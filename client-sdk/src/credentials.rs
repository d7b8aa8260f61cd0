//! [`CredentialManager`]: keeps a current certificate and key. The key is generated in this
//! process and never leaves it; the certificate is renewed inside a window of its lifetime
//! (from 50 %, done by 75 %, jittered so a fleet does not renew in step; the server's
//! `renew_after` hint, when given, opens the window); failures back off with full jitter, and a
//! [`CircuitBreaker`] stops hammering a server that keeps failing, probing it half-open.
//! Subscribers receive each new credential through a watch channel.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mintgate_proto::v1;
use rcgen::{CertificateParams, KeyPair, SanType};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Client, CredentialState, Error, TlsMaterial, new_request_id};

mod renew;

/// A certificate chain and the key it certifies.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Leaf first, then the issuing CA.
    pub chain_pem: String,
    /// PKCS#8 PEM. Never logged (see `Debug`).
    pub key_pem: String,
    /// The CA bundle that verifies Mintgate-issued certificates.
    pub trust_bundle_pem: String,
    /// Serial of the certificate, hex.
    pub serial: String,
    /// The SPIFFE ID it certifies.
    pub spiffe_id: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The server's hint for when to renew.
    pub renew_after: Option<OffsetDateTime>,
}

/// What an enrollment shows besides the node certificate, where policy asks for it. Both are
/// secrets: `Debug` says only which are there.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Attestation {
    /// A one-time join token from `Admin/CreateJoinToken`.
    pub join_token: Option<String>,
    /// The workload's Kubernetes projected service-account token (a JWT), for the server's
    /// `jwt` attestor.
    pub service_account_token: Option<String>,
}

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestation")
            .field("join_token", &self.join_token.is_some())
            .field(
                "service_account_token",
                &self.service_account_token.is_some(),
            )
            .finish()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("serial", &self.serial)
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// An issued answer; `INTERNAL` without its certificate (see [`crate::Issuance`] for one
    /// that may be held).
    pub(crate) fn from_response(r: v1::IssueResponse, key_pem: String) -> Result<Self, Error> {
        if r.certificate_chain_pem.is_empty() {
            return Err(Error::from(tonic::Status::internal(
                "the answer has no certificate",
            )));
        }
        let time = |t: Option<prost_types::Timestamp>, field: &str| {
            t.and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
                .ok_or_else(|| Error::from(tonic::Status::internal(format!("no {field}"))))
        };
        Ok(Self {
            not_before: time(r.not_before, "not_before")?,
            not_after: time(r.not_after, "not_after")?,
            renew_after: time(r.renew_after, "renew_after").ok(),
            chain_pem: r.certificate_chain_pem,
            key_pem,
            trust_bundle_pem: r.trust_bundle_pem,
            serial: r.serial,
            spiffe_id: r.spiffe_id,
        })
    }

    /// TLS material to connect to Mintgate as this identity.
    pub fn tls(&self) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.trust_bundle_pem.clone(),
            cert_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// A fresh P-256 key and a CSR for `spiffe_id` (its one URI SAN), PEM.
pub fn key_and_csr(spiffe_id: &str) -> Result<(KeyPair, String), Error> {
    let bad = |e: rcgen::Error| Error::invalid("CSR_NOT_MADE", e.to_string());
    let key = KeyPair::generate().map_err(bad)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().map_err(bad)?)];
    let csr = params
        .serialize_request(&key)
        .map_err(bad)?
        .pem()
        .map_err(bad)?;
    Ok((key, csr))
}

/// When and how renewal happens.
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    /// Fraction of the lifetime where the window opens (unless the server's hint says).
    pub window_start: f64,
    /// Fraction of the lifetime by which renewal should be done.
    pub window_end: f64,
    /// Shortest and longest backoff between failed attempts (full jitter in between).
    pub min_backoff: Duration,
    /// See `min_backoff`.
    pub max_backoff: Duration,
    /// Consecutive failures that open the circuit breaker, and how long it stays open.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_cooldown: Duration,
    /// Lifetime to ask for; `None` takes the policy maximum.
    pub ttl: Option<Duration>,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            window_start: 0.5,
            window_end: 0.75,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            ttl: None,
        }
    }
}

/// The first renewal attempt for `credential`: a point in the first half of the window (the
/// second half is left for retries), placed by `jitter` in `0.0..1.0`.
pub fn renewal_time(
    credential: &Credential,
    policy: &RenewalPolicy,
    jitter: f64,
) -> OffsetDateTime {
    let lifetime = credential.not_after - credential.not_before;
    let start = credential
        .renew_after
        .unwrap_or(credential.not_before + lifetime * policy.window_start);
    let end = (credential.not_before + lifetime * policy.window_end).max(start);
    start + (end - start) * (jitter.clamp(0.0, 1.0) / 2.0)
}

/// Stops calling a server that keeps failing: after `threshold` consecutive failures it opens
/// for `cooldown`, then lets one probe through (half-open); a success closes it.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<OffsetDateTime>,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
        }
    }

    /// Whether a call may go out at `now` (closed, or half-open after the cooldown).
    pub fn allows(&self, now: OffsetDateTime) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// When the breaker lets the next call through, if it is open.
    pub fn open_until(&self) -> Option<OffsetDateTime> {
        self.open_until
    }

    /// A success closes the breaker and forgets past failures.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// A failure at `now`; a failed half-open probe reopens at once.
    pub fn failure(&mut self, now: OffsetDateTime) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }
}

/// Where time comes from (tests inject one they move by hand).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
    /// Waits `d` (or, in tests, moves time forward by it).
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Where Mintgate is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port`, or several replicas' separated by commas (connections fail over
    /// between them).
    pub url: String,
    /// A name in the server certificate.
    pub server_name: String,
}

/// See the module documentation. Dropping it stops renewing.
#[derive(Debug)]
pub struct CredentialManager {
    current: watch::Receiver<Credential>,
    state: watch::Receiver<CredentialState>,
    task: JoinHandle<()>,
}

impl CredentialManager {
    /// Enrolls `spiffe_id` through `bootstrap` (a client holding the node certificate; with
    /// the `attestation` policy asks for), then renews in the background.
    ///
    /// If policy holds the request for approvers, this waits through the hold: it sleeps the
    /// server's `retry_after` on `clock` and asks again with the same request id and CSR (one
    /// request, one key) until the request is issued. A hold that is denied (`HOLD_DENIED`) or
    /// expires (`HOLD_EXPIRED`) ends it with that error. Use
    /// [`CredentialManager::enroll_reporting`] to follow the hold while it waits.
    pub async fn enroll(
        bootstrap: &Client,
        endpoint: Endpoint,
        spiffe_id: &str,
        attestation: Attestation,
        policy: RenewalPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let (state, _) = watch::channel(CredentialState::Enrolling);
        Self::enroll_reporting(
            bootstrap,
            endpoint,
            spiffe_id,
            attestation,
            policy,
            clock,
            state,
        )
        .await
    }

    /// [`CredentialManager::enroll`], publishing what it does on `state` from the start
    /// ([`CredentialState::Held`] while the enrollment waits for approvers); the manager keeps
    /// publishing there afterwards (see [`CredentialManager::state`]).
    pub async fn enroll_reporting(
        bootstrap: &Client,
        endpoint: Endpoint,
        spiffe_id: &str,
        attestation: Attestation,
        policy: RenewalPolicy,
        clock: Arc<dyn Clock>,
        state: watch::Sender<CredentialState>,
    ) -> Result<Self, Error> {
        let (key, csr) = key_and_csr(spiffe_id)?;
        let request = v1::EnrollRequest {
            request_id: new_request_id(),
            csr: csr.into_bytes(),
            ttl: policy.ttl.map(proto_duration),
            join_token: attestation.join_token.unwrap_or_default(),
            service_account_token: attestation.service_account_token.unwrap_or_default(),
        };
        state.send_replace(CredentialState::Enrolling);
        let enrolled = renew::enroll_until_issued(
            bootstrap,
            request,
            key.serialize_pem(),
            &policy,
            clock.as_ref(),
            &state,
        )
        .await;
        match enrolled {
            Ok(credential) => Ok(Self::start_reporting(
                credential, endpoint, policy, clock, state,
            )),
            Err(e) => {
                state.send_replace(CredentialState::Refused(e.clone()));
                Err(e)
            }
        }
    }

    /// Keeps `credential` fresh from now on.
    pub fn start(
        credential: Credential,
        endpoint: Endpoint,
        policy: RenewalPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (state, _) = watch::channel(CredentialState::Current);
        Self::start_reporting(credential, endpoint, policy, clock, state)
    }

    fn start_reporting(
        credential: Credential,
        endpoint: Endpoint,
        policy: RenewalPolicy,
        clock: Arc<dyn Clock>,
        state: watch::Sender<CredentialState>,
    ) -> Self {
        state.send_replace(CredentialState::Current);
        let (tx, current) = watch::channel(credential);
        let state_rx = state.subscribe();
        let task = tokio::spawn(renew::renew_forever(tx, state, endpoint, policy, clock));
        Self {
            current,
            state: state_rx,
            task,
        }
    }

    /// The credential in use now.
    pub fn current(&self) -> Credential {
        self.current.borrow().clone()
    }

    /// Receives every new credential. The channel closes when the credential expired without
    /// renewal.
    pub fn subscribe(&self) -> watch::Receiver<Credential> {
        self.current.clone()
    }

    /// What the manager is doing: current, a renewal held for approvers, refused, expired.
    pub fn state(&self) -> watch::Receiver<CredentialState> {
        self.state.clone()
    }
}

impl Drop for CredentialManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(lifetime_secs: i64, hint: Option<i64>) -> Credential {
        let not_before = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        Credential {
            chain_pem: String::new(),
            key_pem: "secret".into(),
            trust_bundle_pem: String::new(),
            serial: "01".into(),
            spiffe_id: "spiffe://example/x".into(),
            not_before,
            not_after: not_before + time::Duration::seconds(lifetime_secs),
            renew_after: hint.map(|h| not_before + time::Duration::seconds(h)),
        }
    }

    #[test]
    fn renewal_falls_in_the_first_half_of_the_window() {
        let policy = RenewalPolicy::default();
        let c = credential(3600, None);
        let offset = |jitter| (renewal_time(&c, &policy, jitter) - c.not_before).whole_seconds();
        assert_eq!(offset(0.0), 1800);
        assert_eq!(offset(1.0), 1800 + 450);
        assert!((1800..=2250).contains(&offset(0.37)));
        // The server's hint opens the window.
        let hinted = credential(3600, Some(1200));
        let at = renewal_time(&hinted, &policy, 0.0);
        assert_eq!((at - hinted.not_before).whole_seconds(), 1200);
        // A fleet spreads out.
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|_| renewal_time(&c, &policy, rand::random()))
            .collect();
        assert!(spread.len() > 50);
    }

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_half_open() {
        let t0 = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            b.failure(t0);
            assert!(b.allows(t0));
        }
        b.failure(t0);
        assert!(!b.allows(t0 + time::Duration::seconds(29)));
        assert!(
            b.allows(t0 + time::Duration::seconds(30)),
            "half-open probe"
        );
        b.failure(t0 + time::Duration::seconds(30));
        assert!(
            !b.allows(t0 + time::Duration::seconds(31)),
            "a failed probe reopens"
        );
        b.success();
        assert!(b.allows(t0 + time::Duration::seconds(31)));
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert!(!format!("{:?}", credential(60, None)).contains("secret"));
    }

    #[test]
    fn csrs_carry_the_identity_and_a_fresh_key() {
        let (k1, csr1) = key_and_csr("spiffe://example/ns/a").unwrap();
        let (k2, _) = key_and_csr("spiffe://example/ns/a").unwrap();
        assert_ne!(k1.serialize_pem(), k2.serialize_pem());
        assert!(csr1.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }
}
