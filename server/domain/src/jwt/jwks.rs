//! JSON Web Key Sets (RFC 7517): the public keys the `jwt` attestor verifies tokens with. Only
//! signing keys for RS256 (`kty` "RSA", at least 2048 bits) and ES256 (`kty` "EC", `crv`
//! "P-256") are kept; a key for another algorithm or for encryption is skipped, and a set with
//! none left is refused. Each key remembers the one algorithm it verifies, so a token can never
//! be checked under a key of another type (key confusion).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// Most bytes a key set's JSON may have.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys a set may hold (an issuer publishes a handful).
pub const MAX_KEYS: usize = 64;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS: usize = 256;

/// The signature algorithms a token may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (what Kubernetes signs with by default).
    Rs256,
    /// ECDSA P-256 with SHA-256, the signature as r || s.
    Es256,
}

impl Alg {
    /// The `alg` value; anything else (`none`, `HS256`, `PS256`, ...) is refused.
    pub fn parse(alg: &str) -> Option<Self> {
        match alg {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

/// Why a key set was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the key set is not a JWKS ({{\"keys\": [...]}})")]
    Malformed(#[source] serde_json::Error),
    #[error("the key set has more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("key {index} (kid {kid:?}): {problem}")]
    BadKey {
        index: usize,
        kid: Option<String>,
        problem: &'static str,
    },
    #[error("the key set has no RS256 or ES256 signing key")]
    NoUsableKey,
}

/// The usable keys of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

/// One public key, for exactly one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Clone, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point 0x04 || x || y.
    P256 { point: Vec<u8> },
}

/// What looking up a token's key found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup<'a> {
    /// The keys to try, all for the token's algorithm.
    Keys(Vec<&'a PublicKey>),
    /// No key has the token's `kid`.
    Unknown,
    /// Keys have the `kid`, but none is for the token's algorithm.
    Mismatch,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl JwkSet {
    /// Parses a JWKS document. Keys for other algorithms or uses are skipped; a usable key type
    /// with bad parameters refuses the whole set (it was published wrong).
    pub fn parse(json: &[u8]) -> Result<Self, JwksError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let raw: RawSet = serde_json::from_slice(json).map_err(JwksError::Malformed)?;
        if raw.keys.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut keys = Vec::new();
        for (index, key) in raw.keys.into_iter().enumerate() {
            let bad = |kid: &Option<String>, problem| JwksError::BadKey {
                index,
                kid: kid.clone(),
                problem,
            };
            if key.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let pinned = key.alg.as_deref();
            let public = match key.kty.as_str() {
                "RSA" if pinned.is_none_or(|a| a == "RS256") => {
                    let n =
                        b64(key.n.as_deref()).ok_or_else(|| bad(&key.kid, "bad or missing n"))?;
                    let e =
                        b64(key.e.as_deref()).ok_or_else(|| bad(&key.kid, "bad or missing e"))?;
                    let n = strip_zeros(n);
                    if n.len() < MIN_RSA_MODULUS {
                        return Err(bad(&key.kid, "RSA modulus shorter than 2048 bits"));
                    }
                    PublicKey::Rsa {
                        n,
                        e: strip_zeros(e),
                    }
                }
                "EC" if key.crv.as_deref() == Some("P-256")
                    && pinned.is_none_or(|a| a == "ES256") =>
                {
                    let x = b64(key.x.as_deref()).filter(|x| x.len() == 32);
                    let y = b64(key.y.as_deref()).filter(|y| y.len() == 32);
                    let (Some(x), Some(y)) = (x, y) else {
                        return Err(bad(&key.kid, "x and y must be 32 bytes each"));
                    };
                    let mut point = Vec::with_capacity(65);
                    point.push(0x04);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    PublicKey::P256 { point }
                }
                _ => continue,
            };
            keys.push(Jwk {
                kid: key.kid,
                key: public,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Self { keys })
    }

    /// A set with no key, which verifies nothing (before a key set could first be read).
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys a token with `kid` (every key when it names none) and `alg` may verify under.
    pub(super) fn lookup(&self, kid: Option<&str>, alg: Alg) -> Lookup<'_> {
        let named: Vec<&Jwk> = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .collect();
        if named.is_empty() {
            return Lookup::Unknown;
        }
        let keys: Vec<&PublicKey> = named
            .into_iter()
            .map(|k| &k.key)
            .filter(|k| k.alg() == alg)
            .collect();
        if keys.is_empty() {
            Lookup::Mismatch
        } else {
            Lookup::Keys(keys)
        }
    }
}

impl PublicKey {
    fn alg(&self) -> Alg {
        match self {
            Self::Rsa { .. } => Alg::Rs256,
            Self::P256 { .. } => Alg::Es256,
        }
    }

    /// Whether `signature` over `message` verifies under this key, for its own algorithm only.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            PublicKey::P256 { point } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

/// Key material is public, but a `Debug` of a whole modulus helps nobody.
impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa { n, .. } => write!(f, "RSA({} bits)", n.len() * 8),
            Self::P256 { .. } => f.write_str("P-256"),
        }
    }
}

fn b64(value: Option<&str>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value?).ok()
}

fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}
