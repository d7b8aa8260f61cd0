//! The loops behind [`super::CredentialManager`]: asking until a request is issued (waiting
//! through holds with the same request id, CSR and key), and renewing inside the window for
//! as long as the credential lives.

use mintgate_proto::v1;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    CircuitBreaker, Clock, Credential, Endpoint, RenewalPolicy, key_and_csr, proto_duration,
    renewal_time,
};
use crate::hold::HOLD_EXPIRED;
use crate::{Backoff, Client, CredentialState, Error, Issuance, new_request_id};

/// Asks for the first certificate until it is issued. A held request is asked about again after
/// its `retry_after` with the same request (id, CSR, join token); once held, a transient failure
/// is retried with backoff rather than losing the request, and so is a request a busy server
/// shed (waiting as long as it said). Any other refusal (including `HOLD_DENIED` and
/// `HOLD_EXPIRED`) is final.
pub(super) async fn enroll_until_issued(
    bootstrap: &Client,
    request: v1::EnrollRequest,
    key_pem: String,
    policy: &RenewalPolicy,
    clock: &dyn Clock,
    state: &watch::Sender<CredentialState>,
) -> Result<Credential, Error> {
    let mut backoff = Backoff::new(policy.min_backoff, policy.max_backoff);
    let mut held = false;
    loop {
        let delay = match bootstrap.enroll(request.clone()).await {
            Ok(answer) => match Issuance::from_response(answer, key_pem.clone())? {
                Issuance::Issued(credential) => return Ok(credential),
                Issuance::Held(hold) => {
                    tracing::info!(
                        request_id = %request.request_id,
                        hold_id = %hold.hold_id,
                        reason = %hold.reason,
                        approvals = hold.approvals,
                        quorum = hold.quorum,
                        "enrollment held for approval; asking again with the same request id"
                    );
                    held = true;
                    backoff.reset();
                    let wait = hold.retry_after;
                    state.send_replace(CredentialState::Held(hold));
                    wait
                }
            },
            Err(e) if held && e.is_retryable() => {
                tracing::warn!(error = %e, request_id = %request.request_id, "asking about the held enrollment failed; backing off");
                backoff.next_delay_after(e.retry_after)
            }
            // Shed by a busy server, which says when to come back: nothing was recorded.
            Err(e) if e.retry_after.is_some() && e.is_retryable() => {
                tracing::info!(error = %e, request_id = %request.request_id, "the server is busy; asking again when it said");
                backoff.next_delay_after(e.retry_after)
            }
            Err(e) => return Err(e),
        };
        clock.sleep(delay).await;
    }
}

/// Renews the credential on `tx` inside each window until it expires unrenewed, publishing
/// what it does on `state`.
pub(super) async fn renew_forever(
    tx: watch::Sender<Credential>,
    state: watch::Sender<CredentialState>,
    endpoint: Endpoint,
    policy: RenewalPolicy,
    clock: std::sync::Arc<dyn Clock>,
) {
    let clock = clock.as_ref();
    let mut breaker = CircuitBreaker::new(policy.breaker_threshold, policy.breaker_cooldown);
    loop {
        let credential = tx.borrow().clone();
        let at = renewal_time(&credential, &policy, rand::random::<f64>());
        sleep_until(clock, at).await;
        match renew_once(&credential, &endpoint, &policy, clock, &mut breaker, &state).await {
            Renewal::Renewed(renewed) => {
                tracing::info!(serial = %renewed.serial, not_after = %renewed.not_after, "certificate renewed");
                state.send_replace(CredentialState::Current);
                if tx.send(renewed).is_err() {
                    return; // nobody listens any more
                }
            }
            Renewal::Refused(e) => {
                // Refused for good: the current certificate is still valid, so it stays in use
                // until it ends; asking again would only be refused again (or, for a denied
                // hold, put the same question to the approvers who just said no).
                tracing::error!(serial = %credential.serial, error = %e, not_after = %credential.not_after, "renewal refused; keeping the current certificate until it expires");
                state.send_replace(CredentialState::Refused(e));
                sleep_until(clock, credential.not_after).await;
                break;
            }
            Renewal::Expired => break,
        }
    }
    let serial = tx.borrow().serial.clone();
    tracing::error!(%serial, "certificate expired before it could be renewed");
    state.send_replace(CredentialState::Expired);
}

/// How one renewal ended.
enum Renewal {
    Renewed(Credential),
    Refused(Error),
    /// The certificate expired first.
    Expired,
}

/// One renewal request: its id, CSR and the key the CSR was made with.
struct Attempt {
    request: v1::RenewRequest,
    key_pem: String,
}

impl Attempt {
    fn new(spiffe_id: &str, policy: &RenewalPolicy) -> Result<Self, Error> {
        let (key, csr) = key_and_csr(spiffe_id)?;
        Ok(Self {
            request: v1::RenewRequest {
                request_id: new_request_id(),
                csr: csr.into_bytes(),
                ttl: policy.ttl.map(proto_duration),
            },
            key_pem: key.serialize_pem(),
        })
    }
}

/// Retries one renewal (same key, CSR and request id, so a retry after an unknown outcome gets
/// the same certificate, and a held renewal stays one request) until it succeeds, the server
/// refuses for good, or the certificate expires. A hold that expired undecided closes that
/// request: the next attempt is a new one (new request id and key) that approvers may decide.
async fn renew_once(
    credential: &Credential,
    endpoint: &Endpoint,
    policy: &RenewalPolicy,
    clock: &dyn Clock,
    breaker: &mut CircuitBreaker,
    state: &watch::Sender<CredentialState>,
) -> Renewal {
    let mut attempt = match Attempt::new(&credential.spiffe_id, policy) {
        Ok(a) => a,
        Err(e) => return Renewal::Refused(e),
    };
    let mut backoff = Backoff::new(policy.min_backoff, policy.max_backoff);
    while clock.now() < credential.not_after {
        if let Some(until) = breaker
            .open_until()
            .filter(|_| !breaker.allows(clock.now()))
        {
            sleep_until(clock, until).await;
        }
        let call = async {
            let client =
                Client::connect(&endpoint.url, &endpoint.server_name, &credential.tls()).await?;
            client.renew(attempt.request.clone()).await
        };
        let delay = match call.await {
            Ok(answer) => {
                breaker.success();
                match Issuance::from_response(answer, attempt.key_pem.clone()) {
                    Ok(Issuance::Issued(renewed)) => return Renewal::Renewed(renewed),
                    Ok(Issuance::Held(hold)) => {
                        tracing::info!(
                            request_id = %attempt.request.request_id,
                            hold_id = %hold.hold_id,
                            reason = %hold.reason,
                            "renewal held for approval; asking again with the same request id"
                        );
                        backoff.reset();
                        let wait = hold.retry_after;
                        state.send_replace(CredentialState::Held(hold));
                        wait
                    }
                    Err(e) => return Renewal::Refused(e),
                }
            }
            Err(e) if e.is_retryable() => {
                breaker.failure(clock.now());
                tracing::warn!(error = %e, "renewal failed; backing off");
                backoff.next_delay_after(e.retry_after)
            }
            Err(e) if e.reason == HOLD_EXPIRED => {
                tracing::warn!(error = %e, request_id = %attempt.request.request_id, "the renewal's hold expired undecided; asking anew");
                state.send_replace(CredentialState::Current);
                attempt = match Attempt::new(&credential.spiffe_id, policy) {
                    Ok(a) => a,
                    Err(e) => return Renewal::Refused(e),
                };
                backoff.next_delay()
            }
            Err(e) => return Renewal::Refused(e),
        };
        clock.sleep(delay).await;
    }
    Renewal::Expired
}

pub(super) async fn sleep_until(clock: &dyn Clock, at: OffsetDateTime) {
    let wait = at - clock.now();
    if wait.is_positive() {
        clock.sleep(wait.unsigned_abs()).await;
    }
}
