//! The SDK's error: the gRPC code, Mintgate's stable reason, and what a caller can do about it.

use std::collections::BTreeMap;

use rustls::AlertDescription;
use tonic_types::StatusExt;

use crate::transport;

/// What kind of failure an [`Error`] is, which decides what the caller should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed (CSR, TTL, request id, serial...): fix it, do not retry as is.
    InvalidRequest,
    /// The request id was used before with a different payload: use a new request id.
    IdempotencyKeyReused,
    /// Not allowed: policy, attestation, operator role, blocked identity.
    PermissionDenied,
    /// The certificate or request is in a state that forbids this (revoked, superseded,
    /// expired, already closed).
    FailedPrecondition,
    /// No such request or certificate.
    NotFound,
    /// Too many streams, a subscriber that fell behind, or load shedding: back off and retry.
    ResourceExhausted,
    /// A watch cursor beyond the server's head: restart from a cursor the server knows.
    OutOfRange,
    /// The client certificate was not accepted.
    Unauthenticated,
    /// The server, its database or the network is unavailable: retry with backoff.
    Unavailable,
    /// A bug on the server side.
    Internal,
}

/// A failed call: the gRPC code, Mintgate's reason code, and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?} {reason}: {message}")]
pub struct Error {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// Stable reason from `google.rpc.ErrorInfo` (e.g. `CSR_SIGNATURE_INVALID`), or
    /// `TRANSPORT` when the call never got an answer.
    pub reason: String,
    /// A message safe to show; never contains secrets.
    pub message: String,
    /// `user` or `system`, from `ErrorInfo.metadata["fault"]` (or `user` when the server
    /// refused this client's certificate at the handshake); `None` without an answer.
    pub fault: Option<String>,
    /// The rest of `ErrorInfo.metadata`: what the reason is about, e.g. `policy_version` and
    /// `determining_policies` for `POLICY_DENIED`, `limit_bytes` for `MESSAGE_TOO_LARGE`.
    pub metadata: BTreeMap<String, String>,
    /// How long the server asks the caller to wait before trying again
    /// (`google.rpc.RetryInfo`), e.g. when it sheds an issuance (`SERVER_BUSY`, `CALLER_BUSY`).
    pub retry_after: Option<std::time::Duration>,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use tonic::Code;
        match self.code {
            Code::InvalidArgument if self.reason == "IDEMPOTENCY_KEY_REUSED" => {
                ErrorKind::IdempotencyKeyReused
            }
            Code::InvalidArgument => ErrorKind::InvalidRequest,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::FailedPrecondition | Code::AlreadyExists => ErrorKind::FailedPrecondition,
            Code::NotFound => ErrorKind::NotFound,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::Internal | Code::Unimplemented | Code::DataLoss => ErrorKind::Internal,
            _ => ErrorKind::Unavailable,
        }
    }

    /// Whether the same call may succeed later, after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unavailable | ErrorKind::ResourceExhausted
        )
    }

    /// One entry of the error's metadata (see [`Error::metadata`]).
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Whether the server said the fault is the caller's.
    pub fn is_user_fault(&self) -> bool {
        self.fault.as_deref() == Some("user")
    }

    /// The server refused this client's certificate at the handshake with `alert`.
    fn refused(alert: AlertDescription) -> Self {
        let reason = match alert {
            AlertDescription::CertificateRevoked => "CERTIFICATE_REVOKED",
            AlertDescription::CertificateExpired => "CERTIFICATE_EXPIRED",
            _ => "CERTIFICATE_REFUSED",
        };
        Self {
            code: tonic::Code::Unauthenticated,
            reason: reason.to_owned(),
            message: format!(
                "the server refused this client's certificate at the TLS handshake (alert {alert:?})"
            ),
            fault: Some("user".to_owned()),
            metadata: BTreeMap::new(),
            retry_after: None,
        }
    }

    pub(crate) fn invalid(reason: &str, message: impl Into<String>) -> Self {
        Self {
            code: tonic::Code::InvalidArgument,
            reason: reason.to_owned(),
            message: message.into(),
            fault: Some("user".to_owned()),
            metadata: BTreeMap::new(),
            retry_after: None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let info = status.get_details_error_info();
        // A call on a channel that reconnected, and whose new connection was refused.
        if let Some(alert) = info
            .is_none()
            .then(|| transport::refusal_in(&status))
            .flatten()
        {
            return Self::refused(alert);
        }
        let (reason, mut metadata) = match info {
            Some(info) => (info.reason, info.metadata.into_iter().collect()),
            None => (
                format!("{:?}", status.code()).to_uppercase(),
                BTreeMap::new(),
            ),
        };
        let fault = metadata.remove("fault");
        let retry_after = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        Self {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
            fault,
            metadata,
            retry_after,
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        if let Some(alert) = transport::refusal_in(&e) {
            return Self::refused(alert);
        }
        Self {
            code: tonic::Code::Unavailable,
            reason: "TRANSPORT".to_owned(),
            message: e.to_string(),
            fault: None,
            metadata: BTreeMap::new(),
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: tonic::Code, reason: &str) -> Error {
        Error {
            code,
            reason: reason.to_owned(),
            message: String::new(),
            fault: None,
            metadata: BTreeMap::new(),
            retry_after: None,
        }
    }

    #[test]
    fn kinds_say_what_to_do() {
        use tonic::Code;
        let reused = error(Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(reused.kind(), ErrorKind::IdempotencyKeyReused);
        assert!(!reused.is_retryable());
        let bad = error(Code::InvalidArgument, "CSR_MALFORMED");
        assert_eq!(bad.kind(), ErrorKind::InvalidRequest);
        assert!(error(Code::Unavailable, "TRANSPORT").is_retryable());
        assert!(error(Code::ResourceExhausted, "SUBSCRIBER_TOO_SLOW").is_retryable());
        assert!(!error(Code::PermissionDenied, "IDENTITY_BLOCKED").is_retryable());
        assert_eq!(
            error(Code::FailedPrecondition, "ALREADY_REVOKED").kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[test]
    fn a_refused_certificate_is_named_and_not_retried_however_deep_the_alert_is() {
        let refused = transport::ConnectError::Refused(AlertDescription::CertificateRevoked);
        // As tonic hands a failed reconnect to a call: a status whose source is the error.
        let mut status = tonic::Status::unavailable("transport error");
        status.set_source(std::sync::Arc::new(std::io::Error::other(refused)));
        let err = Error::from(status);
        assert_eq!(
            (err.code, err.reason.as_str()),
            (tonic::Code::Unauthenticated, "CERTIFICATE_REVOKED")
        );
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(!err.is_retryable());
        assert!(err.is_user_fault());

        for (alert, reason) in [
            (AlertDescription::CertificateExpired, "CERTIFICATE_EXPIRED"),
            (AlertDescription::UnknownCA, "CERTIFICATE_REFUSED"),
            (AlertDescription::AccessDenied, "CERTIFICATE_REFUSED"),
        ] {
            assert_eq!(Error::refused(alert).reason, reason, "{alert:?}");
        }

        // Without an alert, a broken connection stays what it was.
        let mut status = tonic::Status::unavailable("transport error");
        status.set_source(std::sync::Arc::new(transport::ConnectError::Closed));
        assert_eq!(Error::from(status).code, tonic::Code::Unavailable);
    }
}
