//! Connections a read keeps open between uses, at most a fixed number: what the read before
//! deciding holds outside sqlx's pools, on SQLite and on PostgreSQL.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mintgate_domain::store::StoreError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::closed;

pub(crate) struct Kept<C> {
    /// One permit per connection; closed with the store.
    permits: Arc<Semaphore>,
    /// Idle connections and when each was last used; `None` once the store is closed.
    idle: Mutex<Option<Vec<(C, Instant)>>>,
}

impl<C> Kept<C> {
    pub(crate) fn new(connections: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(connections)),
            idle: Mutex::new(Some(Vec::new())),
        }
    }

    /// Leave to use one connection until the permit is dropped: reads wait for one rather than
    /// open more connections. Fails once the store is closed.
    pub(crate) async fn permit(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())
    }

    /// The connection used last and when; `None` when none is idle. Fails once the store is
    /// closed.
    pub(crate) fn take(&self) -> Result<Option<(C, Instant)>, StoreError> {
        Ok(self.idle().as_mut().ok_or_else(closed)?.pop())
    }

    /// Keeps `conn`, just used, for the next read; drops it once the store is closed.
    pub(crate) fn put(&self, conn: C) {
        if let Some(idle) = self.idle().as_mut() {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes every idle connection; reads fail from now on, as the store's other reads do.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.idle().take();
    }

    fn idle(&self) -> MutexGuard<'_, Option<Vec<(C, Instant)>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}
