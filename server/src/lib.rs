//! The mintgate binary and the application wiring.
