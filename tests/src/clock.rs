//! A clock the test moves by hand. Sleeps (only used by the server to poll for a concurrent
//! duplicate) are real but short; time-dependent behaviour follows `advance`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use mintgate_domain::ports::Clock;
use time::OffsetDateTime;

#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// Starts at the current wall-clock second.
    pub fn new() -> Self {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Self(Mutex::new(now))
    }

    pub fn now_odt(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }

    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.now_odt()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}
