//! The trust bundle as this server publishes it (DESIGN §14): Admin/ListAuthorities answers
//! with it and Revocation/WatchTrustBundle streams it, the current one first, then each change.
//! The application publishes a new one whenever the CA registry changes, here or on another
//! replica.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use mintgate_domain::authority::CaRecord;
use mintgate_proto::v1;
use tokio::sync::watch;

use crate::convert;

/// Makes this server's CAs current with the registry, and its revocation set with the log.
pub type Reload = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The current trust bundle and its subscribers.
#[derive(Clone)]
pub struct BundleFeed {
    bundle: watch::Sender<Arc<v1::TrustBundle>>,
    reload: Arc<OnceLock<Reload>>,
}

impl std::fmt::Debug for BundleFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleFeed")
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

impl Default for BundleFeed {
    fn default() -> Self {
        Self {
            bundle: watch::Sender::new(Arc::new(v1::TrustBundle::default())),
            reload: Arc::default(),
        }
    }
}

impl BundleFeed {
    /// How [`BundleFeed::reloaded`] brings this server up to date (set once, by the server).
    pub fn set_reload(&self, reload: Reload) {
        // Set once at start; a second call changes nothing.
        let _ = self.reload.set(reload);
    }

    /// Brings this server's CAs and revocations up to date: an approved CA change takes effect
    /// here before its approval is answered.
    pub async fn reloaded(&self) {
        if let Some(reload) = self.reload.get() {
            reload().await;
        }
    }

    /// Publishes the bundle `bundle_pem` (whose SHA-256 is `version`) with every CA the
    /// registry knows. Subscribers hear of it only when something changed.
    pub fn publish(&self, bundle_pem: &str, version: &str, authorities: &[CaRecord]) {
        let next = v1::TrustBundle {
            bundle_pem: bundle_pem.to_owned(),
            version: version.to_owned(),
            authorities: authorities.iter().map(convert::authority).collect(),
        };
        self.bundle.send_if_modified(|current| {
            let changed = **current != next;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
    }

    /// The bundle now.
    pub fn current(&self) -> Arc<v1::TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// Follows it; the current value counts as unseen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<v1::TrustBundle>> {
        let mut rx = self.bundle.subscribe();
        rx.mark_changed();
        rx
    }
}
