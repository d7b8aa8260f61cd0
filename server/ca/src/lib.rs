//! Mintgate's signer: builds certificates from policy and signs them with a key behind one trait.
