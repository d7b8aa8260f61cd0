//! Mintgate's schema migrations (sea-orm-migration), append-only.
