//! The real clock and randomness behind the domain's ports.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mintgate_domain::ports::{Clock, Random};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

/// Wall-clock time; sleeps on tokio's timer.
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

/// The operating system's CSPRNG.
#[derive(Debug, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    #[allow(clippy::panic)]
    fn fill(&self, buf: &mut [u8]) {
        // ring's SystemRandom fails only if the OS has no entropy source; issuing serials without
        // one would be unsafe, so stopping is the only correct answer.
        if SystemRandom::new().fill(buf).is_err() {
            panic!("the operating system's random number generator failed");
        }
    }
}
