//! Which public keys and signature algorithms a CSR may use (DESIGN §4): P-256, P-384, Ed25519 and
//! RSA 2048/3072/4096 with e = 65537; signatures with SHA-256 or stronger, or Ed25519.
//!
//! Everything here reads only the encoded key and algorithm identifiers, so it runs before any
//! signature is verified.

use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::CsrError;
use crate::KeyType;

/// The only RSA public exponent accepted, big-endian without leading zeros.
const RSA_EXPONENT_65537: [u8; 3] = [0x01, 0x00, 0x01];
/// Length of an uncompressed SEC1 point (0x04 || X || Y) on P-256 and P-384.
const P256_POINT_LEN: usize = 65;
const P384_POINT_LEN: usize = 97;
const ED25519_KEY_LEN: usize = 32;
/// DER tag of NULL, the parameters of rsaEncryption.
const TAG_NULL: u32 = 5;

/// Classifies the CSR's public key, refusing every key outside the allowed set.
pub(super) fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, CsrError> {
    let alg = &spki.algorithm;
    let key = &spki.subject_public_key;
    if key.unused_bits != 0 {
        return Err(CsrError::PublicKeyInvalid);
    }
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let params = alg.parameters.as_ref().ok_or(CsrError::PublicKeyInvalid)?;
        // Explicit curve parameters (not a named curve) are refused like any other curve.
        let curve = params.as_oid().map_err(|_| CsrError::KeyTypeNotAllowed)?;
        let (key_type, point_len) = if curve == OID_EC_P256 {
            (KeyType::EcdsaP256, P256_POINT_LEN)
        } else if curve == OID_NIST_EC_P384 {
            (KeyType::EcdsaP384, P384_POINT_LEN)
        } else {
            return Err(CsrError::KeyTypeNotAllowed);
        };
        if key.data.len() != point_len || key.data.first() != Some(&0x04) {
            return Err(CsrError::PublicKeyInvalid);
        }
        Ok(key_type)
    } else if alg.algorithm == OID_SIG_ED25519 {
        if alg.parameters.is_some() || key.data.len() != ED25519_KEY_LEN {
            return Err(CsrError::PublicKeyInvalid);
        }
        Ok(KeyType::Ed25519)
    } else if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        if alg
            .parameters
            .as_ref()
            .is_some_and(|p| p.header.tag().0 != TAG_NULL)
        {
            return Err(CsrError::PublicKeyInvalid);
        }
        classify_rsa(&key.data)
    } else {
        Err(CsrError::KeyTypeNotAllowed)
    }
}

/// Checks that the CSR is signed with an allowed algorithm that fits its key type. A mismatch
/// (say an ECDSA signature on an RSA key) cannot have been made by that key.
pub(super) fn check_signature_algorithm(
    alg: &AlgorithmIdentifier<'_>,
    key_type: KeyType,
) -> Result<(), CsrError> {
    let oid = &alg.algorithm;
    let fits = if *oid == OID_PKCS1_SHA256WITHRSA
        || *oid == OID_PKCS1_SHA384WITHRSA
        || *oid == OID_PKCS1_SHA512WITHRSA
        || *oid == OID_PKCS1_RSASSAPSS
    {
        key_type.is_rsa()
    } else if *oid == OID_SIG_ECDSA_WITH_SHA256 || *oid == OID_SIG_ECDSA_WITH_SHA384 {
        matches!(key_type, KeyType::EcdsaP256 | KeyType::EcdsaP384)
    } else if *oid == OID_SIG_ED25519 {
        key_type == KeyType::Ed25519
    } else {
        // MD5, SHA-1 (with RSA, ECDSA or DSA), SHA-224 and anything unknown.
        return Err(CsrError::SignatureAlgorithmNotAllowed);
    };
    if fits {
        Ok(())
    } else {
        Err(CsrError::SignatureInvalid)
    }
}

/// Parses the PKCS#1 RSAPublicKey and checks modulus size and exponent.
fn classify_rsa(der: &[u8]) -> Result<KeyType, CsrError> {
    let (rest, key) = RSAPublicKey::from_der(der).map_err(|_| CsrError::PublicKeyInvalid)?;
    if !rest.is_empty() {
        return Err(CsrError::PublicKeyInvalid);
    }
    let bits = positive_bit_len(key.modulus).ok_or(CsrError::PublicKeyInvalid)?;
    let key_type = match bits {
        2048 => KeyType::Rsa2048,
        3072 => KeyType::Rsa3072,
        4096 => KeyType::Rsa4096,
        _ => return Err(CsrError::RsaKeySizeNotAllowed { bits }),
    };
    if strip_leading_zeros(key.exponent) != RSA_EXPONENT_65537 {
        return Err(CsrError::RsaExponentNotAllowed);
    }
    Ok(key_type)
}

/// Bit length of a positive DER INTEGER's content, `None` if it is zero or negative.
fn positive_bit_len(int: &[u8]) -> Option<usize> {
    if int.first().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    let magnitude = strip_leading_zeros(int);
    let top = magnitude.first()?;
    Some(magnitude.len() * 8 - top.leading_zeros() as usize)
}

fn strip_leading_zeros(int: &[u8]) -> &[u8] {
    let first = int.iter().position(|b| *b != 0).unwrap_or(int.len());
    &int[first..]
}
