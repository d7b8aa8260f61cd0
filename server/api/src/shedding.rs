//! Load shedding for issuance (Enroll, Renew): a bounded number of issuances in progress, in all
//! and per caller, so that a storm (every workload of a fleet renewing at once after a CA
//! rotation) is answered at once instead of queueing without bound in front of the signer and the
//! database.
//!
//! A call over either limit is answered `RESOURCE_EXHAUSTED` before any work is done, with
//! `ErrorInfo` reason `SERVER_BUSY` (the server's limit: a system fault) or `CALLER_BUSY` (the
//! caller's own: a user fault) and `google.rpc.RetryInfo`, the time to wait before asking again
//! with the same request id (the SDK and the agent wait that long, plus a little jitter).
//!
//! **When to come back.** The gate measures how fast issuances complete. A call shed for the
//! server's limit is given the next free *retry slot*: slots are one completion time apart and
//! start no earlier than now, so the callers a storm turned away come back spread over the time
//! the server needs to drain them, at the rate it completes issuances, instead of all together
//! (where each round would be refused again and cost the server more than it serves). The rate
//! is the fastest measured over the last minute: a caller back too early costs one more
//! refusal, one back too late leaves the server idle (and a slower rate measured while it idles
//! would space the slots further still). A call shed for its caller's limit is told how long
//! the issuances in progress take.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::status::ERROR_DOMAIN;

/// The shortest and the longest wait a refusal suggests.
const MIN_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long the completion rate is measured over before it is used.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// How many windows the rate is remembered over: the fastest of them counts.
const RATE_WINDOWS: usize = 60;
/// The completion time assumed before the first window closes.
const FIRST_GUESS: Duration = Duration::from_millis(1);

/// See the module documentation.
pub(crate) struct IssuanceGate {
    max_in_flight: usize,
    max_per_caller: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    per_caller: HashMap<Arc<str>, usize>,
    /// Issuances finished since `window_start`.
    completed: u64,
    window_start: Option<Instant>,
    /// Time per completion in each of the last `RATE_WINDOWS` full windows in which anything
    /// completed, newest last.
    intervals: std::collections::VecDeque<Duration>,
    /// The next retry slot not handed out yet.
    next_slot: Option<Instant>,
}

/// One issuance in progress; dropping it frees its place.
pub(crate) struct Pass {
    gate: Arc<IssuanceGate>,
    caller: Arc<str>,
}

impl IssuanceGate {
    pub(crate) fn new(max_in_flight: usize, max_per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight,
            max_per_caller,
            state: Mutex::default(),
        })
    }

    /// A place for one issuance by `caller`, or the refusal to send.
    pub(crate) fn enter(self: &Arc<Self>, caller: &str, rpc: &str) -> Result<Pass, Status> {
        let mut state = self.lock();
        let (reason, fault, limit) = if state.in_flight >= self.max_in_flight {
            ("SERVER_BUSY", "system", self.max_in_flight)
        } else if state.per_caller.get(caller).copied().unwrap_or(0) >= self.max_per_caller {
            ("CALLER_BUSY", "user", self.max_per_caller)
        } else {
            state.in_flight += 1;
            let caller: Arc<str> = Arc::from(caller);
            *state.per_caller.entry(caller.clone()).or_default() += 1;
            return Ok(Pass {
                gate: self.clone(),
                caller,
            });
        };
        let now = Instant::now();
        let retry = if fault == "system" {
            state.next_slot(now)
        } else {
            state.drain_time(now)
        };
        drop(state);
        // Counted with every other outcome, by reason (`mintgate_rpc_outcomes_total`).
        tracing::debug!(rpc, caller, reason, limit, "shed");
        let retry_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
        let metadata = HashMap::from([
            ("fault".to_owned(), fault.to_owned()),
            ("limit".to_owned(), limit.to_string()),
            ("retry_after_ms".to_owned(), retry_ms.to_string()),
        ]);
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        details.set_retry_info(Some(retry));
        let whose = if fault == "user" {
            "this caller's"
        } else {
            "the server's"
        };
        Err(Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "{rpc}: {whose} {limit} issuances in progress are taken; retry in {retry_ms} ms"
            ),
            details,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The time one completion takes: the shortest measured in the last minute. Completions
    /// measure capacity only while callers wait in the server; while refused callers wait out
    /// their slots, fewer complete, and trusting that would space the slots further still.
    fn interval(&mut self, now: Instant) -> Duration {
        self.roll(now);
        self.intervals.iter().min().copied().unwrap_or(FIRST_GUESS)
    }

    /// How long the issuances in progress take to complete.
    fn drain_time(&mut self, now: Instant) -> Duration {
        let interval = self.interval(now);
        interval
            .saturating_mul(u32::try_from(self.in_flight).unwrap_or(u32::MAX))
            .clamp(MIN_RETRY, MAX_RETRY)
    }

    /// Hands out the next retry slot: one completion after the last, and not before
    /// `now + MIN_RETRY`.
    fn next_slot(&mut self, now: Instant) -> Duration {
        let interval = self.interval(now);
        let earliest = now + MIN_RETRY;
        let slot = self.next_slot.map_or(earliest, |s| s.max(earliest));
        self.next_slot = Some(slot + interval);
        (slot - now).min(MAX_RETRY)
    }

    /// Closes the rate window once it is `RATE_WINDOW` old.
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.duration_since(start);
        if elapsed >= RATE_WINDOW {
            if self.completed > 0 {
                if self.intervals.len() == RATE_WINDOWS {
                    self.intervals.pop_front();
                }
                let per = elapsed / u32::try_from(self.completed).unwrap_or(u32::MAX);
                self.intervals.push_back(per);
            }
            self.completed = 0;
            self.window_start = Some(now);
        }
    }
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("caller", &self.caller)
            .finish()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.in_flight -= 1;
        state.completed += 1;
        if let Some(n) = state.per_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                state.per_caller.remove(&self.caller);
            }
        }
        state.roll(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_and_retry(status: &Status) -> (String, Duration) {
        let info = status.get_details_error_info().expect("ErrorInfo");
        let retry = status.get_details_retry_info().expect("RetryInfo");
        (info.reason, retry.retry_delay.expect("a delay"))
    }

    #[test]
    fn a_caller_at_its_limit_is_refused_before_the_server_is() {
        let gate = IssuanceGate::new(3, 2);
        let a1 = gate.enter("a", "Enroll").unwrap();
        let _a2 = gate.enter("a", "Enroll").unwrap();
        let refused = gate.enter("a", "Enroll").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let (reason, retry) = reason_and_retry(&refused);
        assert_eq!(reason, "CALLER_BUSY");
        assert!((MIN_RETRY..=MAX_RETRY).contains(&retry));
        let _b = gate.enter("b", "Renew").unwrap();
        let refused = gate.enter("c", "Renew").unwrap_err();
        assert_eq!(reason_and_retry(&refused).0, "SERVER_BUSY");
        let info = refused.get_details_error_info().unwrap();
        assert_eq!(info.metadata["fault"], "system");
        assert_eq!(info.metadata["limit"], "3");
        // A place freed is a place taken, and the caller's own count went down with it.
        drop(a1);
        let _a3 = gate.enter("a", "Enroll").unwrap();
        assert_eq!(gate.lock().per_caller["a"], 2);
    }

    #[test]
    fn shed_callers_get_slots_one_completion_apart_and_a_busy_caller_the_backlog() {
        let mut state = State::default();
        let start = Instant::now();
        state.roll(start);
        // 1,000 completions over 2 s: one every 2 ms.
        state.completed = 1000;
        let now = start + Duration::from_secs(2);
        let slots: Vec<_> = (0..3).map(|_| state.next_slot(now)).collect();
        let ms = Duration::from_millis;
        assert_eq!(slots, [MIN_RETRY, MIN_RETRY + ms(2), MIN_RETRY + ms(4)]);
        // Slots already past are not handed out again.
        assert_eq!(state.next_slot(now + Duration::from_secs(1)), MIN_RETRY);
        // A slower window does not slow the slots down: the fastest of the last minute counts.
        state.completed = 100;
        state.next_slot = None;
        let later = now + Duration::from_secs(2);
        state.next_slot(later);
        assert_eq!(state.next_slot(later), MIN_RETRY + ms(2));
        // 250 in progress take half a second.
        state.in_flight = 250;
        assert_eq!(state.drain_time(now), ms(500));
        state.in_flight = 1;
        assert_eq!(state.drain_time(now), MIN_RETRY);
    }
}
