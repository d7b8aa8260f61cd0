//! Request and certificate lifecycles (DESIGN §5). STUB: to be replaced.

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a {from} {entity}")]
pub struct TransitionError {
    pub entity: &'static str,
    pub from: &'static str,
    pub event: &'static str,
}

impl TransitionError {
    pub fn reason(&self) -> &'static str {
        "INVALID_STATE_TRANSITION"
    }
}
