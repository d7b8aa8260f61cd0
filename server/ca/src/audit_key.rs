//! The audit key: signs the audit chain's checkpoints (DESIGN §17). A key of its own, never the
//! CA's. [`FileAuditSigner`] implements the domain's [`AuditSigner`] port with a PKCS#8 key
//! (Ed25519 or ECDSA P-256) read from PEM; a PKCS#11 backend can implement the same port later.
//! [`verify_signature`] checks a checkpoint signature under a published public key, with no
//! private key and no database. This module does no file or network I/O.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mintgate_domain::audit::AuditKey;
use mintgate_domain::error::Cause;
use mintgate_domain::ports::{AuditSigner, SignerError};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, UnparsedPublicKey,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// `algorithm` of an Ed25519 audit key.
pub const ED25519_ALGORITHM: &str = "ED25519";
/// `algorithm` of an ECDSA P-256 audit key (signatures are fixed-length r ‖ s).
pub const P256_ALGORITHM: &str = "ECDSA_P256_SHA256";

/// SPKI DER of an Ed25519 key, before its 32 bytes (RFC 8410).
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// SPKI DER of a P-256 key (id-ecPublicKey, prime256v1), before its 65-byte uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// PKCS#8 v1 DER of an Ed25519 key, before its 32-byte seed (RFC 8410).
const ED25519_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why an audit key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("no PKCS#8 private key (\"PRIVATE KEY\" PEM) found")]
    Pem,
    #[error("the key is neither Ed25519 nor ECDSA P-256 in PKCS#8")]
    Unsupported,
    #[error("no SubjectPublicKeyInfo (\"PUBLIC KEY\" PEM) found")]
    PublicPem,
    #[error("the public key is neither Ed25519 nor ECDSA P-256")]
    UnsupportedPublic,
}

/// The audit key, loaded from PKCS#8. Its `Debug` names the key id only.
pub struct FileAuditSigner {
    pair: Pair,
    public: AuditKey,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair, SystemRandom),
}

impl FileAuditSigner {
    /// Parses a PKCS#8 PEM private key: Ed25519 (`openssl genpkey -algorithm ed25519`) or
    /// ECDSA P-256 (`openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256`).
    pub fn from_pem(pem: &str) -> Result<Self, AuditKeyError> {
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| AuditKeyError::Pem)?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// Parses a PKCS#8 DER private key (Ed25519 or ECDSA P-256).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AuditKeyError> {
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let spki = [ED25519_SPKI_PREFIX, pair.public_key().as_ref()].concat();
            return Ok(Self {
                pair: Pair::Ed25519(pair),
                public: AuditKey::new(ED25519_ALGORITHM, spki),
            });
        }
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| AuditKeyError::Unsupported)?;
        let spki = [P256_SPKI_PREFIX, pair.public_key().as_ref()].concat();
        Ok(Self {
            pair: Pair::P256(pair, rng),
            public: AuditKey::new(P256_ALGORITHM, spki),
        })
    }

    /// The insecure dev audit key (`--dev` only): an Ed25519 key whose seed is derived with
    /// HKDF-SHA256 from the dev PKI's join-token secret, so that the dev PKI needs no file more
    /// and a fresh dev PKI means a fresh audit key. Returned as PKCS#8 PEM.
    pub fn dev_pem(join_token_secret: &[u8; 32]) -> String {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"mintgate dev audit key");
        let info: &[&[u8]] = &[b"mintgate-audit-signing-key-v1 (insecure, --dev only)"];
        let mut seed = [0u8; 32];
        // Expanding 32 bytes from SHA-256 is always within HKDF's limit (255 × 32 bytes).
        let filled = salt
            .extract(join_token_secret)
            .expand(info, ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut seed));
        debug_assert!(filled.is_ok());
        pem("PRIVATE KEY", &[ED25519_PKCS8_PREFIX, &seed].concat())
    }
}

impl AuditSigner for FileAuditSigner {
    fn public_key(&self) -> &AuditKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        match &self.pair {
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::P256(pair, rng) => pair
                .sign(rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| SignerError::Unavailable(Box::new(e) as Cause)),
        }
    }
}

impl fmt::Debug for FileAuditSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileAuditSigner")
            .field("algorithm", &self.public.algorithm)
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

/// A published audit public key from its SPKI (DER).
pub fn audit_key_from_spki(spki_der: &[u8]) -> Result<AuditKey, AuditKeyError> {
    let algorithm = if spki_der.len() == ED25519_SPKI_PREFIX.len() + 32
        && spki_der.starts_with(ED25519_SPKI_PREFIX)
    {
        ED25519_ALGORITHM
    } else if spki_der.len() == P256_SPKI_PREFIX.len() + 65
        && spki_der.starts_with(P256_SPKI_PREFIX)
    {
        P256_ALGORITHM
    } else {
        return Err(AuditKeyError::UnsupportedPublic);
    };
    Ok(AuditKey::new(algorithm, spki_der.to_vec()))
}

/// A published audit public key from "PUBLIC KEY" PEM.
pub fn audit_key_from_pem(pem: &str) -> Result<AuditKey, AuditKeyError> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| AuditKeyError::PublicPem)?;
    audit_key_from_spki(der.as_ref())
}

/// Every "PUBLIC KEY" PEM block in `pem` (text between blocks, such as `# audit key` comment
/// lines, is skipped); none is an error.
pub fn audit_keys_from_pem(pem: &str) -> Result<Vec<AuditKey>, AuditKeyError> {
    let keys = SubjectPublicKeyInfoDer::pem_slice_iter(pem.as_bytes())
        .map(|der| {
            let der = der.map_err(|_| AuditKeyError::PublicPem)?;
            audit_key_from_spki(der.as_ref())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(AuditKeyError::PublicPem);
    }
    Ok(keys)
}

/// The key's SPKI as "PUBLIC KEY" PEM (what `openssl pkey -pubin` reads).
pub fn audit_key_pem(key: &AuditKey) -> String {
    pem("PUBLIC KEY", &key.spki_der)
}

/// Whether `signature` is `key`'s signature of `message`.
pub fn verify_signature(key: &AuditKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(checked) = audit_key_from_spki(&key.spki_der) else {
        return false;
    };
    let (algorithm, prefix): (&'static dyn ring::signature::VerificationAlgorithm, _) =
        match checked.algorithm.as_str() {
            ED25519_ALGORITHM => (&ED25519, ED25519_SPKI_PREFIX),
            _ => (&ECDSA_P256_SHA256_FIXED, P256_SPKI_PREFIX),
        };
    UnparsedPublicKey::new(algorithm, &key.spki_der[prefix.len()..])
        .verify(message, signature)
        .is_ok()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_and_p256_keys_sign_what_the_published_key_verifies() {
        let ed = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[7; 32])).unwrap();
        let p256 = crate::FileKey::generate_p256().unwrap().to_pkcs8_pem();
        let p256 = FileAuditSigner::from_pem(&p256).unwrap();
        for signer in [&ed, &p256] {
            let key = signer.public_key();
            let sig = signer.sign(b"message").unwrap();
            let published = audit_key_from_pem(&audit_key_pem(key)).unwrap();
            assert_eq!(&published, key);
            assert!(verify_signature(&published, b"message", &sig));
            assert!(!verify_signature(&published, b"messagf", &sig));
            // x509-parser, which we did not write, reads the SPKI we build.
            use x509_parser::prelude::FromDer as _;
            let (rest, spki) =
                x509_parser::x509::SubjectPublicKeyInfo::from_der(&key.spki_der).unwrap();
            assert!(rest.is_empty());
            assert!(spki.parsed().is_ok());
        }
        assert_eq!(ed.public_key().algorithm, ED25519_ALGORITHM);
        assert_eq!(p256.public_key().algorithm, P256_ALGORITHM);
        assert_ne!(ed.public_key().key_id, p256.public_key().key_id);
        // The dev key is the same for the same secret, another for another.
        let again = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[7; 32])).unwrap();
        let other = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[8; 32])).unwrap();
        assert_eq!(again.public_key(), ed.public_key());
        assert_ne!(other.public_key(), ed.public_key());
        assert!(!format!("{ed:?}").contains("PRIVATE"));
    }

    #[test]
    fn other_keys_are_refused() {
        assert!(matches!(
            FileAuditSigner::from_pem("not a key"),
            Err(AuditKeyError::Pem)
        ));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            FileAuditSigner::from_pem(&p384.serialize_pem()),
            Err(AuditKeyError::Unsupported)
        ));
        assert!(audit_key_from_spki(rcgen::PublicKeyData::der_bytes(&p384)).is_err());
    }

    /// What `audit keys` prints (each key after a comment line) reads back as every key.
    #[test]
    fn several_keys_with_comment_lines_read_back() {
        let a = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[1; 32])).unwrap();
        let b = FileAuditSigner::from_pem(&FileAuditSigner::dev_pem(&[2; 32])).unwrap();
        let pem: String = [&a, &b]
            .iter()
            .map(|s| {
                let key = s.public_key();
                format!(
                    "# audit key {} ({})\n{}",
                    key.key_id,
                    key.algorithm,
                    audit_key_pem(key)
                )
            })
            .collect();
        let read = audit_keys_from_pem(&pem).unwrap();
        assert_eq!(read, [a.public_key().clone(), b.public_key().clone()]);
        assert!(audit_keys_from_pem("# nothing here\n").is_err());
    }
}
