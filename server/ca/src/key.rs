//! The issuing CA's private key, by backend: [`FileKey`] (a PKCS#8 PEM file, refused when group
//! or others may read it) and [`Pkcs11Key`] (in a token), and [`CaKey`], either of them, which is
//! what the server runs with. Each is an rcgen [`SigningKey`]; none prints secret material in
//! its `Debug`.

use std::fmt;
use std::path::Path;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::CaError;
use crate::pkcs11::Pkcs11Key;

/// A private key loaded from a PKCS#8 PEM file. Its `Debug` names the algorithm only.
pub struct FileKey(KeyPair);

impl FileKey {
    /// Parses a PKCS#8 PEM private key (P-256, P-384, Ed25519 or RSA).
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        KeyPair::from_pem(pem).map(Self).map_err(CaError::KeyPem)
    }

    /// Reads a PKCS#8 PEM key file, refusing one that group or others may access (mode 0600
    /// or stricter is required: anyone who can read the file can sign as the CA).
    pub fn from_file(path: &Path) -> Result<Self, CaError> {
        check_private_to_owner(path)?;
        let pem = std::fs::read_to_string(path).map_err(|e| CaError::io(path, e))?;
        Self::from_pem(&pem)
    }

    /// Generates a fresh P-256 key.
    pub fn generate_p256() -> Result<Self, CaError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(CaError::KeyGeneration)
    }

    /// The key as PKCS#8 PEM, for writing it to a file (mode 0600) and nowhere else.
    pub fn to_pkcs8_pem(&self) -> String {
        self.0.serialize_pem()
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKey")
            .field("algorithm", self.0.algorithm())
            .finish_non_exhaustive()
    }
}

impl PublicKeyData for FileKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for FileKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// The issuing CA's key in whichever backend the configuration names (`[ca] backend`).
#[derive(Debug)]
pub enum CaKey {
    File(FileKey),
    Pkcs11(Pkcs11Key),
}

impl CaKey {
    /// `file` or `pkcs11`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Pkcs11(_) => "pkcs11",
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::File(k) => k.der_bytes(),
            Self::Pkcs11(k) => k.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::File(k) => k.algorithm(),
            Self::Pkcs11(k) => k.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::File(k) => k.sign(msg),
            Self::Pkcs11(k) => k.sign(msg),
        }
    }
}

/// Refuses a secret file (a key, a PIN) that group or others may read, write or execute.
#[cfg(unix)]
pub fn check_private_to_owner(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| CaError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_private_to_owner(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        std::fs::write(&path, FileKey::generate_p256().unwrap().to_pkcs8_pem()).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = FileKey::from_file(&path).unwrap_err();
            assert!(
                matches!(err, CaError::KeyFileMode { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            FileKey::from_file(&path).unwrap();
        }
    }
}
