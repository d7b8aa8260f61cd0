//! Capped exponential backoff with full jitter (each delay uniform in `0..=min(cap, base·2ⁿ)`),
//! so a fleet that lost the server at once does not come back in step.

use std::time::Duration;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start at `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// After a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay: uniform in `0..=ceiling`, then the ceiling doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// The next delay after a failure that may say how long to wait (the server's
    /// [`crate::Error::retry_after`], which already spreads the callers it turned away): at
    /// least that, plus up to a tenth more in jitter; else [`Backoff::next_delay`].
    pub fn next_delay_after(&mut self, hint: Option<Duration>) -> Duration {
        match hint {
            Some(hint) => {
                self.attempt = self.attempt.saturating_add(1);
                hint + hint.mul_f64(rand::random::<f64>() / 10.0)
            }
            None => self.next_delay(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_below_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<_> = (0..8)
            .map(|_| {
                let ceiling = b.ceiling();
                assert!(b.next_delay() <= ceiling);
                ceiling.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Full jitter spreads a fleet: 200 draws are not all alike.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let draws: std::collections::HashSet<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 100);
    }

    #[test]
    fn a_server_hint_is_waited_at_least_and_at_most_a_tenth_more() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let hint = Duration::from_millis(300);
        let draws: Vec<_> = (0..200).map(|_| b.next_delay_after(Some(hint))).collect();
        assert!(draws.iter().all(|d| (hint..=hint * 11 / 10).contains(d)));
        assert!(draws.iter().collect::<std::collections::HashSet<_>>().len() > 100);
        assert!(b.next_delay_after(None) <= Duration::from_millis(2));
    }
}
