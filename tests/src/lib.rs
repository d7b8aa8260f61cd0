//! Mintgate end-to-end tests.
