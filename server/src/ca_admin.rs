//! `mintgate ca csr` and `mintgate ca import`: Mintgate's issuing CA is an intermediate under an
//! offline root. `csr` writes a certificate signing request for the root, with the key in the
//! configured backend (a file, made with mode 0600 if missing; or a PKCS#11 token, generated
//! there if no key carries the label); `import` takes the certificate the root signed (and the
//! chain above it), checks that it is a CA for exactly that key and that it links to a
//! self-signed root, and writes it where `ca.cert` points.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use mintgate_ca::{CaError, CaKey, CertificateAuthority, FileKey, Pkcs11Error, Pkcs11Key};
use mintgate_domain::lifetime::CaWindow;
use time::OffsetDateTime;

use crate::config::{CaFiles, CaKeySource, ConfigError};

/// Why a `ca` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CaAdminError {
    /// The configuration is wrong (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("ca.pkcs11 ({reason}): {source}", reason = source.reason())]
    Token {
        #[source]
        source: Pkcs11Error,
    },
    #[error("ca.key: {0}")]
    Key(#[source] CaError),
    #[error("the certificate signing request could not be made")]
    Csr(#[source] CaError),
    #[error("{}: the certificate is not usable as Mintgate's issuing CA: {source}", path.display())]
    Refused {
        path: PathBuf,
        #[source]
        source: CaError,
    },
    #[error("{}: {problem}", path.display())]
    NotValid { path: PathBuf, problem: String },
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CaAdminError {
    /// A fault in what the operator configured (exit 64), as opposed to a refused certificate
    /// or a failing token or file.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Config(_) => true,
            Self::Token { source } => !matches!(source, Pkcs11Error::Token { .. }),
            _ => false,
        }
    }
}

/// The subject of the issuing CA a CSR asks for.
#[derive(Debug, Clone)]
pub struct CsrSubject {
    pub common_name: String,
    pub organization: Option<String>,
}

/// What `ca csr` did.
#[derive(Debug)]
pub struct Csr {
    pub pem: String,
    /// Whether the key was generated now (otherwise it was found).
    pub generated: bool,
    /// `file` or `pkcs11`.
    pub backend: &'static str,
}

/// What `ca import` wrote.
#[derive(Debug)]
pub struct Imported {
    pub path: PathBuf,
    pub subject: String,
    pub not_after: OffsetDateTime,
    /// Certificates written: the issuing CA, then up to the root.
    pub chain_len: usize,
}

/// The `[ca]` table of a config file; nothing else in it is read or needed.
pub fn ca_files(config: &Path) -> Result<CaFiles, ConfigError> {
    crate::config::FileConfig::load(config).map(|c| c.ca)
}

/// A CSR for an issuing CA with the configured key, generated if there is none yet.
pub fn csr(files: &CaFiles, subject: &CsrSubject) -> Result<Csr, CaAdminError> {
    let (key, generated) = key_or_generate(files)?;
    let pem =
        mintgate_ca::issuing_ca_csr(&key, &subject.common_name, subject.organization.as_deref())
            .map_err(CaAdminError::Csr)?;
    Ok(Csr {
        pem,
        generated,
        backend: key.backend(),
    })
}

/// Checks `cert_pem` (the issuing CA certificate, then the chain up to the root) against the
/// configured key and writes it to `ca.cert`, replacing what was there.
pub fn import(
    files: &CaFiles,
    cert_path: &Path,
    cert_pem: &str,
    now: OffsetDateTime,
) -> Result<Imported, CaAdminError> {
    let target = files.cert.clone().ok_or_else(|| ConfigError::Invalid {
        field: "ca.cert".to_owned(),
        problem: "is required (where the imported certificate is written)".to_owned(),
    })?;
    let key = open_key(files)?;
    let refused = |source| CaAdminError::Refused {
        path: cert_path.to_owned(),
        source,
    };
    let ca = CertificateAuthority::from_pem_with_key(cert_pem, key, None).map_err(refused)?;
    let window = CaWindow {
        not_after: ca.not_after(),
        min_lifetime: files.min_lifetime()?,
    };
    window.check(now).map_err(|e| CaAdminError::NotValid {
        path: cert_path.to_owned(),
        problem: e.to_string(),
    })?;
    let pem = mintgate_domain::ports::Signer::trust_bundle_pem(&ca).to_owned();
    write_replacing(&target, &pem, 0o644)?;
    Ok(Imported {
        path: target,
        subject: ca.subject().to_owned(),
        not_after: ca.not_after(),
        chain_len: ca.chain_der().len(),
    })
}

/// The configured key, which must exist.
fn open_key(files: &CaFiles) -> Result<CaKey, CaAdminError> {
    match files.key_source()? {
        CaKeySource::File(pem) => FileKey::from_pem(&pem)
            .map(CaKey::File)
            .map_err(CaAdminError::Key),
        CaKeySource::Pkcs11(config) => Pkcs11Key::open(&config)
            .map(CaKey::Pkcs11)
            .map_err(|source| CaAdminError::Token { source }),
    }
}

/// The configured key, generated (a P-256 key pair) if it does not exist yet.
fn key_or_generate(files: &CaFiles) -> Result<(CaKey, bool), CaAdminError> {
    if files.backend != Some(crate::config::CaBackend::Pkcs11)
        && let Some(path) = &files.key
        && !path.exists()
    {
        let key = FileKey::generate_p256().map_err(CaAdminError::Key)?;
        write_new(path, &key.to_pkcs8_pem(), 0o600)?;
        return Ok((CaKey::File(key), true));
    }
    match files.key_source()? {
        CaKeySource::File(pem) => FileKey::from_pem(&pem)
            .map(|k| (CaKey::File(k), false))
            .map_err(CaAdminError::Key),
        CaKeySource::Pkcs11(config) => Pkcs11Key::open_or_generate(&config)
            .map(|(k, generated)| (CaKey::Pkcs11(k), generated))
            .map_err(|source| CaAdminError::Token { source }),
    }
}

/// Writes a new file with `mode` (refusing to replace one), through a temporary file.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CaAdminError> {
    let tmp = temp_file(path, contents, mode)?;
    tmp.persist_noclobber(path).map_err(|e| CaAdminError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// Replaces `path` atomically with `contents` and `mode`.
fn write_replacing(path: &Path, contents: &str, mode: u32) -> Result<(), CaAdminError> {
    let tmp = temp_file(path, contents, mode)?;
    tmp.persist(path).map_err(|e| CaAdminError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

fn temp_file(
    path: &Path,
    contents: &str,
    mode: u32,
) -> Result<tempfile::NamedTempFile, CaAdminError> {
    let io = |source| CaAdminError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".mintgate-ca-")
        .tempfile_in(&dir)
        .map_err(io)?;
    tmp.write_all(contents.as_bytes()).map_err(io)?;
    set_mode(tmp.as_file(), mode).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    Ok(tmp)
}

#[cfg(unix)]
fn set_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &std::fs::File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}
