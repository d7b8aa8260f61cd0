//! The trust bundle as this server publishes it (DESIGN §14): Admin/ListAuthorities answers
//! with it and Revocation/WatchTrustBundle streams it, the current one first, then each change.
//! The application publishes a new one whenever the CA registry changes, here or on another
//! replica.

use std::sync::Arc;

use mintgate_domain::authority::CaRecord;
use mintgate_proto::v1;
use tokio::sync::watch;

use crate::convert;

/// The current trust bundle and its subscribers.
#[derive(Debug, Clone)]
pub struct BundleFeed(watch::Sender<Arc<v1::TrustBundle>>);

impl Default for BundleFeed {
    fn default() -> Self {
        Self(watch::Sender::new(Arc::new(v1::TrustBundle::default())))
    }
}

impl BundleFeed {
    /// Publishes the bundle `bundle_pem` (whose SHA-256 is `version`) with every CA the
    /// registry knows. Subscribers hear of it only when something changed.
    pub fn publish(&self, bundle_pem: &str, version: &str, authorities: &[CaRecord]) {
        let next = v1::TrustBundle {
            bundle_pem: bundle_pem.to_owned(),
            version: version.to_owned(),
            authorities: authorities.iter().map(convert::authority).collect(),
        };
        self.0.send_if_modified(|current| {
            let changed = **current != next;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
    }

    /// The bundle now.
    pub fn current(&self) -> Arc<v1::TrustBundle> {
        self.0.borrow().clone()
    }

    /// Follows it; the current value counts as unseen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<v1::TrustBundle>> {
        let mut rx = self.0.subscribe();
        rx.mark_changed();
        rx
    }
}
