//! Mintgate's storage adapter: sea-orm entities (private) implementing the domain's store ports.
