//! Where an export's files go, one after another and each in pieces, so that an export of any
//! size holds one page of the chain in memory: a directory (`mintgate evidence export`) or the
//! `Admin/ExportEvidence` stream. [`Hashing`] wraps either and makes the manifest's entries as
//! the bytes pass.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use mintgate_api::evidence::EvidencePart;
use tokio::sync::mpsc;

use super::FileEntry;
use super::export::ExportError;

/// Bytes per `Admin/ExportEvidence` message (well under gRPC's 4 MiB default).
pub const CHUNK: usize = 64 * 1024;

/// A destination for an export's files.
pub trait Sink: Send {
    /// Starts the file `path` (`/`-separated, relative); the previous one is complete.
    fn start(&mut self, path: &str) -> impl Future<Output = Result<(), ExportError>> + Send;
    /// Appends to the current file.
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), ExportError>> + Send;
    /// The manifest, last: the export is complete.
    fn finish(&mut self, manifest: &[u8]) -> impl Future<Output = Result<(), ExportError>> + Send;
}

/// Passes files on to a sink and keeps each one's SHA-256 and size for the manifest.
pub(super) struct Hashing<'a, S> {
    inner: &'a mut S,
    current: Option<(String, ring::digest::Context, u64)>,
    pub(super) done: Vec<FileEntry>,
}

impl<'a, S: Sink> Hashing<'a, S> {
    pub(super) fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            current: None,
            done: Vec::new(),
        }
    }

    pub(super) async fn start(&mut self, path: &str) -> Result<(), ExportError> {
        self.close();
        self.inner.start(path).await?;
        self.current = Some((
            path.to_owned(),
            ring::digest::Context::new(&ring::digest::SHA256),
            0,
        ));
        Ok(())
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        if let Some((_, hash, size)) = &mut self.current {
            hash.update(bytes);
            *size += bytes.len() as u64;
        }
        self.inner.write(bytes).await
    }

    /// A whole file at once.
    pub(super) async fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ExportError> {
        self.start(path).await?;
        self.write(bytes).await
    }

    /// Every file's entry, by path.
    pub(super) fn entries(mut self) -> (Vec<FileEntry>, &'a mut S) {
        self.close();
        self.done.sort_by(|a, b| a.path.cmp(&b.path));
        (self.done, self.inner)
    }

    fn close(&mut self) {
        if let Some((path, hash, size)) = self.current.take() {
            self.done.push(FileEntry {
                path,
                sha256: hex::encode(hash.finish()),
                size,
            });
        }
    }
}

/// Writes into a directory (which the caller has found empty).
pub struct DirSink {
    dir: PathBuf,
    current: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
}

impl DirSink {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            current: None,
        }
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        if let Some((path, mut file)) = self.current.take() {
            file.flush()
                .map_err(|source| ExportError::Io { path, source })?;
        }
        Ok(())
    }

    fn create(&mut self, path: &str) -> Result<(), ExportError> {
        self.flush()?;
        let path = self.dir.join(path);
        let io = |source| ExportError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = std::fs::File::create(&path).map_err(io)?;
        self.current = Some((path, std::io::BufWriter::new(file)));
        Ok(())
    }
}

impl Sink for DirSink {
    async fn start(&mut self, path: &str) -> Result<(), ExportError> {
        self.create(path)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        if let Some((path, file)) = &mut self.current {
            file.write_all(bytes).map_err(|source| ExportError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    async fn finish(&mut self, manifest: &[u8]) -> Result<(), ExportError> {
        self.create(super::MANIFEST)?;
        self.write(manifest).await?;
        self.flush()
    }
}

/// Sends the files as [`EvidencePart`]s of at most [`CHUNK`] bytes (every file at least once,
/// so that an empty one arrives too), then the manifest. The channel is bounded: a reader that
/// stops reading stops the export.
pub struct ChannelSink {
    tx: mpsc::Sender<Result<EvidencePart, mintgate_domain::Error>>,
    path: String,
    buffer: Vec<u8>,
    sent: bool,
}

impl ChannelSink {
    pub fn new(tx: mpsc::Sender<Result<EvidencePart, mintgate_domain::Error>>) -> Self {
        Self {
            tx,
            path: String::new(),
            buffer: Vec::with_capacity(CHUNK),
            sent: true,
        }
    }

    async fn send(&mut self, part: EvidencePart) -> Result<(), ExportError> {
        self.tx
            .send(Ok(part))
            .await
            .map_err(|_| ExportError::ReaderGone)
    }

    /// Sends what is buffered (and an empty part for a file that has sent nothing yet).
    async fn flush(&mut self) -> Result<(), ExportError> {
        if self.buffer.is_empty() && self.sent {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.sent = true;
        let path = self.path.clone();
        self.send(EvidencePart::File { path, data }).await
    }
}

impl Sink for ChannelSink {
    async fn start(&mut self, path: &str) -> Result<(), ExportError> {
        self.flush().await?;
        path.clone_into(&mut self.path);
        self.sent = false;
        Ok(())
    }

    async fn write(&mut self, mut bytes: &[u8]) -> Result<(), ExportError> {
        while !bytes.is_empty() {
            let room = CHUNK - self.buffer.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = later;
            if self.buffer.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self, manifest: &[u8]) -> Result<(), ExportError> {
        self.flush().await?;
        self.send(EvidencePart::Manifest(manifest.to_vec())).await
    }
}
