//! The `pkcs11` key backend: the issuing CA's private key lives in a PKCS#11 token (an HSM; SoftHSM2
//! in tests and CI) and never leaves it. [`Pkcs11Key`] is an rcgen [`SigningKey`], so the
//! [`CertificateAuthority`](crate::CertificateAuthority) signs certificates, CRLs and OCSP
//! responses through it exactly as through a [`FileKey`](crate::FileKey).
//!
//! - Keys are found by label (`CKA_LABEL` on the private and the public key object), never
//!   generated twice: [`Pkcs11Key::open`] refuses a missing key, [`Pkcs11Key::open_or_generate`]
//!   (for `mintgate ca csr`) generates one only when no key carries the label.
//! - ECDSA P-256 and P-384 only. The message is hashed here and the digest signed with plain
//!   `CKM_ECDSA`, which every token has (SoftHSM's Debian build lacks `CKM_ECDSA_SHA256`); the
//!   token's r ‖ s is re-encoded as the DER `ECDSA-Sig-Value` X.509 wants ([`ecdsa`]).
//! - A `cryptoki::Session` may be used by one thread at a time, and an HSM signs several
//!   messages at once on several sessions, so the key holds a small pool of sessions: a signer
//!   takes the first free one, and waits only when every session is busy. A session the token
//!   dropped (token removed, HSM restarted) is reopened, logged in and retried once.
//! - The PIN is read by the caller (a file or an environment variable, never the command line)
//!   and held as a [`Pin`], whose `Debug` and `Display` print nothing of it; no error here
//!   carries it.
//!
//! One PKCS#11 context per module path for the whole process ([`context`]): `C_Initialize` may be
//! called once per process, and every key on that module shares the context.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};

pub mod ecdsa;
mod error;

pub use error::Pkcs11Error;

/// Sessions a key opens when the configuration does not say.
pub const DEFAULT_SESSIONS: usize = 4;

/// The user PIN of a token. Printed nowhere: `Debug` shows `Pin(***)`.
#[derive(Clone)]
pub struct Pin(AuthPin);

impl Pin {
    /// The PIN as read from its file or variable, without a trailing newline.
    pub fn new(text: &str) -> Self {
        Self(AuthPin::from(text.trim_end_matches(['\r', '\n'])))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(***)")
    }
}

/// Where a key lives in a PKCS#11 token.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// `CKA_LABEL` of the token (`token_label` in `softhsm2-util --show-slots`).
    pub token_label: String,
    /// `CKA_LABEL` of the private key and of its public key.
    pub key_label: String,
    pub pin: Pin,
    /// Sessions kept open for signing (at least 1).
    pub sessions: usize,
}

/// The curves a token key may be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// DER of the named-curve OID, as in `CKA_EC_PARAMS`.
    fn params(self) -> &'static [u8] {
        match self {
            // 1.2.840.10045.3.1.7 (prime256v1)
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            // 1.3.132.0.34 (secp384r1)
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    fn from_params(der: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.params() == der)
    }

    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            Self::P256 => &ring::digest::SHA256,
            Self::P384 => &ring::digest::SHA384,
        }
    }

    /// Bytes of one coordinate (and of r and of s).
    fn field_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// A private key in a PKCS#11 token, signing through a pool of sessions.
pub struct Pkcs11Key {
    context: Pkcs11,
    target: Target,
    curve: Curve,
    /// The uncompressed public point (what rcgen calls the public key's DER bytes).
    public_point: Vec<u8>,
    sessions: Vec<Mutex<Option<Signing>>>,
    next: AtomicUsize,
}

/// Which key, in which token, with which PIN.
struct Target {
    token_label: String,
    key_label: String,
    pin: Pin,
}

/// A logged-in session and the private key's handle in it.
struct Signing {
    session: Session,
    key: ObjectHandle,
}

impl Pkcs11Key {
    /// Opens the key labelled `config.key_label` in the token labelled `config.token_label`.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        Self::load(config, false).map(|(key, _)| key)
    }

    /// Opens the key, or generates a P-256 key pair under the label (private key sensitive and
    /// not extractable) if the token has none. Says whether it generated one.
    pub fn open_or_generate(config: &Pkcs11Config) -> Result<(Self, bool), Pkcs11Error> {
        Self::load(config, true)
    }

    /// The curve of the key.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    fn load(config: &Pkcs11Config, generate: bool) -> Result<(Self, bool), Pkcs11Error> {
        let context = context(&config.module)?;
        let sessions = config.sessions.max(1);
        let target = Target {
            token_label: config.token_label.clone(),
            key_label: config.key_label.clone(),
            pin: config.pin.clone(),
        };
        let config = &target;
        let slot = find_token(&context, &config.token_label)?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| Pkcs11Error::token(&config.token_label, "opening a session", e))?;
        login(&session, &config.pin, &config.token_label)?;
        let (public, generated) = match find_public(&session, config)? {
            Some(public) => (public, false),
            None if generate => (generate_p256(&session, config)?, true),
            None => {
                return Err(Pkcs11Error::KeyNotFound {
                    token: config.token_label.clone(),
                    label: config.key_label.clone(),
                });
            }
        };
        let (curve, public_point) = read_public(&session, public, config)?;
        let key = find_private(&session, config)?;
        let mut pool = Vec::with_capacity(sessions);
        pool.push(Mutex::new(Some(Signing { session, key })));
        for _ in 1..sessions {
            pool.push(Mutex::new(Some(open_signing(&context, config)?)));
        }
        let key = Self {
            context,
            target,
            curve,
            public_point,
            sessions: pool,
            next: AtomicUsize::new(0),
        };
        Ok((key, generated))
    }

    /// The first session nobody is using, starting after the last one handed out; if every
    /// session is busy, waits for that one.
    fn session(&self) -> MutexGuard<'_, Option<Signing>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        // A panic while signing leaves the session as usable as any other.
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs `digest` on a pooled session, reopening it once if the token dropped it.
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let mut slot = self.session();
        let mut last = None;
        for _ in 0..2 {
            if slot.is_none() {
                *slot = Some(self.reopen()?);
            }
            let Some(signing) = slot.as_ref() else {
                continue;
            };
            match signing.session.sign(&Mechanism::Ecdsa, signing.key, digest) {
                Ok(signature) => return Ok(signature),
                Err(e) if session_lost(&e) => {
                    *slot = None;
                    last = Some(e);
                }
                Err(e) => return Err(Pkcs11Error::token(&self.target.token_label, "signing", e)),
            }
        }
        Err(match last {
            Some(e) => Pkcs11Error::token(&self.target.token_label, "signing", e),
            None => Pkcs11Error::NoSession {
                token: self.target.token_label.clone(),
            },
        })
    }

    fn reopen(&self) -> Result<Signing, Pkcs11Error> {
        open_signing(&self.context, &self.target)
    }

    #[cfg(test)]
    pub(crate) fn hold_sessions(&self, n: usize) -> Vec<impl Drop + use<'_>> {
        self.sessions
            .iter()
            .take(n)
            .map(|s| s.lock().unwrap())
            .collect()
    }
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token_label", &self.target.token_label)
            .field("key_label", &self.target.key_label)
            .field("curve", &self.curve)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl PublicKeyData for Pkcs11Key {
    fn der_bytes(&self) -> &[u8] {
        &self.public_point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.curve.algorithm()
    }
}

impl SigningKey for Pkcs11Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest = ring::digest::digest(self.curve.digest(), msg);
        let raw = self.sign_digest(digest.as_ref()).map_err(|e| {
            tracing::error!(error = %e, key_label = %self.target.key_label, "the PKCS#11 key did not sign");
            rcgen::Error::RemoteKeyError
        })?;
        ecdsa::der_signature(&raw, self.curve.field_len()).ok_or_else(|| {
            tracing::error!(
                token = %self.target.token_label,
                key_label = %self.target.key_label,
                len = raw.len(),
                "the token returned an ECDSA signature of the wrong length"
            );
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The process's context for `module`, loaded and initialised on first use.
pub fn context(module: &Path) -> Result<Pkcs11, Pkcs11Error> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(context) = contexts.get(module) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(module).map_err(|source| Pkcs11Error::Module {
        module: module.to_owned(),
        source,
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => {
            return Err(Pkcs11Error::Module {
                module: module.to_owned(),
                source,
            });
        }
    }
    contexts.insert(module.to_owned(), context.clone());
    Ok(context)
}

/// The slot holding the initialised token labelled `label`; exactly one must.
pub fn find_token(context: &Pkcs11, label: &str) -> Result<Slot, Pkcs11Error> {
    let slots = context
        .get_slots_with_initialized_token()
        .map_err(|e| Pkcs11Error::token(label, "listing slots", e))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(|e| Pkcs11Error::token(label, "reading token info", e))?;
        if info.label() == label {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(Pkcs11Error::TokenNotFound {
            token: label.to_owned(),
        }),
        _ => Err(Pkcs11Error::TokenAmbiguous {
            token: label.to_owned(),
            count: found.len(),
        }),
    }
}

fn login(session: &Session, pin: &Pin, token: &str) -> Result<(), Pkcs11Error> {
    match session.login(UserType::User, Some(&pin.0)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            Err(Pkcs11Error::PinIncorrect {
                token: token.to_owned(),
            })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked {
            token: token.to_owned(),
        }),
        Err(e) => Err(Pkcs11Error::token(token, "logging in", e)),
    }
}

/// A new logged-in session with the private key's handle.
fn open_signing(context: &Pkcs11, config: &Target) -> Result<Signing, Pkcs11Error> {
    let slot = find_token(context, &config.token_label)?;
    let session = context
        .open_ro_session(slot)
        .map_err(|e| Pkcs11Error::token(&config.token_label, "opening a session", e))?;
    login(&session, &config.pin, &config.token_label)?;
    let key = find_private(&session, config)?;
    Ok(Signing { session, key })
}

fn find_one(
    session: &Session,
    config: &Target,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, Pkcs11Error> {
    let template = [
        Attribute::Class(class),
        Attribute::Label(config.key_label.as_bytes().to_vec()),
    ];
    let found = session
        .find_objects(&template)
        .map_err(|e| Pkcs11Error::token(&config.token_label, "finding the key", e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(Pkcs11Error::KeyAmbiguous {
            token: config.token_label.clone(),
            label: config.key_label.clone(),
            count: found.len(),
        }),
    }
}

fn find_public(session: &Session, config: &Target) -> Result<Option<ObjectHandle>, Pkcs11Error> {
    let public = find_one(session, config, ObjectClass::PUBLIC_KEY)?;
    let private = find_one(session, config, ObjectClass::PRIVATE_KEY)?;
    match (public, private) {
        (Some(public), Some(_)) => Ok(Some(public)),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Pkcs11Error::KeyIncomplete {
            token: config.token_label.clone(),
            label: config.key_label.clone(),
            missing: "public",
        }),
        (Some(_), None) => Err(Pkcs11Error::KeyIncomplete {
            token: config.token_label.clone(),
            label: config.key_label.clone(),
            missing: "private",
        }),
    }
}

fn find_private(session: &Session, config: &Target) -> Result<ObjectHandle, Pkcs11Error> {
    find_one(session, config, ObjectClass::PRIVATE_KEY)?.ok_or_else(|| Pkcs11Error::KeyIncomplete {
        token: config.token_label.clone(),
        label: config.key_label.clone(),
        missing: "private",
    })
}

/// The curve and the uncompressed point of the public key object.
fn read_public(
    session: &Session,
    public: ObjectHandle,
    config: &Target,
) -> Result<(Curve, Vec<u8>), Pkcs11Error> {
    let unsupported = |what: &str| Pkcs11Error::UnsupportedKey {
        token: config.token_label.clone(),
        label: config.key_label.clone(),
        what: what.to_owned(),
    };
    let attributes = session
        .get_attributes(
            public,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
            ],
        )
        .map_err(|e| Pkcs11Error::token(&config.token_label, "reading the public key", e))?;
    let (mut key_type, mut params, mut point) = (None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    if key_type != Some(KeyType::EC) {
        return Err(unsupported("not an EC key (ECDSA P-256 or P-384 expected)"));
    }
    let curve = params
        .as_deref()
        .and_then(Curve::from_params)
        .ok_or_else(|| unsupported("an EC key on a curve other than P-256 or P-384"))?;
    let point = point
        .as_deref()
        .and_then(|p| ecdsa::uncompressed_point(p, curve.field_len()))
        .ok_or_else(|| {
            unsupported("a public key whose CKA_EC_POINT is not an uncompressed point")
        })?;
    Ok((curve, point))
}

fn generate_p256(session: &Session, config: &Target) -> Result<ObjectHandle, Pkcs11Error> {
    let label = config.key_label.as_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(Curve::P256.params().to_vec()),
        Attribute::Label(label.clone()),
        Attribute::Id(label.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label.clone()),
        Attribute::Id(label),
    ];
    let (public, _) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(|e| Pkcs11Error::token(&config.token_label, "generating a key pair", e))?;
    Ok(public)
}

/// Whether the token dropped the session (removed, restarted, logged out), so a new one may work.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

#[cfg(test)]
mod tests;
