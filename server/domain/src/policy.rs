//! Issuance policy (deny by default). STUB: to be replaced.

/// The policy refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no policy rule grants {0}")]
    SpiffeIdNotGranted(String),
}

impl Denied {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SpiffeIdNotGranted(_) => "SPIFFE_ID_NOT_GRANTED",
        }
    }
}
