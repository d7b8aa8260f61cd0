//! Mintgate's typed Rust client.
