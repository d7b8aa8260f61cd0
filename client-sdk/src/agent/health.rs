//! The agent's `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::revoked_issuer;
use crate::{Clock, Credential, CredentialState, RevocationSet};

/// What `/healthz` looks at.
pub(super) struct Health {
    pub(super) set: Arc<RevocationSet>,
    pub(super) state: watch::Receiver<CredentialState>,
    /// The credential whose files are in place, once there is one.
    pub(super) installed: watch::Receiver<Option<Credential>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) max_staleness: Duration,
}

impl Health {
    /// `Ok(body)` for 200, `Err(reason)` for 503.
    fn check(&self) -> Result<String, String> {
        let state = self.state.borrow().clone();
        let Some(current) = self.installed.borrow().clone() else {
            return Err(match state {
                CredentialState::Held(hold) => hold.summary(),
                CredentialState::Refused(e) => format!("enrollment refused: {e}"),
                CredentialState::Enrolling
                | CredentialState::Current
                | CredentialState::Expired => "enrolling".to_owned(),
            });
        };
        if self.set.is_revoked(&current.serial) {
            Err("certificate revoked".to_owned())
        } else if revoked_issuer(&self.set, &current).is_some() {
            Err("certificate's issuing CA revoked".to_owned())
        } else if self.clock.now() >= current.not_after {
            Err("certificate expired".to_owned())
        } else if self
            .set
            .staleness()
            .is_none_or(|age| age > self.max_staleness)
        {
            Err("revocation feed stale".to_owned())
        } else {
            // The certificate in place is good; say what its renewal is waiting for.
            Ok(match state {
                CredentialState::Held(hold) => format!("ok; renewal {}", hold.summary()),
                CredentialState::Refused(e) => format!("ok; renewal refused: {e}"),
                CredentialState::Enrolling
                | CredentialState::Current
                | CredentialState::Expired => "ok".to_owned(),
            })
        }
    }
}

/// `GET /healthz`: 200 while the certificate is valid, not revoked and the feed is fresh (the
/// body says if a renewal is held or refused); 503 with the reason otherwise, including
/// `held: <reason> ...` while the enrollment waits for approvers.
pub(super) async fn serve_health(listener: TcpListener, health: Health) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let verdict = health.check();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let (status, body) = match verdict {
                Ok(ok) => ("200 OK", format!("{ok}\n")),
                Err(p) => ("503 Service Unavailable", format!("{p}\n")),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}
