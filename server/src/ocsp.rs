//! `/ocsp`: the OCSP responder (RFC 6960) on the HTTP port, answering from the same registry as
//! CheckStatus and the CRL, signed by the issuing CA itself.
//!
//! POST `/ocsp` takes a DER request (`application/ocsp-request`); GET `/ocsp/{base64}` takes it
//! base64-encoded in the path (RFC 6960 Appendix A; URL-encoded, padded or not, standard or
//! URL-safe alphabet). Every answer is HTTP 200 `application/ocsp-response`:
//!
//! - a signed response with one answer per CertID asked, in order: good (issued here, not
//!   revoked, not expired; a superseded certificate stays good until its notAfter), revoked
//!   (with its time and reason; the reason is left out when unspecified, as on the CRL) or
//!   unknown (never issued here, expired, or a CertID naming another issuer);
//!   thisUpdate is when the registry was read, nextUpdate [`OCSP_VALIDITY`] later; the
//!   request's nonce, if any, is echoed;
//! - `malformedRequest` for anything that is not an OCSP request of at most
//!   [`MAX_REQUEST_BYTES`] (nonce of 1 to 32 octets, RFC 8954), `unauthorized` when no CertID
//!   names our issuing CA (SHA-1 or SHA-256 CertIDs), `tryLater` when the database does not
//!   answer, `internalError` when signing fails.
//!
//! The crate owns no ASN.1: `mintgate_ca::ocsp` reads requests and the [`Signer`] port signs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use mintgate_ca::Authorities;
use mintgate_ca::ocsp::{OcspRefusal, OcspRequest, refusal};
use mintgate_domain::Serial;
use mintgate_domain::ports::{Clock, OcspEntry, OcspSpec, OcspStatus, Signer, SignerError};
use mintgate_domain::service::{CertificateStatus, Mintgate};
use mintgate_store::SqlStore;

use crate::http::HttpState;

/// Largest request accepted, DER (a request for one certificate with a nonce is about 120
/// octets; this allows a few dozen CertIDs).
pub(crate) const MAX_REQUEST_BYTES: usize = 4096;

/// How long an answer may be relied on (nextUpdate - thisUpdate). Answers are live, so this
/// only bounds how long a relying party caches one: a revocation reaches OCSP clients within
/// it, against up to an hour for the CRL. It equals the skew allowance relying parties such as
/// openssl grant by default, and `EXPIRY_SKEW`.
pub(crate) const OCSP_VALIDITY: Duration = Duration::from_secs(300);

/// Answers OCSP requests: reads them, looks the serials up, has the CA sign the answer.
pub(crate) struct OcspResponder {
    app: Arc<Mintgate<SqlStore>>,
    authorities: Arc<Authorities>,
    clock: Arc<dyn Clock>,
}

impl OcspResponder {
    pub(crate) fn new(
        app: Arc<Mintgate<SqlStore>>,
        authorities: Arc<Authorities>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            app,
            authorities,
            clock,
        }
    }

    /// The DER OCSPResponse to the DER request `der`.
    pub(crate) async fn respond(&self, der: &[u8]) -> Vec<u8> {
        if der.len() > MAX_REQUEST_BYTES {
            return refusal(OcspRefusal::MalformedRequest);
        }
        let request = match OcspRequest::from_der(der) {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return refusal(OcspRefusal::MalformedRequest);
            }
        };
        // The first CA in the trust bundle that a CertID names answers, for its own
        // certificates; CertIDs naming another issuer are unknown.
        let set = self.authorities.current();
        let Some(ca) = set
            .cas()
            .iter()
            .map(|c| &c.ca)
            .find(|ca| request.certs.iter().any(|c| ca.ocsp_issuer().names(c)))
        else {
            return refusal(OcspRefusal::Unauthorized);
        };
        let issuer = ca.ocsp_issuer();
        let asked: Vec<Option<Serial>> = request
            .certs
            .iter()
            .map(|cert| issuer.serial_of(cert))
            .collect();
        let serials: Vec<Serial> = asked.iter().flatten().cloned().collect();
        // Read before the registry: every status below is at least as fresh as thisUpdate.
        let now = self.clock.now();
        // Nothing to look up when every CertID names us with a serial we never issue.
        let statuses = if serials.is_empty() {
            Vec::new()
        } else {
            match self.app.registry_statuses(&serials).await {
                Ok(report) => report.statuses,
                Err(e) => {
                    tracing::warn!(error = %e, "OCSP: the registry could not be read");
                    return refusal(OcspRefusal::TryLater);
                }
            }
        };
        let responses: Vec<OcspEntry> = request
            .certs
            .iter()
            .zip(&asked)
            .map(|(cert, serial)| OcspEntry {
                cert_id: cert.cert_id_der().to_vec(),
                status: serial
                    .as_ref()
                    .map_or(OcspStatus::Unknown, |s| status_of(&statuses, s)),
                this_update: now,
                next_update: now + OCSP_VALIDITY,
            })
            .collect();
        let spec = OcspSpec {
            produced_at: now,
            issuer_key_id: ca.key_id_hex(),
            responses: &responses,
            nonce: request.nonce.as_deref(),
        };
        match self.authorities.sign_ocsp(&spec) {
            Ok(der) => der,
            Err(e) => {
                tracing::error!(error = %e, "OCSP: the response could not be signed");
                refusal(match e {
                    SignerError::Unavailable(_) => OcspRefusal::TryLater,
                    SignerError::Build(_) => OcspRefusal::InternalError,
                })
            }
        }
    }
}

/// POST `/ocsp`: the request is the body. A body over [`MAX_REQUEST_BYTES`] (the route's limit)
/// or one that cannot be read is a malformed request.
pub(crate) async fn post(
    State(state): State<HttpState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let der = match body {
        Ok(body) => state.ocsp.respond(&body).await,
        Err(e) => {
            tracing::debug!(error = %e, "unreadable OCSP request body");
            refusal(OcspRefusal::MalformedRequest)
        }
    };
    ocsp_response(der)
}

/// GET `/ocsp/{base64}`.
pub(crate) async fn get(
    State(state): State<HttpState>,
    request: Result<Path<String>, PathRejection>,
) -> Response {
    let der = match request.ok().and_then(|Path(b64)| decode_get(&b64)) {
        Some(der) => state.ocsp.respond(&der).await,
        None => refusal(OcspRefusal::MalformedRequest),
    };
    ocsp_response(der)
}

fn ocsp_response(der: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response()
}

/// The DER of a GET request's path segment (already URL-decoded): base64 in the standard
/// alphabet as RFC 6960 asks, or the URL-safe one some clients use, padded or not.
fn decode_get(b64: &str) -> Option<Vec<u8>> {
    if b64.len() > MAX_REQUEST_BYTES.div_ceil(3) * 4 {
        return None;
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [
        GeneralPurpose::new(&alphabet::STANDARD, config),
        GeneralPurpose::new(&alphabet::URL_SAFE, config),
    ]
    .iter()
    .find_map(|engine| engine.decode(b64).ok())
}

/// What the registry said of `serial` (always in the report: every serial asked is answered).
fn status_of(statuses: &[(String, CertificateStatus)], serial: &Serial) -> OcspStatus {
    let hex = serial.to_hex();
    statuses
        .iter()
        .find(|(s, _)| *s == hex)
        .map_or(OcspStatus::Unknown, |(_, status)| status.ocsp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_paths_decode_in_either_alphabet_with_or_without_padding() {
        // 0xfb 0xff encodes as "+/8=" (standard) and "-_8=" (URL-safe).
        for b64 in ["+/8=", "+/8", "-_8=", "-_8"] {
            assert_eq!(decode_get(b64), Some(vec![0xfb, 0xff]), "{b64}");
        }
        assert_eq!(decode_get("not base64!"), None);
        let long = "A".repeat(MAX_REQUEST_BYTES.div_ceil(3) * 4 + 4);
        assert_eq!(decode_get(&long), None);
    }
}
