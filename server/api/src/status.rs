//! The one mapping from domain errors to gRPC `Status`: a code from the error class, a safe
//! message prefixed with the RPC's name, and `google.rpc.ErrorInfo { reason, domain: "mintgate" }`
//! whose metadata says `fault` (`user` or `system`) plus what the error adds (a refusal by policy:
//! `policy_version`, `determining_policies`). System faults are logged
//! here with the request id and their cause; the client sees only a generic message.

use std::collections::HashMap;
use std::time::Duration;

use mintgate_domain::{Error, ErrorClass};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Mintgate error.
pub const ERROR_DOMAIN: &str = "mintgate";

/// Converts a domain error for the wire.
pub fn to_status(error: &Error, rpc: &str, request_id: &str) -> Status {
    let class = error.class();
    let code = match class {
        ErrorClass::InvalidArgument => Code::InvalidArgument,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
        ErrorClass::FailedPrecondition => Code::FailedPrecondition,
        ErrorClass::AlreadyExists => Code::AlreadyExists,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::ResourceExhausted => Code::ResourceExhausted,
        ErrorClass::OutOfRange => Code::OutOfRange,
        ErrorClass::Unavailable => Code::Unavailable,
        ErrorClass::Internal => Code::Internal,
    };
    if class.is_user_fault() {
        tracing::info!(rpc, request_id, reason = error.reason(), "refused: {error}");
    } else {
        tracing::error!(rpc, request_id, reason = error.reason(), error = ?error, "failed");
    }
    let mut metadata = HashMap::new();
    metadata.insert(
        "fault".to_owned(),
        if class.is_user_fault() {
            "user"
        } else {
            "system"
        }
        .to_owned(),
    );
    metadata.extend(
        error
            .metadata()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value)),
    );
    let details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata);
    // The message names the call: the same reason can come from several RPCs.
    Status::with_error_details(code, format!("{rpc}: {error}"), details)
}

/// A request that never reached the domain because the peer could not be identified.
pub(crate) fn unauthenticated() -> Status {
    let metadata = HashMap::from([("fault".to_owned(), "user".to_owned())]);
    let details = ErrorDetails::with_error_info("PEER_UNKNOWN", ERROR_DOMAIN, metadata);
    Status::with_error_details(
        Code::Unauthenticated,
        "the client certificate does not identify a known caller",
        details,
    )
}

/// A call still unanswered when the deadline its client set (`grpc-timeout`) passed (see
/// [`crate::deadline`]): the client's own choice, so a user fault; by then the client has
/// usually stopped waiting, but the outcome is counted with this reason.
pub(crate) fn client_timeout(path: &str, timeout: Duration) -> Status {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let rpc = rpc_name(path);
    tracing::info!(
        rpc,
        path,
        reason = "CLIENT_TIMEOUT",
        timeout_ms,
        "refused: no answer within the client's deadline"
    );
    let metadata = HashMap::from([
        ("fault".to_owned(), "user".to_owned()),
        ("timeout_ms".to_owned(), timeout_ms.to_string()),
    ]);
    let details = ErrorDetails::with_error_info("CLIENT_TIMEOUT", ERROR_DOMAIN, metadata);
    Status::with_error_details(
        Code::DeadlineExceeded,
        format!("{rpc}: no answer within the client's deadline (grpc-timeout) of {timeout_ms} ms"),
        details,
    )
}

/// The RPC's name in a request path, as `to_status` names it: `/mintgate.v1.Provisioning/Enroll`
/// → `Enroll`.
pub(crate) fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A call still unanswered at the server's own deadline (see [`crate::deadline`]): ours to fix
/// (a stuck database, a writer lock held elsewhere), and worth retrying.
pub(crate) fn server_timeout(path: &str, timeout: Duration) -> Status {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let rpc = rpc_name(path);
    tracing::error!(
        rpc,
        path,
        reason = "SERVER_TIMEOUT",
        timeout_ms,
        "failed: no answer within the server's call deadline"
    );
    let metadata = HashMap::from([("fault".to_owned(), "system".to_owned())]);
    let details = ErrorDetails::with_error_info("SERVER_TIMEOUT", ERROR_DOMAIN, metadata);
    Status::with_error_details(
        Code::DeadlineExceeded,
        format!("{rpc}: no answer within the server's deadline of {timeout_ms} ms; retry"),
        details,
    )
}
