//! Every CA a server signs with (DESIGN §14): the ACTIVE one signs new certificates; PREPARED
//! and RETIRING ones are in the trust bundle and sign CRLs and OCSP answers for what they
//! signed. [`Authorities`] is the [`Signer`] the service holds; the server swaps its
//! [`AuthoritySet`] whenever the CA registry changes ([`Authorities::reload`]), keeping every
//! CA it has already loaded.

use std::sync::{Arc, PoisonError, RwLock};

use mintgate_domain::Serial;
use mintgate_domain::authority::{CaRecord, CaState, PreparedCa};
use mintgate_domain::ports::{
    CrlSpec, InspectedCa, IssueSpec, OcspSpec, SignedCertificate, Signer, SignerError,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::signer::pem_encode;
use crate::{CaError, CaKey, CertificateAuthority};

/// Opens the key a CA record names (a file path or a PKCS#11 key label).
pub type KeyLoader = dyn Fn(&str) -> Result<CaKey, CaError> + Send + Sync;

/// One loaded CA with its state.
#[derive(Clone)]
pub struct LoadedCa {
    pub state: CaState,
    pub ca: Arc<CertificateAuthority<CaKey>>,
}

/// The CAs in the trust bundle that this server could load, normally one of them ACTIVE.
pub struct AuthoritySet {
    cas: Vec<LoadedCa>,
    /// None when the registry's ACTIVE CA could not be loaded here: nothing is signed then.
    active: Option<usize>,
    bundle_pem: String,
    version: String,
}

impl AuthoritySet {
    fn new(cas: Vec<LoadedCa>) -> Self {
        let active = cas.iter().position(|c| c.state == CaState::Active);
        Self::with_active(cas, active)
    }

    fn with_active(cas: Vec<LoadedCa>, active: Option<usize>) -> Self {
        let mut seen: Vec<&CertificateDer<'static>> = Vec::new();
        let mut bundle_pem = String::new();
        for c in &cas {
            for cert in c.ca.chain_der() {
                if !seen.contains(&cert) {
                    seen.push(cert);
                    bundle_pem.push_str(&pem_encode(cert));
                }
            }
        }
        let version = hex::encode(Sha256::digest(bundle_pem.as_bytes()));
        Self {
            cas,
            active,
            bundle_pem,
            version,
        }
    }

    /// The CA that signs new certificates; none when the registry's ACTIVE CA could not be
    /// loaded here.
    pub fn active(&self) -> Option<&Arc<CertificateAuthority<CaKey>>> {
        self.active.map(|i| &self.cas[i].ca)
    }

    /// Every CA in the bundle, in the registry's order (newest first).
    pub fn cas(&self) -> &[LoadedCa] {
        &self.cas
    }

    /// The CA with hex SKI `key_id`, if it is in the bundle.
    pub fn find(&self, key_id: &str) -> Option<&Arc<CertificateAuthority<CaKey>>> {
        self.cas
            .iter()
            .find(|c| c.ca.key_id_hex() == key_id)
            .map(|c| &c.ca)
    }

    /// Every certificate of every CA's chain, each once, PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Lowercase hex SHA-256 of [`AuthoritySet::bundle_pem`].
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The server's CAs behind the [`Signer`] port.
pub struct Authorities {
    current: RwLock<Arc<AuthoritySet>>,
    load_key: Box<KeyLoader>,
    /// Each CA stamps `<crl_base>/<key id>` into what it signs.
    crl_base: Option<String>,
    /// Whether a CA made by the dev PKI may be prepared (`--dev` only).
    dev: bool,
}

impl Authorities {
    /// Starts with `first` as the only (ACTIVE) CA. Without `dev`, a CA from the dev PKI is
    /// never prepared.
    pub fn new(
        first: CertificateAuthority<CaKey>,
        load_key: Box<KeyLoader>,
        crl_base: Option<String>,
        dev: bool,
    ) -> Self {
        let first = LoadedCa {
            state: CaState::Active,
            ca: Arc::new(first),
        };
        Self {
            current: RwLock::new(Arc::new(AuthoritySet::with_active(vec![first], Some(0)))),
            load_key,
            crl_base,
            dev,
        }
    }

    /// Builds a CA from its chain PEM and key with this server's CRL location.
    pub fn load(
        chain_pem: &str,
        key: CaKey,
        crl_base: Option<&str>,
    ) -> Result<CertificateAuthority<CaKey>, CaError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaError::CertificatePem)?;
        let first = chain
            .first()
            .ok_or(CaError::CertificateCount { found: 0 })?;
        let key_id = crate::signer::subject_key_id_hex(first)?;
        let crl_url = crl_base.map(|base| format!("{base}/{key_id}"));
        CertificateAuthority::with_chain(chain, key, crl_url)
    }

    /// The set signing now.
    pub fn current(&self) -> Arc<AuthoritySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the registry records for the CA a server starts with, before any rotation.
    pub fn first_record(&self, key_ref: &str, now: OffsetDateTime) -> Result<CaRecord, CaError> {
        let set = self.current();
        let ca = set.active().ok_or(CaError::CertificateCount { found: 0 })?;
        Ok(CaRecord {
            key_id: ca.key_id_hex().to_owned(),
            state: CaState::Active,
            subject: ca.subject().to_owned(),
            chain_pem: ca.chain_der().iter().map(|c| pem_encode(c)).collect(),
            key_ref: key_ref.to_owned(),
            serial: serial_hex(ca.ca_cert_der())?,
            not_after: ca.not_after(),
            prepared_at: now,
            activated_at: Some(now),
            retiring_at: None,
            retired_at: None,
            revoked_at: None,
            proposal_id: None,
        })
    }

    /// Makes the registry's CAs current: every CA in the bundle, its key opened unless it is
    /// loaded already; nothing else (a CA retired or revoked is dropped at once). A CA whose key
    /// cannot be opened here is left out (and reported); if that is the ACTIVE one, this server
    /// signs nothing until it can. Returns the CAs left out, with why.
    pub fn reload(&self, records: &[CaRecord]) -> Vec<(String, CaError)> {
        let before = self.current();
        let mut failed = Vec::new();
        let mut cas = Vec::new();
        for record in records.iter().filter(|r| r.state.in_bundle()) {
            let loaded = match before.find(&record.key_id) {
                Some(ca) => Ok(ca.clone()),
                None => (self.load_key)(&record.key_ref)
                    .and_then(|key| Self::load(&record.chain_pem, key, self.crl_base.as_deref()))
                    .map(Arc::new),
            };
            match loaded {
                Ok(ca) => cas.push(LoadedCa {
                    state: record.state,
                    ca,
                }),
                Err(e) => failed.push((record.key_id.clone(), e)),
            }
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(AuthoritySet::new(cas));
        failed
    }
}

impl Signer for Authorities {
    fn sign(&self, spec: &IssueSpec<'_>) -> Result<SignedCertificate, SignerError> {
        let set = self.current();
        let active = set.active().ok_or_else(|| {
            SignerError::Unavailable("the ACTIVE CA's key cannot be opened on this server".into())
        })?;
        active.sign(spec)
    }

    fn sign_crl(&self, spec: &CrlSpec<'_>) -> Result<Vec<u8>, SignerError> {
        let set = self.current();
        let ca = set
            .find(spec.issuer_key_id)
            .ok_or_else(|| not_here(spec.issuer_key_id))?;
        ca.sign_crl(spec)
    }

    fn sign_ocsp(&self, spec: &OcspSpec<'_>) -> Result<Vec<u8>, SignerError> {
        let set = self.current();
        let ca = set
            .find(spec.issuer_key_id)
            .ok_or_else(|| not_here(spec.issuer_key_id))?;
        ca.sign_ocsp(spec)
    }

    fn trust_bundle_pem(&self) -> String {
        self.current().bundle_pem.clone()
    }

    fn issuer_key_id(&self) -> String {
        let set = self.current();
        set.active()
            .map(|ca| ca.key_id_hex().to_owned())
            .unwrap_or_default()
    }

    /// The ACTIVE CA's notAfter; the epoch when there is none here (nothing may be signed).
    fn not_after(&self) -> OffsetDateTime {
        self.current()
            .active()
            .map_or(OffsetDateTime::UNIX_EPOCH, |ca| ca.not_after())
    }

    fn inspect(&self, chain_pem: &str, key_ref: &str) -> Result<InspectedCa, String> {
        let key = (self.load_key)(key_ref).map_err(|e| e.to_string())?;
        let ca = Self::load(chain_pem, key, self.crl_base.as_deref()).map_err(|e| e.to_string())?;
        if !self.dev && ca.chain_der().iter().any(|c| crate::is_dev_material(c)) {
            return Err(
                "the chain is dev material (made by `mintgate dev-certs`); it is accepted only \
                 with --dev"
                    .to_owned(),
            );
        }
        Ok(InspectedCa {
            key_id: ca.key_id_hex().to_owned(),
            prepared: PreparedCa {
                subject: ca.subject().to_owned(),
                chain_pem: ca.chain_der().iter().map(|c| pem_encode(c)).collect(),
                key_ref: key_ref.to_owned(),
                serial: serial_hex(ca.ca_cert_der()).map_err(|e| e.to_string())?,
                not_after: ca.not_after().unix_timestamp(),
            },
        })
    }
}

fn not_here(key_id: &str) -> SignerError {
    SignerError::Build(format!("CA {key_id} is not in this server's trust bundle").into())
}

/// A certificate's serial as the registry writes serials.
fn serial_hex(der: &[u8]) -> Result<String, CaError> {
    let cert = crate::signer::parse_certificate(der)?;
    Serial::from_der_bytes(cert.raw_serial())
        .map(|s| s.to_hex())
        .map_err(|_| CaError::NotACa {
            reason: "its serial number is not a valid serial",
        })
}
