//! Small value types that are valid by construction: [`RequestId`], [`Serial`], [`Ttl`], [`KeyType`].

use std::fmt;
use std::time::Duration;

/// Why a scalar input was refused. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("request_id is required")]
    RequestIdMissing,
    #[error("request_id must be at most {max} characters of [A-Za-z0-9._:-]", max = RequestId::MAX_LEN)]
    RequestIdInvalid,
    #[error("ttl must be positive")]
    TtlNotPositive,
    #[error("ttl of {requested_secs}s exceeds the maximum of {max_secs}s")]
    TtlTooLong { requested_secs: i64, max_secs: u64 },
    #[error("ttl is out of range")]
    TtlOutOfRange,
    #[error("serial must be 1 to 20 bytes of hex")]
    SerialInvalid,
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("at most {max} {field} per request")]
    TooMany { field: &'static str, max: usize },
    #[error("cursor must not be negative")]
    CursorInvalid,
    #[error("reason must be an RFC 5280 CRLReason Mintgate accepts (certificateHold is not)")]
    RevocationReasonInvalid,
    #[error("{field} is not a valid time")]
    TimestampInvalid { field: &'static str },
    #[error("state must be a ProposalState")]
    ProposalStateInvalid,
    #[error("tier must be low, elevated or high")]
    RiskTierInvalid,
    #[error("action must be PREPARE, ACTIVATE or RETIRE")]
    CaActionInvalid,
}

impl InputError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RequestIdMissing | Self::RequestIdInvalid => "REQUEST_ID_INVALID",
            Self::TtlNotPositive | Self::TtlTooLong { .. } | Self::TtlOutOfRange => "TTL_INVALID",
            Self::SerialInvalid => "SERIAL_INVALID",
            Self::Missing { .. } => "FIELD_MISSING",
            Self::TooMany { .. } => "TOO_MANY_ITEMS",
            Self::RevocationReasonInvalid => "REVOCATION_REASON_INVALID",
            Self::CursorInvalid => "CURSOR_INVALID",
            Self::TimestampInvalid { .. } => "TIMESTAMP_INVALID",
            Self::ProposalStateInvalid => "PROPOSAL_STATE_INVALID",
            Self::RiskTierInvalid => "RISK_TIER_INVALID",
            Self::CaActionInvalid => "CA_ACTION_INVALID",
        }
    }
}

/// A client-chosen idempotency key: 1..=128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, InputError> {
        if s.is_empty() {
            return Err(InputError::RequestIdMissing);
        }
        let ok = s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return Err(InputError::RequestIdInvalid);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate serial number: positive, at most 20 octets (RFC 5280), shown as lower-case hex.
///
/// Mintgate's own serials carry 128 CSPRNG bits, see [`Serial::from_random`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// Builds a 17-byte serial from CSPRNG output: first byte in 0x01..=0x7f (positive, no
    /// leading zero), then 16 random bytes — 128 random bits after the first byte.
    pub fn from_random(mut bytes: [u8; 17]) -> Self {
        bytes[0] = (bytes[0] & 0x7f).max(1);
        Self(bytes.to_vec())
    }

    /// Parses big-endian bytes as found in a certificate (leading zero octets removed).
    pub fn from_der_bytes(bytes: &[u8]) -> Result<Self, InputError> {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if trimmed.is_empty() || trimmed.len() > 20 {
            return Err(InputError::SerialInvalid);
        }
        Ok(Self(trimmed))
    }

    pub fn parse_hex(s: &str) -> Result<Self, InputError> {
        let cleaned: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(cleaned).map_err(|_| InputError::SerialInvalid)?;
        Self::from_der_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

/// A certificate lifetime: positive and no longer than the applicable maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(Duration);

impl Ttl {
    /// Validates a requested lifetime given as signed seconds and nanos (protobuf Duration).
    pub fn from_parts(seconds: i64, nanos: i32, max: Duration) -> Result<Self, InputError> {
        if seconds < 0 || nanos < 0 || (seconds == 0 && nanos == 0) {
            return Err(InputError::TtlNotPositive);
        }
        let nanos = u32::try_from(nanos).map_err(|_| InputError::TtlOutOfRange)?;
        if nanos >= 1_000_000_000 {
            return Err(InputError::TtlOutOfRange);
        }
        // google.protobuf.Duration's own range: about 10,000 years.
        if seconds > 315_576_000_000 {
            return Err(InputError::TtlOutOfRange);
        }
        let secs = u64::try_from(seconds).map_err(|_| InputError::TtlOutOfRange)?;
        let d = Duration::new(secs, nanos);
        if d > max {
            return Err(InputError::TtlTooLong {
                requested_secs: seconds,
                max_secs: max.as_secs(),
            });
        }
        if d < Duration::from_secs(1) {
            return Err(InputError::TtlNotPositive);
        }
        Ok(Self(d))
    }

    /// Like [`Ttl::from_parts`], but a lifetime longer than `max` is cut to it (and says so)
    /// instead of refused: what a certificate's requested lifetime gets.
    pub fn at_most(seconds: i64, nanos: i32, max: Duration) -> Result<(Self, bool), InputError> {
        match Self::from_parts(seconds, nanos, max) {
            Ok(ttl) => Ok((ttl, false)),
            Err(InputError::TtlTooLong { .. }) => Ok((Self(max), true)),
            Err(e) => Err(e),
        }
    }

    /// A lifetime already known to be valid (policy defaults).
    pub fn from_policy(d: Duration) -> Self {
        Self(d)
    }

    pub fn as_duration(&self) -> Duration {
        self.0
    }
}

/// Public key types Mintgate accepts in a CSR (DESIGN §4). Everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub const ALL: [KeyType; 6] = [
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::Ed25519,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
    ];

    /// The name used in policy files, audit events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "P-256",
            Self::EcdsaP384 => "P-384",
            Self::Ed25519 => "Ed25519",
            Self::Rsa2048 => "RSA-2048",
            Self::Rsa3072 => "RSA-3072",
            Self::Rsa4096 => "RSA-4096",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn at_most_cuts_an_overlong_ttl_and_refuses_the_rest() {
        let hour = Ttl::from_policy(HOUR);
        assert_eq!(Ttl::at_most(7200, 0, HOUR), Ok((hour, true)));
        assert_eq!(Ttl::at_most(3600, 0, HOUR), Ok((hour, false)));
        assert_eq!(
            Ttl::at_most(86_400 * 365, 0, HOUR),
            Ok((hour, true)),
            "any valid length is cut"
        );
        assert_eq!(
            Ttl::at_most(i64::MAX, 999_999_999, HOUR),
            Err(InputError::TtlOutOfRange),
            "beyond what a protobuf Duration may hold"
        );
        assert_eq!(Ttl::at_most(0, 0, HOUR), Err(InputError::TtlNotPositive));
        assert_eq!(
            Ttl::at_most(1, 2_000_000_000, HOUR),
            Err(InputError::TtlOutOfRange)
        );
    }

    #[test]
    fn ttl_refuses_zero_negative_overlong_and_overflowing() {
        assert_eq!(Ttl::from_parts(0, 0, HOUR), Err(InputError::TtlNotPositive));
        assert_eq!(
            Ttl::from_parts(-5, 0, HOUR),
            Err(InputError::TtlNotPositive)
        );
        assert_eq!(
            Ttl::from_parts(5, -1, HOUR),
            Err(InputError::TtlNotPositive)
        );
        assert!(matches!(
            Ttl::from_parts(3601, 0, HOUR),
            Err(InputError::TtlTooLong { .. })
        ));
        assert!(matches!(
            Ttl::from_parts(i64::MAX, 999_999_999, HOUR),
            Err(InputError::TtlOutOfRange)
        ));
        assert_eq!(
            Ttl::from_parts(1, 2_000_000_000, HOUR),
            Err(InputError::TtlOutOfRange)
        );
        assert_eq!(
            Ttl::from_parts(600, 0, HOUR).unwrap().as_duration(),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn request_id_rules() {
        assert!(RequestId::parse("enroll-7f3a:2026.11_25").is_ok());
        assert_eq!(RequestId::parse(""), Err(InputError::RequestIdMissing));
        assert_eq!(
            RequestId::parse(&"a".repeat(129)),
            Err(InputError::RequestIdInvalid)
        );
        assert_eq!(RequestId::parse("a b"), Err(InputError::RequestIdInvalid));
    }

    #[test]
    fn serials_are_positive_and_round_trip_hex() {
        let s = Serial::from_random([0xff; 17]);
        assert_eq!(s.as_bytes()[0], 0x7f);
        assert_eq!(Serial::parse_hex(&s.to_hex()).unwrap(), s);
        let s = Serial::from_random([0; 17]);
        assert_eq!(s.as_bytes()[0], 1);
        assert_eq!(Serial::parse_hex("00:0a").unwrap().to_hex(), "0a");
        assert!(Serial::parse_hex("zz").is_err());
    }
}
