//! The port `Admin/ExportEvidence` streams through: the server crate exports (it reads the
//! database and signs the CRL), this crate authorizes the caller and frames the parts.

use std::pin::Pin;

use futures_util::{Stream, StreamExt as _};
use mintgate_domain::model::Caller;
use mintgate_domain::service::Mintgate;
use mintgate_domain::store::CertificateStore;
use mintgate_domain::{Error, InputError};
use mintgate_proto::v1;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::convert;
use crate::status::to_status;

/// A piece of an evidence export: a file's bytes (a file's pieces come in order, one file
/// after another), then the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidencePart {
    File { path: String, data: Vec<u8> },
    Manifest(Vec<u8>),
}

/// Makes evidence exports.
pub trait EvidenceExporter: Send + Sync + 'static {
    /// Starts exporting the period `since..=until` (the caller is already authorized): the parts
    /// arrive on the receiver, the manifest last; an error ends it. Dropping the receiver stops
    /// the export.
    fn export(
        &self,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> mpsc::Receiver<Result<EvidencePart, Error>>;
}

/// `Admin/ExportEvidence`'s answer.
pub(crate) type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<v1::ExportEvidenceChunk, Status>> + Send>>;

/// Authorizes `caller`, checks the period and streams the export as chunks.
pub(crate) async fn stream<S: CertificateStore>(
    app: &Mintgate<S>,
    exporter: &dyn EvidenceExporter,
    caller: &Caller,
    body: v1::ExportEvidenceRequest,
) -> Result<ChunkStream, Status> {
    let status = |e: Error| to_status(&e, "ExportEvidence", "");
    app.authorize_evidence_export(caller)
        .await
        .map_err(status)?;
    let time = |t, field| {
        convert::time_of(t, field)
            .and_then(|t| t.ok_or(InputError::Missing { field }))
            .map_err(|e| status(e.into()))
    };
    let (since, until) = (time(body.since, "since")?, time(body.until, "until")?);
    if since > until {
        return Err(status(
            InputError::TimestampInvalid { field: "until" }.into(),
        ));
    }
    let parts = ReceiverStream::new(exporter.export(since, until)).map(|part| {
        let part = match part.map_err(|e| to_status(&e, "ExportEvidence", ""))? {
            EvidencePart::File { path, data } => {
                v1::export_evidence_chunk::Part::File(v1::EvidenceFileChunk { path, data })
            }
            EvidencePart::Manifest(text) => v1::export_evidence_chunk::Part::Manifest(text),
        };
        Ok(v1::ExportEvidenceChunk { part: Some(part) })
    });
    Ok(Box::pin(parts))
}
