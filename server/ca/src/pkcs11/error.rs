//! Why a PKCS#11 key could not be opened or could not sign. Every message names the token and
//! the key label it is about, and none carries the PIN.

use std::path::PathBuf;

/// A PKCS#11 failure.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("the PKCS#11 module {module} could not be loaded or initialised")]
    Module {
        module: PathBuf,
        #[source]
        source: cryptoki::error::Error,
    },
    #[error("no initialised token is labelled {token:?}")]
    TokenNotFound { token: String },
    #[error("{count} tokens are labelled {token:?}; the label must name one")]
    TokenAmbiguous { token: String, count: usize },
    #[error("the PIN of token {token:?} is incorrect")]
    PinIncorrect { token: String },
    #[error("the user PIN of token {token:?} is locked")]
    PinLocked { token: String },
    #[error("token {token:?} holds no key labelled {label:?}")]
    KeyNotFound { token: String, label: String },
    #[error("token {token:?} holds {count} keys labelled {label:?}; the label must name one")]
    KeyAmbiguous {
        token: String,
        label: String,
        count: usize,
    },
    #[error(
        "token {token:?} holds no {missing} key object labelled {label:?} beside the other half"
    )]
    KeyIncomplete {
        token: String,
        label: String,
        missing: &'static str,
    },
    #[error("the key {label:?} in token {token:?} is {what}")]
    UnsupportedKey {
        token: String,
        label: String,
        what: String,
    },
    #[error("no session to token {token:?} could be opened")]
    NoSession { token: String },
    #[error("token {token:?}: {doing} failed")]
    Token {
        token: String,
        doing: &'static str,
        #[source]
        source: cryptoki::error::Error,
    },
}

impl Pkcs11Error {
    pub(crate) fn token(token: &str, doing: &'static str, source: cryptoki::error::Error) -> Self {
        Self::Token {
            token: token.to_owned(),
            doing,
            source,
        }
    }

    /// A stable code for the kind of failure, for logs and exit messages.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Module { .. } => "PKCS11_MODULE",
            Self::TokenNotFound { .. } => "PKCS11_TOKEN_NOT_FOUND",
            Self::TokenAmbiguous { .. } => "PKCS11_TOKEN_AMBIGUOUS",
            Self::PinIncorrect { .. } => "PKCS11_PIN_INCORRECT",
            Self::PinLocked { .. } => "PKCS11_PIN_LOCKED",
            Self::KeyNotFound { .. } => "PKCS11_KEY_NOT_FOUND",
            Self::KeyAmbiguous { .. } => "PKCS11_KEY_AMBIGUOUS",
            Self::KeyIncomplete { .. } => "PKCS11_KEY_INCOMPLETE",
            Self::UnsupportedKey { .. } => "PKCS11_KEY_UNSUPPORTED",
            Self::NoSession { .. } | Self::Token { .. } => "PKCS11_TOKEN_FAILED",
        }
    }
}
