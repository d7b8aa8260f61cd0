//! Join tokens: created by an operator, bound to one SPIFFE ID, one-time, short-lived, stored
//! only as a hash. The token is an HMAC of its id under a server secret, so a retry with the same
//! request id can be answered with the same token without ever storing it.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Mintgate, payload_hash};
use crate::lifecycle::RequestState;
use crate::model::{Caller, NewRequest, RequestKind};
use crate::policy::{Operation, Target};
use crate::store::{CertificateStore, Inserted, NewJoinToken};
use crate::{Error, RequestId, SpiffeId, Ttl};

const TOKEN_PREFIX: &str = "mgjt";
/// Default and longest join token lifetimes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The HMAC key join tokens are derived from. Its `Debug` prints no secret.
#[derive(Clone)]
pub struct JoinTokenSecret([u8; 32]);

impl JoinTokenSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn token_for(&self, token_id: &str) -> String {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(token_id.as_bytes());
        let tag =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{TOKEN_PREFIX}.{token_id}.{tag}")
    }
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> ! {
    // Invariant: Hmac::new_from_slice only fails for fixed-size-key MACs, and HMAC has none.
    panic!("HMAC rejected a 32-byte key")
}

impl fmt::Debug for JoinTokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinTokenSecret(<redacted>)")
    }
}

/// Hex SHA-256 of a token, as stored.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token id inside a presented token, if it has our shape.
pub(crate) fn token_id_of(token: &str) -> Option<&str> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(TOKEN_PREFIX), Some(id), Some(_), None) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// CreateJoinToken as the api hands it over.
#[derive(Debug, Clone)]
pub struct JoinTokenInput {
    pub request_id: String,
    pub spiffe_id: String,
    pub ttl: Option<(i64, i32)>,
}

/// A join token, shown to its creator.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedJoinToken {
    pub token: String,
    pub token_id: String,
    pub spiffe_id: String,
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for CreatedJoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedJoinToken")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl<S: CertificateStore> Mintgate<S> {
    /// Admin/CreateJoinToken.
    pub async fn create_join_token(
        &self,
        caller: &Caller,
        input: JoinTokenInput,
    ) -> Result<CreatedJoinToken, Error> {
        let request_id = RequestId::parse(&input.request_id)?;
        let spiffe_id = SpiffeId::parse_in(&input.spiffe_id, &self.trust_domain)?;
        let decision = self
            .authorize(
                caller,
                Operation::CreateJoinToken,
                Target::Identity(&spiffe_id),
            )
            .await?;
        let ttl = match input.ttl {
            Some((s, n)) => Ttl::from_parts(s, n, MAX_TOKEN_TTL)?,
            None => Ttl::from_policy(DEFAULT_TOKEN_TTL),
        };
        let ttl_text = ttl.as_duration().as_secs().to_string();
        let hash = payload_hash(&[
            RequestKind::JoinToken.as_str().as_bytes(),
            spiffe_id.as_str().as_bytes(),
            ttl_text.as_bytes(),
        ]);
        let caller_id = caller.id.as_str();
        if let Some(existing) = self
            .store
            .find_request(caller_id, request_id.as_str())
            .await?
        {
            return self.replay_token(existing, &hash);
        }
        let now = self.clock.now();
        let mut id_bytes = [0u8; 16];
        self.random.fill(&mut id_bytes);
        let token_id = hex::encode(id_bytes);
        let token = self.token_secret.token_for(&token_id);
        let expires_at = now + ttl.as_duration();
        let mut event = self.audit(
            now,
            caller_id,
            "join_token.created",
            format!("token:{token_id}"),
        );
        event.spiffe_id = Some(spiffe_id.to_string());
        event.request_id = Some(request_id.to_string());
        event.not_after = Some(expires_at.unix_timestamp());
        let request = NewRequest {
            caller: caller_id.to_owned(),
            request_id: request_id.to_string(),
            kind: RequestKind::JoinToken,
            payload_hash: hash.clone(),
            state: RequestState::Issued,
            reason: None,
            spiffe_id: spiffe_id.to_string(),
            serial: None,
            token_id: Some(token_id.clone()),
            token_expires_at: Some(expires_at),
            decision: Some(decision),
            now,
            risk: None,
            hold: None,
        };
        let stored = NewJoinToken {
            token_id: token_id.clone(),
            token_hash: token_hash(&token),
            spiffe_id: spiffe_id.to_string(),
            created_by: caller_id.to_owned(),
            expires_at,
        };
        match self
            .store
            .insert_join_token(request, stored, vec![event])
            .await?
        {
            Inserted::New(_) => Ok(CreatedJoinToken {
                token,
                token_id,
                spiffe_id: spiffe_id.to_string(),
                expires_at,
            }),
            Inserted::Duplicate(existing) => self.replay_token(*existing, &hash),
        }
    }

    fn replay_token(
        &self,
        existing: crate::model::RequestRecord,
        hash: &str,
    ) -> Result<CreatedJoinToken, Error> {
        if existing.kind != RequestKind::JoinToken || existing.payload_hash != hash {
            return Err(Error::IdempotencyKeyReused);
        }
        let (Some(token_id), Some(expires_at)) = (existing.token_id, existing.token_expires_at)
        else {
            return Err(Error::Internal("join token request without a token".into()));
        };
        Ok(CreatedJoinToken {
            token: self.token_secret.token_for(&token_id),
            token_id,
            spiffe_id: existing.spiffe_id,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_per_id_and_parse_back() {
        let s = JoinTokenSecret::new([7; 32]);
        let t = s.token_for("abc");
        assert_eq!(t, s.token_for("abc"));
        assert_ne!(t, s.token_for("abd"));
        assert_ne!(t, JoinTokenSecret::new([8; 32]).token_for("abc"));
        assert_eq!(token_id_of(&t), Some("abc"));
        assert_eq!(token_id_of("mgjt..x"), None);
        assert_eq!(token_id_of("garbage"), None);
        assert!(!format!("{s:?}").contains('7'));
    }
}
