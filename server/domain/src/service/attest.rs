//! Identity verification, its own stage (DESIGN §3): each [`Attestor`] looks at the caller's peer
//! identity and the evidence a request carries, and returns only the attributes issuance needs.
//! Adapters: [`NodeCert`] (the bootstrap certificate itself), [`JoinToken`] (one-time,
//! short-lived, stored hashed, bound to one SPIFFE ID) and [`Jwt`] (a Kubernetes
//! service-account token, verified against a key set the server reads through [`KeySource`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use time::OffsetDateTime;

use super::tokens::{token_hash, token_id_of};
use crate::error::AttestationError;
use crate::jwt::{self, JwtError, JwtRules, ServiceAccount};
use crate::model::{Caller, CallerKind};
use crate::ports::KeySource;
use crate::store::CertificateStore;
use crate::{Error, SpiffeId};

/// What a request brings besides its client certificate.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The SPIFFE ID the CSR asks for.
    pub wanted: &'a SpiffeId,
    pub join_token: Option<&'a str>,
    /// A Kubernetes service-account token (never logged).
    pub service_account_token: Option<&'a str>,
    pub now: OffsetDateTime,
    /// The token a retry of the same request already consumed, which it may present again.
    pub consumed_by_this_request: Option<&'a str>,
}

/// The attributes attestation established, merged over every attestor that spoke.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attested {
    /// The node identity proved by a bootstrap certificate.
    pub node: Option<SpiffeId>,
    /// The one SPIFFE ID a join token allows asking for.
    pub bound_identity: Option<SpiffeId>,
    /// The join token to consume in the issuing transaction.
    pub join_token_id: Option<String>,
    /// The service account a verified token named; its SPIFFE ID is the one asked for.
    pub service_account: Option<ServiceAccount>,
    /// Names of the attestors that vouched, in order (for the audit trail).
    pub via: Vec<&'static str>,
}

pub type AttestFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, Error>> + Send + 'a>>;

/// One way of verifying who is asking. Returns `Ok(true)` when it vouched (and filled in what it
/// proved), `Ok(false)` when it has nothing to say about this request, and an error when the
/// evidence it owns is bad.
pub trait Attestor<S>: Send + Sync {
    fn name(&self) -> &'static str;

    fn attest<'a>(
        &'a self,
        store: &'a S,
        caller: &'a Caller,
        evidence: Evidence<'a>,
        into: &'a mut Attested,
    ) -> AttestFuture<'a>;
}

/// `node_cert`: a caller whose certificate the bootstrap CA issued is that node.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeCert;

impl<S> Attestor<S> for NodeCert {
    fn name(&self) -> &'static str {
        "node_cert"
    }

    fn attest<'a>(
        &'a self,
        _store: &'a S,
        caller: &'a Caller,
        _evidence: Evidence<'a>,
        into: &'a mut Attested,
    ) -> AttestFuture<'a> {
        Box::pin(async move {
            if caller.kind != CallerKind::Node {
                return Ok(false);
            }
            into.node = Some(caller.id.clone());
            Ok(true)
        })
    }
}

/// `join_token`: the token must exist, match its stored hash, be unused, unexpired and bound to
/// the SPIFFE ID asked for. Consumption happens in the issuing transaction, so two requests racing
/// with one token cannot both win.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinToken;

impl<S: CertificateStore> Attestor<S> for JoinToken {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn attest<'a>(
        &'a self,
        store: &'a S,
        _caller: &'a Caller,
        evidence: Evidence<'a>,
        into: &'a mut Attested,
    ) -> AttestFuture<'a> {
        Box::pin(async move {
            let Some(token) = evidence.join_token.filter(|t| !t.is_empty()) else {
                return Ok(false);
            };
            let invalid = || Error::from(AttestationError::JoinTokenInvalid);
            let token_id = token_id_of(token).ok_or_else(invalid)?;
            let record = store.join_token(token_id).await?.ok_or_else(invalid)?;
            if !constant_time_eq(record.token_hash.as_bytes(), token_hash(token).as_bytes()) {
                return Err(invalid());
            }
            if record.used_at.is_some()
                && evidence.consumed_by_this_request != Some(record.token_id.as_str())
            {
                return Err(AttestationError::JoinTokenUsed.into());
            }
            if evidence.now >= record.expires_at {
                return Err(AttestationError::JoinTokenExpired.into());
            }
            if record.spiffe_id != evidence.wanted.as_str() {
                return Err(AttestationError::JoinTokenWrongIdentity.into());
            }
            into.bound_identity = Some(evidence.wanted.clone());
            into.join_token_id = Some(record.token_id);
            Ok(true)
        })
    }
}

/// `jwt`: a Kubernetes projected service-account token, verified against the configured key set
/// (see [`crate::jwt`]), that maps to exactly the SPIFFE ID asked for. Off (the default), any
/// token is refused with `JWT_NOT_CONFIGURED` rather than ignored.
#[derive(Clone, Default)]
pub struct Jwt {
    config: Option<(JwtRules, Arc<dyn KeySource>)>,
}

impl Jwt {
    pub fn new(rules: JwtRules, keys: Arc<dyn KeySource>) -> Self {
        Self {
            config: Some((rules, keys)),
        }
    }
}

impl<S> Attestor<S> for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn attest<'a>(
        &'a self,
        _store: &'a S,
        _caller: &'a Caller,
        evidence: Evidence<'a>,
        into: &'a mut Attested,
    ) -> AttestFuture<'a> {
        Box::pin(async move {
            let Some(token) = evidence.service_account_token.filter(|t| !t.is_empty()) else {
                return Ok(false);
            };
            let Some((rules, keys)) = &self.config else {
                return Err(AttestationError::Jwt(JwtError::NotConfigured).into());
            };
            let verified = match jwt::verify(token, &keys.current(), rules, evidence.now) {
                // A key the set lacks may have been published since it was read.
                Err(JwtError::KeyUnknown) => match keys.refresh().await {
                    Some(fresh) => jwt::verify(token, &fresh, rules, evidence.now),
                    None => Err(JwtError::KeyUnknown),
                },
                other => other,
            }
            .map_err(AttestationError::Jwt)?;
            if verified.spiffe_id != *evidence.wanted {
                return Err(AttestationError::Jwt(JwtError::WrongIdentity {
                    mapped: verified.spiffe_id.to_string(),
                })
                .into());
            }
            into.service_account = Some(verified.account);
            Ok(true)
        })
    }
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("rules", &self.config.as_ref().map(|(rules, _)| rules))
            .finish_non_exhaustive()
    }
}

/// The attestors a server runs, in order (`jwt` off until [`super::Mintgate::with_jwt`]).
pub fn default_attestors<S: CertificateStore>() -> Vec<Box<dyn Attestor<S>>> {
    vec![
        Box::new(NodeCert),
        Box::new(JoinToken),
        Box::new(Jwt::default()),
    ]
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
