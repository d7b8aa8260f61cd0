//! `Admin/ExportEvidence` on the server: the same export as `mintgate evidence export`, with the
//! server's own CA certificate and the CRL its `/crl` serves, streamed to the caller.

use std::sync::Arc;

use mintgate_api::evidence::{EvidenceExporter, EvidencePart};
use mintgate_domain::{Error, InputError};
use mintgate_store::SqlStore;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::export::{ExportError, ExportRequest, export};
use super::sink::ChannelSink;
use crate::http::CrlPublisher;

/// Parts in flight per export: a reader that stops reading stops the export here.
const IN_FLIGHT: usize = 4;

/// Exports from the server's database, with its CA certificate and current CRL.
pub struct ServerExporter {
    store: SqlStore,
    crl: Arc<CrlPublisher>,
    signer: Arc<dyn mintgate_domain::ports::Signer>,
    clock: Arc<dyn mintgate_domain::ports::Clock>,
}

impl ServerExporter {
    pub(crate) fn new(
        store: SqlStore,
        crl: Arc<CrlPublisher>,
        signer: Arc<dyn mintgate_domain::ports::Signer>,
        clock: Arc<dyn mintgate_domain::ports::Clock>,
    ) -> Self {
        Self {
            store,
            crl,
            signer,
            clock,
        }
    }
}

impl EvidenceExporter for ServerExporter {
    fn export(
        &self,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> mpsc::Receiver<Result<EvidencePart, Error>> {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let (store, crl) = (self.store.clone(), self.crl.clone());
        // The trust bundle and the ACTIVE CA's CRL as they are now.
        let ca_cert = Some(self.signer.trust_bundle_pem().into_bytes());
        let active = self.signer.issuer_key_id();
        let now = self.clock.now();
        tokio::spawn(async move {
            let crl = match crl.current(&store, &active).await {
                Ok(der) => der.map(Vec::from),
                Err(e) => {
                    let _ = tx.send(Err(Error::Internal(e.into()))).await;
                    return;
                }
            };
            let request = ExportRequest {
                since,
                until,
                ca_cert,
                crl,
                now,
            };
            let mut sink = ChannelSink::new(tx.clone());
            let error = match export(&store, &request, &mut sink).await {
                Ok(_) | Err(ExportError::ReaderGone) => return,
                Err(ExportError::Period { .. }) => {
                    Error::Input(InputError::TimestampInvalid { field: "until" })
                }
                Err(ExportError::Store(e)) => e.into(),
                Err(e) => Error::Internal(Box::new(e)),
            };
            let _ = tx.send(Err(error)).await;
        });
        rx
    }
}
