//! Who is calling: the caller kind is decided by which configured CA signed the client
//! certificate (DESIGN §3). An operator's roles are its role bindings in the store, read when
//! the policy is asked.

use std::sync::Arc;

use mintgate_domain::Serial;
use mintgate_domain::model::{Caller, CallerKind};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::{ClientTrust, spiffe_id_of};

/// Maps a verified client certificate to a [`Caller`].
#[derive(Debug, Clone)]
pub struct PeerClassifier {
    /// Mintgate's issuing CAs (workloads), as the listener trusts them now.
    workloads: Arc<ClientTrust>,
    cas: Vec<(CallerKind, Vec<u8>)>,
}

impl PeerClassifier {
    /// `cas` pairs each other trusted CA certificate (DER) with the caller kind it vouches for.
    pub fn new(
        workloads: Arc<ClientTrust>,
        cas: Vec<(CallerKind, CertificateDer<'static>)>,
    ) -> Self {
        Self {
            workloads,
            cas: cas.into_iter().map(|(k, c)| (k, c.to_vec())).collect(),
        }
    }

    /// The caller behind a leaf certificate that the TLS layer already verified.
    pub fn classify(&self, leaf_der: &[u8]) -> Option<Arc<Caller>> {
        let (_, leaf) = X509Certificate::from_der(leaf_der).ok()?;
        let id = spiffe_id_of(&leaf)?;
        let serial = Serial::from_der_bytes(leaf.raw_serial()).ok()?;
        let workloads = self.workloads.issuing();
        let mine = workloads.iter().map(|c| (CallerKind::Workload, c.as_ref()));
        let kind = mine
            .chain(self.cas.iter().map(|(kind, c)| (*kind, c.as_slice())))
            .find_map(|(kind, ca_der)| {
                let (_, ca) = X509Certificate::from_der(ca_der).ok()?;
                let issued_by = leaf.issuer().as_raw() == ca.subject().as_raw()
                    && leaf.verify_signature(Some(ca.public_key())).is_ok();
                issued_by.then_some(kind)
            })?;
        let not_before = leaf.validity().not_before.to_datetime();
        Some(Arc::new(Caller {
            id,
            kind,
            serial,
            not_before,
        }))
    }
}
