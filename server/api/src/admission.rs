//! Which new gRPC connections may start a TLS handshake, and how long they get to finish it.
//!
//! A connection costs a file descriptor from `accept` on, and until its handshake completes
//! nobody knows who is on the other end. So before any TLS byte is read, [`Admission::admit`]
//! checks three counts and closes the connection at once (counted by reason in
//! `mintgate_grpc_connections_refused_total`) if one is at its limit:
//!
//! - handshakes in progress from the same source (`source_limit`): one IPv4 address, or one
//!   IPv6 /64 (a single host usually holds a whole /64, so counting addresses would not bound it);
//! - handshakes in progress from anywhere (`handshake_limit`);
//! - gRPC connections open, handshaking or authenticated (`connection_limit`). The server crate
//!   sets this limit to the soft `RLIMIT_NOFILE` minus a reserve: a TCP connection holds exactly
//!   one descriptor, so counting connections counts the descriptors the gRPC port can take, and
//!   the reserve stays free for everything else (the HTTP port's `/healthz`, `/readyz` and
//!   `/metrics`, database connections, log files). Closing a connection over the limit needs
//!   the one descriptor `accept` gave it for a moment, which the reserve also covers.
//!
//! **Pressure.** A handshake normally gets [`GrpcConfig::handshake_timeout`]. Once the
//! handshakes in progress reach a threshold — [`GrpcConfig::pressure_handshakes`], or half of the
//! connection limit if that is lower — every handshake in progress, old or new, gets the shorter
//! [`GrpcConfig::pressure_handshake_timeout`] instead, counted from its own start, and keeps it
//! to its end. Half-open connections then give their descriptors back quickly, while a real
//! client (which finishes in milliseconds) is unaffected. Pressure ends when the count falls to
//! half the threshold, so it does not flap at the boundary (each start wakes every handshake).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::server::GrpcConfig;

/// See the module documentation.
pub(crate) struct Admission {
    handshake_timeout: Duration,
    pressure_handshake_timeout: Duration,
    /// Handshakes in progress at which pressure begins.
    pressure_at: usize,
    max_handshakes_per_source: usize,
    max_handshakes: usize,
    max_connections: usize,
    counts: Mutex<Counts>,
    pressure: watch::Sender<bool>,
    /// Pressure starting is worth a warning, but not every time under a sustained flood.
    pressure_log: Throttle,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Counts {
    /// Connections admitted and not closed yet (handshaking or authenticated).
    open: usize,
    handshakes: usize,
    per_source: HashMap<Source, usize>,
}

/// Which limit closed a connection before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Handshakes in progress from its source.
    Source,
    /// Handshakes in progress in all.
    Handshakes,
    /// Connections open in all (descriptors).
    Connections,
}

impl Refusal {
    /// The `reason` label of the refused-connections counter.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source_limit",
            Self::Handshakes => "handshake_limit",
            Self::Connections => "connection_limit",
        }
    }
}

/// Where a connection comes from, as far as the per-source limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(peer: IpAddr) -> Self {
        match peer.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// An admitted connection whose handshake is in progress; gives its slots back when dropped.
pub(crate) struct Handshaking {
    admission: Arc<Admission>,
    source: Source,
    started: Instant,
    finished: bool,
}

/// An authenticated connection's slot in the connection count; given back when dropped.
pub(crate) struct Open {
    admission: Arc<Admission>,
}

impl Admission {
    pub(crate) fn new(config: &GrpcConfig, metrics: Metrics) -> Arc<Self> {
        let max_connections = config.max_connections.max(1);
        Arc::new(Self {
            handshake_timeout: config.handshake_timeout,
            pressure_handshake_timeout: config.pressure_handshake_timeout,
            pressure_at: config.pressure_handshakes.min(max_connections / 2).max(1),
            max_handshakes_per_source: config.max_handshakes_per_source,
            max_handshakes: config.max_handshakes,
            max_connections,
            counts: Mutex::new(Counts::default()),
            pressure: watch::Sender::new(false),
            pressure_log: Throttle::new(Duration::from_secs(10)),
            metrics,
        })
    }

    /// Takes a slot for a handshake from `peer`, or says why there is none; a refusal is
    /// counted in the metrics.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Handshaking, Refusal> {
        let source = Source::of(peer);
        let mut counts = self.counts();
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        let refusal = if from_source >= self.max_handshakes_per_source {
            Some(Refusal::Source)
        } else if counts.handshakes >= self.max_handshakes {
            Some(Refusal::Handshakes)
        } else if counts.open >= self.max_connections {
            Some(Refusal::Connections)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(counts);
            self.metrics.connection_refused(refusal.as_str());
            return Err(refusal);
        }
        counts.open += 1;
        counts.handshakes += 1;
        *counts.per_source.entry(source).or_default() += 1;
        self.publish(&counts);
        Ok(Handshaking {
            admission: self.clone(),
            source,
            started: Instant::now(),
            finished: false,
        })
    }

    /// Whether the server is under pressure now, and when it changes.
    pub(crate) fn pressure(&self) -> watch::Receiver<bool> {
        self.pressure.subscribe()
    }

    /// How long a handshake may take in all, with or without pressure.
    pub(crate) fn handshake_timeout(&self, under_pressure: bool) -> Duration {
        if under_pressure {
            self.pressure_handshake_timeout
        } else {
            self.handshake_timeout
        }
    }

    fn release(&self, handshake_of: Option<Source>, close: bool) {
        let mut counts = self.counts();
        if let Some(source) = handshake_of {
            counts.handshakes = counts.handshakes.saturating_sub(1);
            if let Some(n) = counts.per_source.get_mut(&source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_source.remove(&source);
                }
            }
        }
        if close {
            counts.open = counts.open.saturating_sub(1);
        }
        self.publish(&counts);
    }

    /// Updates the gauges and the pressure flag from `counts` (with their lock held, so the
    /// flag follows the counts in order).
    fn publish(&self, counts: &Counts) {
        self.metrics
            .grpc_connections(counts.open, counts.handshakes);
        let was = *self.pressure.borrow();
        let now = if was {
            counts.handshakes > self.pressure_at / 2
        } else {
            counts.handshakes >= self.pressure_at
        };
        if now == was {
            return;
        }
        self.pressure.send_replace(now);
        if now {
            if let Some(times) = self.pressure_log.tick() {
                tracing::warn!(
                    handshakes = counts.handshakes,
                    times,
                    timeout_ms = self.pressure_handshake_timeout.as_millis(),
                    "many TLS handshakes in progress: shortening the handshake timeout"
                );
            }
        } else {
            tracing::debug!(handshakes = counts.handshakes, "handshake pressure over");
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Handshaking {
    /// When the handshake was admitted; its timeout counts from here.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The handshake succeeded: its handshake slots are freed, its connection slot stays taken
    /// until the returned [`Open`] is dropped.
    pub(crate) fn authenticated(mut self) -> Open {
        self.finished = true;
        self.admission.release(Some(self.source), false);
        Open {
            admission: self.admission.clone(),
        }
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        if !self.finished {
            self.admission.release(Some(self.source), true);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.admission.release(None, true);
    }
}

/// Says when a noisy event should be logged again: at most once per interval, with the number
/// of events since the last time. Keeps a flood from turning into one log line per connection.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one event; `Some(n)` when it is time to log, `n` events since the last log
    /// (this one included).
    pub(crate) fn tick(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, count) = &mut *state;
        *count += 1;
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_source: usize, handshakes: usize, connections: usize) -> GrpcConfig {
        GrpcConfig {
            max_handshakes_per_source: per_source,
            max_handshakes: handshakes,
            max_connections: connections,
            pressure_handshakes: 4,
            ..GrpcConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_limit_refuses_with_its_own_reason_and_slots_come_back() {
        let admission = Admission::new(&config(2, 3, 4), Metrics::disabled());
        let a1 = admission.admit(ip("10.0.0.1")).unwrap();
        let a2 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(admission.admit(ip("10.0.0.1")).err(), Some(Refusal::Source));
        let b1 = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.3")).err(),
            Some(Refusal::Handshakes)
        );
        // Authenticated connections free their handshake slots but still hold descriptors.
        let open = [a1.authenticated(), a2.authenticated(), b1.authenticated()];
        let c1 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.4")).err(),
            Some(Refusal::Connections)
        );
        drop(c1);
        let c2 = admission.admit(ip("10.0.0.4")).unwrap();
        drop((open, c2));
        assert_eq!(admission.counts().open, 0);
        assert_eq!(admission.counts().handshakes, 0);
        assert!(admission.counts().per_source.is_empty());
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn pressure_starts_at_the_threshold_and_ends_at_half_of_it() {
        let admission = Admission::new(&config(64, 64, 1000), Metrics::disabled());
        let pressure = admission.pressure();
        let mut held: Vec<_> = (0..3)
            .map(|_| admission.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert!(!*pressure.borrow());
        held.push(admission.admit(ip("10.0.0.1")).unwrap());
        assert!(*pressure.borrow());
        assert_eq!(
            admission.handshake_timeout(true),
            GrpcConfig::default().pressure_handshake_timeout
        );
        held.pop();
        assert!(*pressure.borrow(), "no flapping just under the threshold");
        held.pop();
        assert!(!*pressure.borrow());
    }

    #[test]
    fn a_small_connection_limit_lowers_the_pressure_threshold() {
        let admission = Admission::new(&config(64, 64, 4), Metrics::disabled());
        let pressure = admission.pressure();
        let _a = admission.admit(ip("10.0.0.1")).unwrap();
        assert!(!*pressure.borrow());
        let _b = admission.admit(ip("10.0.0.1")).unwrap();
        assert!(
            *pressure.borrow(),
            "half of the connection limit is handshaking"
        );
    }

    #[test]
    fn the_throttle_reports_once_per_interval_with_a_count() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.tick(), Some(1));
        assert_eq!(throttle.tick(), None);
        assert_eq!(throttle.tick(), None);
        let always = Throttle::new(Duration::ZERO);
        assert_eq!(always.tick(), Some(1));
        assert_eq!(always.tick(), Some(1));
    }
}
