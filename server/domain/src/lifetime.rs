//! How long a certificate may live, given the CA that signs it.
//!
//! A certificate never outlives its issuer (DESIGN §4: notAfter = now + min(requested TTL, policy
//! max, issuer notAfter)). Near the issuer's end that cut leaves certificates too short to be of
//! use, so a CA whose notAfter is less than a configured minimum lifetime away signs nothing: the
//! caller is told to retry once the CA has been replaced (`UNAVAILABLE` / `CA_EXPIRING`), the
//! server reports itself not ready, and it does not start with such a CA. [`CaWindow`] is the one
//! rule all three use.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The default minimum lifetime: a CA with less than this left signs nothing.
pub const DEFAULT_MIN_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Why a certificate ends before the lifetime asked for (the policy maximum when the request
/// named none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Clamp {
    /// It ends when the issuing CA's certificate does.
    CaNotAfter,
    /// The lifetime asked for was longer than the policy grants: it got the policy maximum.
    PolicyMaxTtl,
}

impl Clamp {
    /// The UPPER_SNAKE name used in the API and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CaNotAfter => "CA_NOT_AFTER",
            Self::PolicyMaxTtl => "POLICY_MAX_TTL",
        }
    }
}

impl fmt::Display for Clamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the issuing CA may sign: until `min_lifetime` before its notAfter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaWindow {
    /// The issuing CA certificate's notAfter.
    pub not_after: OffsetDateTime,
    /// The shortest lifetime the CA must still be able to give a certificate.
    pub min_lifetime: Duration,
}

impl CaWindow {
    /// Whether the CA may still sign at `now`: only if at least `min_lifetime` of it is left.
    pub fn check(&self, now: OffsetDateTime) -> Result<(), CaExpiring> {
        let left = self.not_after - now;
        if left < self.min_lifetime {
            return Err(CaExpiring {
                not_after: self.not_after,
                min_lifetime: self.min_lifetime,
                now,
            });
        }
        Ok(())
    }

    /// The end of a certificate issued at `now` for `requested`: `now + requested`, cut to the
    /// CA's notAfter; refused if the CA may not sign at `now`.
    pub fn end_of(
        &self,
        now: OffsetDateTime,
        requested: Duration,
    ) -> Result<OffsetDateTime, CaExpiring> {
        self.check(now)?;
        Ok(now
            .checked_add(time::Duration::try_from(requested).unwrap_or(time::Duration::MAX))
            .map_or(self.not_after, |end| end.min(self.not_after)))
    }

    /// Why a certificate that ends at `not_after` ends there rather than where it was asked to:
    /// only the CA's own notAfter cuts a lifetime, and a certificate cut by it ends exactly then.
    pub fn clamp(&self, not_after: OffsetDateTime) -> Option<Clamp> {
        (not_after >= self.not_after).then_some(Clamp::CaNotAfter)
    }
}

/// When the holder of a certificate valid from `not_before` to `not_after` should renew it:
/// half-way through, and never before `now` (a certificate cut short by its CA, or an answer
/// repeated to a late retry, would otherwise be told a time already past). Whole seconds, as
/// the API sends it.
pub fn renew_after(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let half: time::Duration = (not_after - not_before) / 2;
    let at = (not_before + half).max(now);
    let whole = at.truncate_to_second();
    if whole < at {
        whole + time::Duration::SECOND
    } else {
        whole
    }
}

/// The issuing CA expires too soon to sign anything (see [`CaWindow`]). A system fault: the
/// request may be retried once the CA has been replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CaExpiring {
    pub not_after: OffsetDateTime,
    pub min_lifetime: Duration,
    /// When it was checked.
    pub now: OffsetDateTime,
}

impl CaExpiring {
    /// Whether the CA's notAfter has passed (rather than being merely too close).
    pub fn expired(&self) -> bool {
        self.now >= self.not_after
    }
}

impl fmt::Display for CaExpiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not_after = self.not_after.format(&Rfc3339).map_err(|_| fmt::Error)?;
        if self.expired() {
            write!(f, "the issuing CA expired at {not_after}")?;
        } else {
            write!(
                f,
                "the issuing CA expires at {not_after}, in {}s, less than the minimum certificate \
                 lifetime of {}s",
                (self.not_after - self.now).whole_seconds(),
                self.min_lifetime.as_secs()
            )?;
        }
        f.write_str("; no certificate is issued until it is replaced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const MIN: Duration = Duration::from_secs(300);
    const HOUR: Duration = Duration::from_secs(3600);

    fn window() -> CaWindow {
        CaWindow {
            not_after: datetime!(2030-01-01 00:00:00 UTC),
            min_lifetime: MIN,
        }
    }

    #[test]
    fn far_from_the_ca_end_the_request_is_granted_whole() {
        let w = window();
        let now = w.not_after - time::Duration::days(30);
        let end = w.end_of(now, HOUR).unwrap();
        assert_eq!(end, now + HOUR);
        assert_eq!(w.clamp(end), None);
    }

    #[test]
    fn near_the_ca_end_the_lifetime_is_cut_to_it_and_says_so() {
        let w = window();
        let now = w.not_after - time::Duration::minutes(20);
        let end = w.end_of(now, HOUR).unwrap();
        assert_eq!(end, w.not_after);
        assert_eq!(w.clamp(end), Some(Clamp::CaNotAfter));
        // Asking for exactly what is left is a cut too: the CA decided the end.
        let end = w.end_of(now, Duration::from_secs(20 * 60)).unwrap();
        assert_eq!(w.clamp(end), Some(Clamp::CaNotAfter));
        // A short request is not cut.
        let end = w.end_of(now, Duration::from_secs(60)).unwrap();
        assert_eq!((end, w.clamp(end)), (now + Duration::from_secs(60), None));
    }

    #[test]
    fn within_the_minimum_of_the_ca_end_nothing_is_signed() {
        let w = window();
        // Exactly the minimum left still signs.
        assert!(w.check(w.not_after - MIN).is_ok());
        for before_end in [299, 1, 0, -30, -86_400] {
            let now = w.not_after - time::Duration::seconds(before_end);
            let err = w.end_of(now, Duration::from_secs(60)).unwrap_err();
            assert_eq!(err.expired(), before_end <= 0, "{before_end}");
            let text = err.to_string();
            assert!(text.contains("2030-01-01T00:00:00Z"), "{text}");
        }
        let err = w
            .check(w.not_after - time::Duration::seconds(120))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the issuing CA expires at 2030-01-01T00:00:00Z, in 120s, less than the minimum \
             certificate lifetime of 300s; no certificate is issued until it is replaced"
        );
    }

    #[test]
    fn renewal_is_due_half_way_and_never_in_the_past() {
        let start = datetime!(2030-01-01 00:00:00 UTC);
        let end = start + time::Duration::hours(1);
        assert_eq!(
            renew_after(start, end, start + time::Duration::seconds(30)),
            start + time::Duration::minutes(30)
        );
        // A certificate cut to 20 s (the CA ends) after a 30 s backdate: half-way is past.
        let now = start + time::Duration::seconds(30);
        let short = now + time::Duration::seconds(20);
        assert_eq!(renew_after(start, short, now), now);
        // Never a fraction of a second before now once truncated on the wire.
        let now = now + time::Duration::milliseconds(300);
        assert_eq!(
            renew_after(start, short, now),
            start + time::Duration::seconds(31)
        );
        // Half-way of an odd number of seconds rounds up, not into the past.
        let odd = start + time::Duration::seconds(61);
        assert_eq!(
            renew_after(start, odd, start),
            start + time::Duration::seconds(31)
        );
    }

    #[test]
    fn huge_requests_and_minimums_do_not_overflow() {
        let w = CaWindow {
            min_lifetime: Duration::MAX,
            ..window()
        };
        assert!(w.check(w.not_after - time::Duration::days(3650)).is_err());
        let end = window()
            .end_of(datetime!(2029-01-01 00:00:00 UTC), Duration::MAX)
            .unwrap();
        assert_eq!(end, window().not_after);
    }
}
