//! OCSP (RFC 6960) on the wire: requests read, responses built for the issuing CA to sign.
//!
//! - [`OcspRequest::from_der`] reads what a client asks: its CertIDs and its nonce.
//! - [`OcspIssuer`] tells whether a CertID names our issuing CA: the SHA-1 or SHA-256 hash of
//!   its subject and of its public key (RFC 6960 §4.1.1), the two algorithms clients send.
//! - [`refusal`] encodes an unsigned error response (malformedRequest, unauthorized, ...).
//! - [`CertificateAuthority::ocsp`](crate::CertificateAuthority::ocsp) signs a successful one,
//!   built here by [`basic_response`] from the domain's [`OcspSpec`].
//!
//! The ASN.1 types are RustCrypto's `x509-ocsp` (on the `der` crate); hashes are ring's. No I/O.

use std::time::Duration;

use mintgate_domain::Serial;
use mintgate_domain::model::RevocationReason;
use mintgate_domain::ports::{OcspEntry, OcspSpec, OcspStatus};
use rcgen::SignatureAlgorithm;
use ring::digest;
use time::OffsetDateTime;
use x509_cert::der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use x509_cert::der::oid::db::rfc5912::{
    ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ID_SHA_1, ID_SHA_256, SHA_256_WITH_RSA_ENCRYPTION,
    SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
};
use x509_cert::der::oid::db::rfc6960::ID_PKIX_OCSP_NONCE;
use x509_cert::der::oid::db::rfc8410::ID_ED_25519;
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspResponse, ResponderId,
    ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::CaError;

/// Longest nonce accepted (RFC 8954 §2.1); a longer or empty one is a malformed request.
pub const MAX_NONCE_LEN: usize = 32;

/// What a client asks: the certificates it wants the status of, and its nonce.
#[derive(Debug, Clone)]
pub struct OcspRequest {
    pub certs: Vec<RequestedCert>,
    /// The nonce extension's value (extnValue, DER), to be echoed unchanged.
    pub nonce: Option<Vec<u8>>,
}

/// One CertID of a request.
#[derive(Debug, Clone)]
pub struct RequestedCert {
    id: CertId,
    der: Vec<u8>,
}

/// Why a request is malformed (answered with malformedRequest).
#[derive(Debug, thiserror::Error)]
pub enum OcspRequestError {
    #[error("not a DER OCSPRequest")]
    Decode(#[source] x509_cert::der::Error),
    #[error("the request asks about no certificate")]
    Empty,
    #[error("the nonce is {len} octets; 1 to {MAX_NONCE_LEN} are allowed (RFC 8954)")]
    Nonce { len: usize },
}

/// An unsigned OCSP error response (RFC 6960 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspRefusal {
    /// The request could not be read.
    MalformedRequest,
    /// The responder failed; the client may retry.
    InternalError,
    /// The responder cannot answer now; retry later.
    TryLater,
    /// The request names no certificate this responder answers for.
    Unauthorized,
}

/// The hashes by which a CertID names the issuing CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspIssuer {
    sha1: IssuerHashes,
    sha256: IssuerHashes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IssuerHashes {
    /// Hash of the DER of the CA certificate's subject.
    name: Vec<u8>,
    /// Hash of the CA's subjectPublicKey BIT STRING value (no tag, length or unused-bits octet).
    key: Vec<u8>,
}

impl OcspRequest {
    /// Reads a DER OCSPRequest. A signature on the request, if any, is ignored (RFC 6960 lets a
    /// responder accept unsigned requests); so are extensions other than the nonce.
    pub fn from_der(der: &[u8]) -> Result<Self, OcspRequestError> {
        let request = x509_ocsp::OcspRequest::from_der(der).map_err(OcspRequestError::Decode)?;
        let tbs = request.tbs_request;
        if tbs.request_list.is_empty() {
            return Err(OcspRequestError::Empty);
        }
        let certs = tbs
            .request_list
            .into_iter()
            .map(|r| {
                let der = r.req_cert.to_der().map_err(OcspRequestError::Decode)?;
                Ok(RequestedCert {
                    id: r.req_cert,
                    der,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let nonce = tbs
            .request_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
            .map(|e| e.extn_value.as_bytes().to_vec());
        if let Some(value) = &nonce {
            // extnValue holds the nonce OCTET STRING; some old clients put the bare octets.
            let len = OctetString::from_der(value).map_or(value.len(), |n| n.as_bytes().len());
            if !(1..=MAX_NONCE_LEN).contains(&len) {
                return Err(OcspRequestError::Nonce { len });
            }
        }
        Ok(Self { certs, nonce })
    }
}

impl RequestedCert {
    /// The CertID, DER, as the response must repeat it.
    pub fn cert_id_der(&self) -> &[u8] {
        &self.der
    }
}

impl OcspIssuer {
    /// The hashes of the CA certificate `der`.
    pub fn from_certificate(der: &[u8]) -> Result<Self, CaError> {
        let cert = crate::signer::parse_certificate(der)?;
        let name = cert.subject().as_raw();
        let key = &cert.public_key().subject_public_key.data;
        let hashes = |alg| IssuerHashes {
            name: digest::digest(alg, name).as_ref().to_vec(),
            key: digest::digest(alg, key).as_ref().to_vec(),
        };
        Ok(Self {
            sha1: hashes(&digest::SHA1_FOR_LEGACY_USE_ONLY),
            sha256: hashes(&digest::SHA256),
        })
    }

    /// Whether `cert`'s CertID names this CA, hashed with SHA-1 or SHA-256.
    pub fn names(&self, cert: &RequestedCert) -> bool {
        let id = &cert.id;
        let hashes = if id.hash_algorithm.oid == ID_SHA_1 {
            &self.sha1
        } else if id.hash_algorithm.oid == ID_SHA_256 {
            &self.sha256
        } else {
            return false;
        };
        id.issuer_name_hash.as_bytes() == hashes.name && id.issuer_key_hash.as_bytes() == hashes.key
    }

    /// The serial `cert` asks about, if its CertID names this CA and the serial is one
    /// Mintgate could have issued (positive, at most 20 octets).
    pub fn serial_of(&self, cert: &RequestedCert) -> Option<Serial> {
        if !self.names(cert) {
            return None;
        }
        let bytes = cert.id.serial_number.as_bytes();
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            return None; // negative
        }
        Serial::from_der_bytes(bytes).ok()
    }

    /// The ResponderID by key: the SHA-1 hash of the CA's public key (RFC 6960 §4.2.1).
    pub(crate) fn key_sha1(&self) -> &[u8] {
        &self.sha1.key
    }
}

/// An unsigned OCSPResponse carrying only `refusal`'s status, DER.
pub fn refusal(refusal: OcspRefusal) -> Vec<u8> {
    let response = match refusal {
        OcspRefusal::MalformedRequest => OcspResponse::malformed_request(),
        OcspRefusal::InternalError => OcspResponse::internal_error(),
        OcspRefusal::TryLater => OcspResponse::try_later(),
        OcspRefusal::Unauthorized => OcspResponse::unauthorized(),
    };
    // Three fixed octets of an ENUMERATED in a SEQUENCE; encoding it cannot fail, and were it to,
    // the same bytes written out by hand are the answer.
    response.to_der().unwrap_or_else(|_| {
        let code = match refusal {
            OcspRefusal::MalformedRequest => 1,
            OcspRefusal::InternalError => 2,
            OcspRefusal::TryLater => 3,
            OcspRefusal::Unauthorized => 6,
        };
        vec![0x30, 0x03, 0x0a, 0x01, code]
    })
}

/// The tbsResponseData of `spec`, responder named by the CA's key hash.
pub(crate) fn basic_response(
    issuer: &OcspIssuer,
    spec: &OcspSpec<'_>,
) -> Result<ResponseData, CaError> {
    let responses = spec
        .responses
        .iter()
        .map(single_response)
        .collect::<Result<Vec<_>, _>>()?;
    let response_extensions = match spec.nonce {
        Some(value) => Some(vec![Extension {
            extn_id: ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(value).map_err(CaError::OcspEncoding)?,
        }]),
        None => None,
    };
    Ok(ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(issuer.key_sha1()).map_err(CaError::OcspEncoding)?,
        ),
        produced_at: ocsp_time(spec.produced_at)?,
        responses,
        response_extensions,
    })
}

/// The whole successful OCSPResponse, DER, from the signed `tbs`.
pub(crate) fn signed_response(
    tbs: ResponseData,
    algorithm: &'static SignatureAlgorithm,
    signature: &[u8],
) -> Result<Vec<u8>, CaError> {
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: signature_algorithm(algorithm)?,
        signature: BitString::from_bytes(signature).map_err(CaError::OcspEncoding)?,
        certs: None,
    };
    OcspResponse::successful(basic)
        .and_then(|r| r.to_der())
        .map_err(CaError::OcspEncoding)
}

fn single_response(entry: &OcspEntry) -> Result<SingleResponse, CaError> {
    let cert_status = match entry.status {
        OcspStatus::Good => CertStatus::good(),
        OcspStatus::Revoked { revoked_at, reason } => CertStatus::revoked(RevokedInfo {
            revocation_time: ocsp_time(revoked_at)?,
            revocation_reason: crl_reason(reason),
        }),
        OcspStatus::Unknown => CertStatus::unknown(),
    };
    Ok(SingleResponse {
        cert_id: CertId::from_der(&entry.cert_id).map_err(CaError::OcspEncoding)?,
        cert_status,
        this_update: ocsp_time(entry.this_update)?,
        next_update: Some(ocsp_time(entry.next_update)?),
        single_extensions: None,
    })
}

/// The reason as the CRL states it: left out when unspecified (RFC 5280 §5.3.1), like the CRL.
fn crl_reason(reason: RevocationReason) -> Option<CrlReason> {
    match reason {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::CaCompromise => Some(CrlReason::CaCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
    }
}

/// A GeneralizedTime in whole seconds (RFC 5280 §4.1.2.5.2).
fn ocsp_time(at: OffsetDateTime) -> Result<OcspGeneralizedTime, CaError> {
    let seconds = u64::try_from(at.unix_timestamp()).map_err(|_| CaError::OcspTime { at })?;
    GeneralizedTime::from_unix_duration(Duration::from_secs(seconds))
        .map(OcspGeneralizedTime)
        .map_err(CaError::OcspEncoding)
}

/// The AlgorithmIdentifier of a signature by a key of `algorithm` (RFC 5758, 4055, 8410).
fn signature_algorithm(
    algorithm: &'static SignatureAlgorithm,
) -> Result<AlgorithmIdentifierOwned, CaError> {
    let with = |oid: ObjectIdentifier, null: bool| AlgorithmIdentifierOwned {
        oid,
        parameters: null.then(|| Any::from(Null)),
    };
    let known = [
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            with(ECDSA_WITH_SHA_256, false),
        ),
        (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            with(ECDSA_WITH_SHA_384, false),
        ),
        (&rcgen::PKCS_ED25519, with(ID_ED_25519, false)),
        (
            &rcgen::PKCS_RSA_SHA256,
            with(SHA_256_WITH_RSA_ENCRYPTION, true),
        ),
        (
            &rcgen::PKCS_RSA_SHA384,
            with(SHA_384_WITH_RSA_ENCRYPTION, true),
        ),
        (
            &rcgen::PKCS_RSA_SHA512,
            with(SHA_512_WITH_RSA_ENCRYPTION, true),
        ),
    ];
    known
        .into_iter()
        .find(|(known, _)| *known == algorithm)
        .map(|(_, id)| id)
        .ok_or(CaError::OcspAlgorithm)
}

#[cfg(test)]
mod tests;
