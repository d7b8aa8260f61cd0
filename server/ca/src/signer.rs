//! The issuing CA: [`CertificateAuthority`] implements the domain's [`Signer`] port.
//!
//! It builds every certificate from the profile in DESIGN §4 ([`LeafProfile`]) and signs the
//! CSR's public key with it; nothing but the public key is taken from a CSR. The private key sits
//! behind rcgen's one-method [`SigningKey`] trait ([`KeyBackend`]), so a PKCS#11 or KMS key can
//! replace the [`FileKey`] later. This module does no file or network I/O.

use std::fmt;
use std::net::IpAddr;

use mintgate_domain::model::RevocationReason;
use mintgate_domain::ports::{
    CrlSpec, IssueSpec, OcspSpec, SignedCertificate, Signer, SignerError,
};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, CrlDistributionPoint, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, SanType, SerialNumber, SigningKey, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::CaError;
use crate::key::FileKey;
use crate::ocsp::{self, OcspIssuer};

/// Longest common name X.509 allows (RFC 5280 `ub-common-name`).
const MAX_COMMON_NAME_LEN: usize = 64;

/// Where the issuing key lives. Any rcgen [`SigningKey`] that can be shared across threads is a
/// backend: a [`FileKey`], a [`Pkcs11Key`](crate::Pkcs11Key), or [`CaKey`](crate::CaKey) for
/// either. A backend's `Debug` must not print
/// secret material, and a failing remote key should return [`rcgen::Error::RemoteKeyError`] so
/// the failure is reported as "unavailable" rather than as a build error.
pub trait KeyBackend: SigningKey + Send + Sync + 'static {}

impl<T: SigningKey + Send + Sync + 'static> KeyBackend for T {}

/// The issuing CA: its certificate, its key and the CRL location it stamps into what it issues.
pub struct CertificateAuthority<K = FileKey> {
    issuer: Issuer<'static, K>,
    cert_der: CertificateDer<'static>,
    /// The issuing CA and the CAs above it, up to and including the root.
    chain_der: Vec<CertificateDer<'static>>,
    /// PEM of the chain without its root: what every issued certificate carries after itself.
    chain_pem: String,
    /// PEM of the whole chain: the trust bundle.
    bundle_pem: String,
    subject: String,
    not_after: OffsetDateTime,
    crl_url: Option<String>,
    /// The CA's subject key identifier, and its hex form.
    key_id: Vec<u8>,
    key_id_hex: String,
    /// How OCSP CertIDs name this CA.
    ocsp: OcspIssuer,
}

impl CertificateAuthority<FileKey> {
    /// Loads the CA from its certificate PEM (exactly one certificate) and PKCS#8 key PEM.
    ///
    /// Refuses a certificate that is not a CA, a key that does not match it, and a CA whose
    /// name or CRL URL would make the certificates it signs unusable.
    pub fn from_pem(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        crl_url: Option<String>,
    ) -> Result<Self, CaError> {
        Self::from_pem_with_key(ca_cert_pem, FileKey::from_pem(ca_key_pem)?, crl_url)
    }
}

impl<K: KeyBackend> CertificateAuthority<K> {
    /// Loads the CA from its certificate PEM (exactly one certificate) and a key in any
    /// backend, with the checks of [`CertificateAuthority::new`].
    pub fn from_pem_with_key(
        ca_cert_pem: &str,
        key: K,
        crl_url: Option<String>,
    ) -> Result<Self, CaError> {
        let certs = CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaError::CertificatePem)?;
        Self::with_chain(certs, key, crl_url)
    }

    /// Builds the CA from its chain (the issuing CA certificate first, then the CAs above it up
    /// to a self-signed root; a self-signed issuing CA alone is a chain too) and any key
    /// backend, with the checks of [`CertificateAuthority::new`] and of every link.
    pub fn with_chain(
        chain: Vec<CertificateDer<'static>>,
        key: K,
        crl_url: Option<String>,
    ) -> Result<Self, CaError> {
        crate::chain::check_chain(&chain)?;
        let mut ca = Self::new(chain[0].clone(), key, crl_url)?;
        let root = chain.len() - 1;
        ca.chain_pem = chain[..root.max(1)].iter().map(|c| pem_encode(c)).collect();
        ca.bundle_pem = chain.iter().map(|c| pem_encode(c)).collect();
        ca.chain_der = chain;
        Ok(ca)
    }

    /// Builds the CA from its certificate alone (its own trust bundle) and any key backend,
    /// checking that they belong together by signing one probe certificate and verifying it
    /// against the CA certificate. [`CertificateAuthority::with_chain`] adds the chain above it.
    pub fn new(
        cert_der: CertificateDer<'static>,
        key: K,
        crl_url: Option<String>,
    ) -> Result<Self, CaError> {
        let (not_after, subject, key_id) = {
            let cert = parse_certificate(&cert_der)?;
            check_is_ca(&cert)?;
            if key.subject_public_key_info() != cert.public_key().raw {
                return Err(CaError::KeyMismatch);
            }
            let key_id = subject_key_id(&cert)?;
            (
                cert.validity().not_after.to_datetime(),
                cert.subject().to_string(),
                key_id,
            )
        };
        let ocsp = OcspIssuer::from_certificate(&cert_der)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(CaError::IssuerName)?;
        let cert_pem = pem_encode(&cert_der);
        let ca = Self {
            issuer,
            chain_der: vec![cert_der.clone()],
            cert_der,
            chain_pem: cert_pem.clone(),
            bundle_pem: cert_pem,
            subject,
            not_after,
            crl_url,
            key_id_hex: hex::encode(&key_id),
            key_id,
            ocsp,
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// Builds and signs a certificate from `spec` and the profile of DESIGN §4.
    ///
    /// Same as [`Signer::sign`], with the detailed error.
    pub fn issue(&self, spec: &IssueSpec<'_>) -> Result<SignedCertificate, CaError> {
        let public_key = subject_public_key(spec.spki_der)?;
        let spki_is_rsa = *public_key.algorithm() == rcgen::PKCS_RSA_SHA256;
        if spki_is_rsa != spec.key_type.is_rsa() {
            return Err(CaError::KeyTypeMismatch {
                declared: spec.key_type,
            });
        }
        let profile = LeafProfile {
            spiffe_id: spec.spiffe_id.as_str(),
            dns_names: spec.dns_names,
            ip_addresses: &[],
            serial: spec.serial.as_bytes(),
            not_before: spec.not_before,
            not_after: spec.not_after.min(self.not_after),
            rsa_key: spki_is_rsa,
            client_auth: true,
            server_auth: spec.server_auth,
            crl_url: self.crl_url.as_deref(),
        };
        let params = profile.params()?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(classify_signing_error)?;
        let der = cert.der().to_vec();
        let chain_pem = format!("{}{}", cert.pem(), self.chain_pem);
        Ok(SignedCertificate {
            der,
            issuer_key_id: self.key_id_hex.clone(),
            chain_pem,
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// Signs a CRL listing `spec.entries`, with the CA's key identifier as its AKI.
    ///
    /// Same as [`Signer::sign_crl`], with the detailed error.
    pub fn crl(&self, spec: &CrlSpec<'_>) -> Result<Vec<u8>, CaError> {
        let params = CertificateRevocationListParams {
            this_update: spec.this_update,
            next_update: spec.next_update,
            crl_number: SerialNumber::from(spec.number),
            issuing_distribution_point: None,
            revoked_certs: spec
                .entries
                .iter()
                .map(|e| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(e.serial.as_bytes()),
                    revocation_time: e.revoked_at,
                    reason_code: Some(crl_reason(e.reason)),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_id.clone()),
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(classify_signing_error)?;
        Ok(crl.der().to_vec())
    }

    /// Signs a basic OCSP response as the CA itself: ResponderID by key hash, no certificates
    /// attached (a relying party holds the issuer it asks about).
    ///
    /// Same as [`Signer::sign_ocsp`], with the detailed error.
    pub fn ocsp(&self, spec: &OcspSpec<'_>) -> Result<Vec<u8>, CaError> {
        let tbs = ocsp::basic_response(&self.ocsp, spec)?;
        let message = x509_cert::der::Encode::to_der(&tbs).map_err(CaError::OcspEncoding)?;
        let key = self.issuer.key();
        let signature = key.sign(&message).map_err(classify_signing_error)?;
        ocsp::signed_response(tbs, key.algorithm(), &signature)
    }

    /// Hex subject key identifier: the authority key identifier of what it signs.
    pub fn key_id_hex(&self) -> &str {
        &self.key_id_hex
    }

    /// How OCSP CertIDs name this CA.
    pub fn ocsp_issuer(&self) -> &OcspIssuer {
        &self.ocsp
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The issuing CA, then each CA above it, the root last.
    pub fn chain_der(&self) -> &[CertificateDer<'static>] {
        &self.chain_der
    }

    /// The end of the CA certificate's validity; nothing it issues outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate's subject, as text (for messages that name the CA).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The CRL distribution point stamped into issued certificates, if any.
    pub fn crl_url(&self) -> Option<&str> {
        self.crl_url.as_deref()
    }

    /// Signs a probe certificate for the CA's own public key and checks that it names the CA as
    /// issuer byte for byte and that the CA's public key verifies its signature. This catches a
    /// subject rcgen cannot reproduce (multi-valued or repeated attributes), a key that signs with
    /// another key than the certificate's, and a CRL URL that is not a valid IA5 string.
    fn self_check(&self) -> Result<(), CaError> {
        let ca = parse_certificate(&self.cert_der)?;
        let public_key = subject_public_key(ca.public_key().raw)?;
        // Any validity will do for a probe; the CA's own start keeps the wall clock out of it.
        let start = ca.validity().not_before.to_datetime();
        let profile = LeafProfile {
            spiffe_id: "spiffe://mintgate.invalid/self-check",
            dns_names: &[],
            ip_addresses: &[],
            serial: &[1],
            not_before: start,
            not_after: start + time::Duration::minutes(1),
            rsa_key: false,
            client_auth: true,
            server_auth: false,
            crl_url: self.crl_url.as_deref(),
        };
        let probe = profile
            .params()?
            .signed_by(&public_key, &self.issuer)
            .map_err(classify_signing_error)?;
        let probe = parse_certificate(probe.der())?;
        if probe.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CaError::SelfCheck {
                reason: "the issuer name differs from the CA certificate's subject",
            });
        }
        if probe.verify_signature(Some(ca.public_key())).is_err() {
            return Err(CaError::SelfCheck {
                reason: "the CA certificate's public key does not verify the signature",
            });
        }
        Ok(())
    }
}

impl<K: KeyBackend> Signer for CertificateAuthority<K> {
    fn sign(&self, spec: &IssueSpec<'_>) -> Result<SignedCertificate, SignerError> {
        self.issue(spec).map_err(signer_error)
    }

    fn sign_crl(&self, spec: &CrlSpec<'_>) -> Result<Vec<u8>, SignerError> {
        self.crl(spec).map_err(signer_error)
    }

    fn sign_ocsp(&self, spec: &OcspSpec<'_>) -> Result<Vec<u8>, SignerError> {
        self.ocsp(spec).map_err(signer_error)
    }

    fn trust_bundle_pem(&self) -> String {
        self.bundle_pem.clone()
    }

    fn issuer_key_id(&self) -> String {
        self.key_id_hex.clone()
    }

    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// A failing key is "unavailable" (retry); anything else could not be built.
fn signer_error(e: CaError) -> SignerError {
    match e {
        CaError::KeyUnavailable(_) => SignerError::Unavailable(Box::new(e)),
        _ => SignerError::Build(Box::new(e)),
    }
}

fn crl_reason(reason: RevocationReason) -> rcgen::RevocationReason {
    use rcgen::RevocationReason as R;
    match reason {
        RevocationReason::Unspecified => R::Unspecified,
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
    }
}

impl<K> fmt::Debug for CertificateAuthority<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("crl_url", &self.crl_url)
            .finish_non_exhaustive()
    }
}

/// The certificate profile of DESIGN §4 for an end-entity certificate. Every field is decided by
/// Mintgate; nothing is copied from a CSR.
pub(crate) struct LeafProfile<'a> {
    pub(crate) spiffe_id: &'a str,
    pub(crate) dns_names: &'a [String],
    pub(crate) ip_addresses: &'a [IpAddr],
    pub(crate) serial: &'a [u8],
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    /// Adds keyEncipherment (RSA key transport).
    pub(crate) rsa_key: bool,
    pub(crate) client_auth: bool,
    pub(crate) server_auth: bool,
    pub(crate) crl_url: Option<&'a str>,
}

impl LeafProfile<'_> {
    /// The rcgen parameters: one URI SAN, the DNS and IP SANs, CA:FALSE (critical), KeyUsage
    /// (critical), EKU, the serial, SKI/AKI, the CRL distribution point, and the validity
    /// truncated to whole seconds as X.509 stores it.
    pub(crate) fn params(&self) -> Result<CertificateParams, CaError> {
        let not_before = self.not_before.truncate_to_second();
        let not_after = self.not_after.truncate_to_second();
        if not_before >= not_after {
            return Err(CaError::EmptyValidity {
                not_before,
                not_after,
            });
        }
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(self.serial));
        params.distinguished_name = DistinguishedName::new();
        if self.spiffe_id.len() <= MAX_COMMON_NAME_LEN {
            params
                .distinguished_name
                .push(DnType::CommonName, self.spiffe_id);
        }
        params.subject_alt_names = self.subject_alt_names()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.rsa_key {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        if self.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if self.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        if let Some(url) = self.crl_url {
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![url.to_owned()],
            }];
        }
        Ok(params)
    }

    fn subject_alt_names(&self) -> Result<Vec<SanType>, CaError> {
        let uri = self
            .spiffe_id
            .to_owned()
            .try_into()
            .map_err(CaError::InvalidName)?;
        let mut sans = vec![SanType::URI(uri)];
        for name in self.dns_names {
            let name = name.clone().try_into().map_err(CaError::InvalidName)?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(self.ip_addresses.iter().copied().map(SanType::IpAddress));
        Ok(sans)
    }
}

/// Turns DER SubjectPublicKeyInfo into rcgen's public key, refusing anything rcgen would not
/// write back byte for byte (so the certificate certifies exactly the key the CSR proved).
pub(crate) fn subject_public_key(spki_der: &[u8]) -> Result<SubjectPublicKeyInfo, CaError> {
    let key = SubjectPublicKeyInfo::from_der(spki_der).map_err(CaError::SubjectPublicKey)?;
    if key.subject_public_key_info() != spki_der {
        return Err(CaError::SubjectPublicKeyNotCanonical);
    }
    Ok(key)
}

/// PEM of one certificate, with a trailing newline.
pub(crate) fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // base64 is ASCII, so any byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A CA certificate's subject key identifier (RFC 5280 requires one of a CA).
fn subject_key_id(cert: &X509Certificate<'_>) -> Result<Vec<u8>, CaError> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .ok_or(CaError::NotACa {
            reason: "subjectKeyIdentifier is missing (RFC 5280 requires it of a CA)",
        })
}

/// The hex subject key identifier of the CA certificate `der`.
pub fn subject_key_id_hex(der: &[u8]) -> Result<String, CaError> {
    subject_key_id(&parse_certificate(der)?).map(hex::encode)
}

pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::CertificateParse(e.into()))?;
    Ok(cert)
}

pub(crate) fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let basic = cert
        .basic_constraints()
        .map_err(CaError::CertificateParse)?
        .map(|ext| ext.value);
    if !basic.is_some_and(|bc| bc.ca) {
        return Err(CaError::NotACa {
            reason: "basicConstraints CA:TRUE is missing",
        });
    }
    let usage = cert
        .key_usage()
        .map_err(CaError::CertificateParse)?
        .map(|ext| ext.value);
    if usage.is_some_and(|ku| !ku.key_cert_sign()) {
        return Err(CaError::NotACa {
            reason: "keyUsage lacks keyCertSign",
        });
    }
    Ok(())
}

/// A failure of the key itself is "unavailable" (retry); anything else is a build error.
fn classify_signing_error(e: rcgen::Error) -> CaError {
    match e {
        rcgen::Error::RemoteKeyError | rcgen::Error::RingUnspecified => CaError::KeyUnavailable(e),
        _ => CaError::Build(e),
    }
}
