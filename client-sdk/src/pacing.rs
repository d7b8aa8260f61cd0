//! How a [`crate::Client`] paces its Enroll and Renew calls when the server sheds them
//! (docs/limits.md, "Issuance under a storm").
//!
//! A client, and every clone of it, has at most [`ISSUANCES_ON_THE_WIRE`] of these calls sent at
//! once: the server's limit of calls per connection. The others wait here, not in HTTP/2's
//! queue, where nothing could hold them back any more. Once the server answers one of them
//! `RESOURCE_EXHAUSTED` with a `RetryInfo`, the client sends no issuance until that time has
//! passed: the calls it holds would only be refused too, each one costing the server and the
//! client as much as an answer, and in a storm a node with a hundred workloads waiting would
//! send a hundred calls where one tells it all it needs. The refused call itself waits as its
//! caller decides (the SDK's [`crate::Backoff`], the agent's renewal loop).

use std::sync::{Mutex, PoisonError};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::Error;

/// Enroll and Renew calls one client sends at once: the server's limit of calls per
/// connection (and of HTTP/2 streams), past which HTTP/2 would queue them.
pub const ISSUANCES_ON_THE_WIRE: usize = 8;

#[derive(Debug)]
pub(crate) struct Pacing {
    on_the_wire: Semaphore,
    /// No issuance is sent before this: the time the server's last shedding asked for.
    paused_until: Mutex<Option<Instant>>,
}

impl Pacing {
    pub(crate) fn new() -> Self {
        Self {
            on_the_wire: Semaphore::new(ISSUANCES_ON_THE_WIRE),
            paused_until: Mutex::new(None),
        }
    }

    /// Sends `call` once a place on the wire is free and any pause has passed, and pauses
    /// the client if the server sheds it.
    pub(crate) async fn send<T>(
        &self,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        // The semaphore is never closed.
        let _place = self.on_the_wire.acquire().await;
        let paused_until = *self.paused_until();
        if let Some(until) = paused_until {
            tokio::time::sleep_until(until).await;
        }
        let answer = call.await;
        if let Err(e) = &answer
            && e.code == tonic::Code::ResourceExhausted
            && let Some(wait) = e.retry_after
        {
            *self.paused_until() = Some(Instant::now() + wait);
        }
        answer
    }

    fn paused_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    fn shed(wait: Duration) -> Error {
        Error {
            code: tonic::Code::ResourceExhausted,
            reason: "SERVER_BUSY".to_owned(),
            message: "shed".to_owned(),
            fault: Some("system".to_owned()),
            metadata: Default::default(),
            retry_after: Some(wait),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shed_call_pauses_every_issuance_of_the_client_until_its_retry_time() {
        let pacing = Pacing::new();
        let start = Instant::now();
        let refused = pacing
            .send(async { Err::<(), _>(shed(Duration::from_secs(2))) })
            .await;
        assert!(refused.is_err());
        // The next call, however unrelated, is sent only when the server asked.
        let sent_at = pacing.send(async { Ok(Instant::now()) }).await.unwrap();
        assert_eq!(sent_at - start, Duration::from_secs(2));
        // Other failures do not pause the client.
        let unavailable = Error {
            code: tonic::Code::Unavailable,
            retry_after: Some(Duration::from_secs(60)),
            ..shed(Duration::ZERO)
        };
        let _ = pacing.send(async { Err::<(), _>(unavailable) }).await;
        let sent_at = pacing.send(async { Ok(Instant::now()) }).await.unwrap();
        assert_eq!(sent_at - start, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn at_most_the_servers_calls_per_connection_are_on_the_wire() {
        let pacing = Arc::new(Pacing::new());
        let (sent, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let calls: Vec<_> = (0..ISSUANCES_ON_THE_WIRE + 3)
            .map(|_| {
                let (pacing, sent, release) = (pacing.clone(), sent.clone(), release.clone());
                tokio::spawn(async move {
                    pacing
                        .send(async {
                            sent.fetch_add(1, Ordering::SeqCst);
                            release.notified().await;
                            Ok::<_, Error>(())
                        })
                        .await
                })
            })
            .collect();
        while sent.load(Ordering::SeqCst) < ISSUANCES_ON_THE_WIRE {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sent.load(Ordering::SeqCst), ISSUANCES_ON_THE_WIRE);
        // Each call answered lets one more out, until all are sent.
        while sent.load(Ordering::SeqCst) < calls.len() || !calls.iter().all(|c| c.is_finished()) {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }
}
