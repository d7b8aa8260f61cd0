//! A clock the test moves by hand. Sleeps (only used by the server to poll for a concurrent
//! duplicate) are real but short; time-dependent behaviour follows `advance`. A test that wants
//! a wait to run its whole course at once makes sleeps virtual ([`ManualClock::virtual_sleeps`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mintgate_domain::ports::Clock;
use time::OffsetDateTime;

#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
    virtual_sleeps: AtomicBool,
}

impl ManualClock {
    /// Starts at the current wall-clock second.
    pub fn new() -> Self {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Self {
            now: Mutex::new(now),
            virtual_sleeps: AtomicBool::new(false),
        }
    }

    pub fn now_odt(&self) -> OffsetDateTime {
        *self.now.lock().unwrap()
    }

    pub fn advance(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
    }

    /// From now on a sleep moves the clock forward by its length instead of waiting, so a
    /// server-side wait (a duplicate waiting for its original) ends at once, as far on as it
    /// would have. How far the clock moved shows how long the server waited.
    pub fn virtual_sleeps(&self) {
        self.virtual_sleeps.store(true, Ordering::SeqCst);
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
        if self.virtual_sleeps.load(Ordering::SeqCst) {
            self.advance(d);
            return Box::pin(tokio::task::yield_now());
        }
        Box::pin(tokio::time::sleep(d))
    }
}
