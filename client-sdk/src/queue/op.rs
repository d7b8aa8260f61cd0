//! [`QueuedOp`]: one operation a [`DurableQueue`](super::DurableQueue) delivers, how it is sent,
//! and what each answer of the server means for it.

use mintgate_proto::v1;
use serde::{Deserialize, Serialize};

use crate::{Client, Error, ErrorKind, new_request_id};

/// One operation to deliver, with the request id that makes delivering it again harmless.
///
/// To queue a call you already sent once without learning its outcome, keep the request id it
/// was sent with: the server then applies it at most once across both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedOp {
    /// Fixed when the op is created; every attempt sends it.
    pub request_id: String,
    /// What to do.
    pub action: OpAction,
}

/// What a [`QueuedOp`] asks of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OpAction {
    /// Revocation/Revoke: one certificate, by serial (hex).
    Revoke {
        /// The certificate's serial, hex.
        serial: String,
        /// Why, as the CRL will say.
        #[serde(with = "reason_name")]
        reason: v1::RevocationReason,
    },
}

/// The server's answer to an applied [`QueuedOp`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OpAnswer {
    /// The revocation as recorded (the same entry on every replay of one request id).
    Revoked(v1::RevocationEvent),
}

impl QueuedOp {
    /// An op with a fresh request id.
    pub fn new(action: OpAction) -> Self {
        Self {
            request_id: new_request_id(),
            action,
        }
    }

    /// Revoke the certificate with this serial (hex), with a fresh request id.
    pub fn revoke(serial: impl Into<String>, reason: v1::RevocationReason) -> Self {
        Self::new(OpAction::Revoke {
            serial: serial.into(),
            reason,
        })
    }

    /// One attempt, with this op's request id.
    pub(super) async fn send(&self, client: &Client) -> Result<OpAnswer, Error> {
        match &self.action {
            OpAction::Revoke { serial, reason } => client
                .revoke(v1::RevokeRequest {
                    request_id: self.request_id.clone(),
                    serial: serial.clone(),
                    reason: (*reason).into(),
                })
                .await
                .map(OpAnswer::Revoked),
        }
    }

    /// What a failed attempt means for this op (the table on `DurableQueue`).
    pub(super) fn verdict(&self, error: &Error) -> Verdict {
        if error.is_retryable() {
            return Verdict::Retry;
        }
        if !error.is_user_fault() {
            // Not Mintgate's own final word (a bug, or a proxy without ErrorInfo).
            return Verdict::Hold;
        }
        match &self.action {
            OpAction::Revoke { .. } => revoke_verdict(error),
        }
    }
}

/// What to do with an op after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Final, and the goal holds or is moot: remove the op.
    Settled,
    /// Final, and the op can never be applied as written: move it aside.
    Rejected,
    /// Keep it (and the ops after it) and try again later.
    Retry,
    /// Keep it (and the ops after it) until a person acts.
    Hold,
}

/// A Mintgate user-fault answer to Revoke.
fn revoke_verdict(error: &Error) -> Verdict {
    match error.kind() {
        // Serials are the server's own: one it never issued will never be known to it.
        ErrorKind::NotFound => Verdict::Settled,
        ErrorKind::FailedPrecondition => match error.reason.as_str() {
            // Revoked by another request, or expired (refused everywhere already): the
            // certificate is unusable, which is all a revocation is for.
            "ALREADY_REVOKED" | "CERTIFICATE_EXPIRED" => Verdict::Settled,
            // A renewal moved the certificate between the server's read and write; nothing
            // was recorded, so the same request is decided afresh next time.
            "CERTIFICATE_CHANGED" => Verdict::Retry,
            _ => Verdict::Hold,
        },
        ErrorKind::InvalidRequest
        | ErrorKind::IdempotencyKeyReused
        | ErrorKind::PermissionDenied => Verdict::Rejected,
        ErrorKind::Unavailable | ErrorKind::ResourceExhausted => Verdict::Retry,
        ErrorKind::OutOfRange | ErrorKind::Unauthenticated | ErrorKind::Internal => Verdict::Hold,
    }
}

/// A revocation reason on disk by its proto name (`REVOCATION_REASON_KEY_COMPROMISE`), which
/// stays readable and never changes meaning.
mod reason_name {
    use mintgate_proto::v1::RevocationReason;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(
        reason: &RevocationReason,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(reason.as_str_name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<RevocationReason, D::Error> {
        let name = String::deserialize(d)?;
        RevocationReason::from_str_name(&name)
            .ok_or_else(|| D::Error::custom(format!("unknown revocation reason {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoke(serial: &str) -> QueuedOp {
        QueuedOp::revoke(serial, v1::RevocationReason::KeyCompromise)
    }

    #[test]
    fn final_answers_are_mintgates_own() {
        use Verdict::{Hold, Rejected, Retry, Settled};
        use tonic::Code;
        let (user, system) = (Some("user"), Some("system"));
        let cases = [
            // Done or moot.
            (Code::FailedPrecondition, "ALREADY_REVOKED", user, Settled),
            (
                Code::FailedPrecondition,
                "CERTIFICATE_EXPIRED",
                user,
                Settled,
            ),
            (Code::NotFound, "NOT_FOUND", user, Settled),
            // Never possible as written.
            (Code::InvalidArgument, "SERIAL_INVALID", user, Rejected),
            (
                Code::InvalidArgument,
                "IDEMPOTENCY_KEY_REUSED",
                user,
                Rejected,
            ),
            (Code::PermissionDenied, "IDENTITY_MISMATCH", user, Rejected),
            // Worth another try.
            (Code::Unavailable, "TRANSPORT", None, Retry),
            (Code::Unavailable, "REQUEST_IN_PROGRESS", system, Retry),
            (Code::FailedPrecondition, "CERTIFICATE_CHANGED", user, Retry),
            // For a person: a proxy's 403/404 (no ErrorInfo), a server bug, our credentials.
            (Code::NotFound, "NOTFOUND", None, Hold),
            (Code::PermissionDenied, "PERMISSIONDENIED", None, Hold),
            (Code::Internal, "INTERNAL", system, Hold),
            (Code::Unauthenticated, "UNAUTHENTICATED", user, Hold),
            (Code::FailedPrecondition, "SOMETHING_NEW", user, Hold),
        ];
        for (code, reason, fault, want) in cases {
            let error = Error {
                code,
                reason: reason.to_owned(),
                message: String::new(),
                fault: fault.map(str::to_owned),
                metadata: Default::default(),
                retry_after: None,
            };
            assert_eq!(revoke("0a").verdict(&error), want, "{error:?}");
        }
    }
}
