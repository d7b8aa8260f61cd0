//! [`TrustBundleWatcher`]: follows Mintgate's trust bundle (Revocation/WatchTrustBundle) and
//! keeps the latest one on a watch channel and, if asked, in a file.
//!
//! The bundle lists every CA relying parties must trust now: a CA prepared for rotation joins it
//! before it signs anything, and a retired or revoked one leaves it (DESIGN §14). The server
//! sends the current bundle when the stream opens and then each change; the stream ends when the
//! server shuts down, and the watcher reconnects (to another replica if the URL lists several)
//! with jittered [`Backoff`], the same way [`crate::RevocationWatcher`] does. On every new
//! version, [`BundleFile`] replaces the file atomically (mode 0644), so a reader never sees a torn
//! bundle. A bundle holding no certificate is refused: writing it would make every peer
//! untrusted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mintgate_proto::v1;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Backoff, Connect, Error};

/// How a [`TrustBundleWatcher`] behaves.
#[derive(Debug, Clone)]
pub struct TrustBundleConfig {
    /// Where to write each new bundle (atomically, mode 0644); `None` keeps it on the channel
    /// only.
    pub path: Option<PathBuf>,
    /// Reconnect backoff bounds (full jitter in between).
    pub min_backoff: Duration,
    /// Longest wait between reconnects.
    pub max_backoff: Duration,
}

impl Default for TrustBundleConfig {
    fn default() -> Self {
        Self {
            path: None,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A background task following `WatchTrustBundle`. Dropping it stops the task.
#[derive(Debug)]
pub struct TrustBundleWatcher {
    latest: watch::Receiver<Option<v1::TrustBundle>>,
    task: JoinHandle<()>,
}

impl TrustBundleWatcher {
    /// Starts following the bundle; `connect` is called again after every disconnect.
    pub fn spawn(connect: Connect, config: TrustBundleConfig) -> Self {
        let (tx, latest) = watch::channel(None);
        let task = tokio::spawn(follow(connect, tx, config));
        Self { latest, task }
    }

    /// The newest bundle received, `None` until the server has sent one.
    pub fn latest(&self) -> Option<v1::TrustBundle> {
        self.latest.borrow().clone()
    }

    /// Receives each new version (never the same version twice in a row, even across
    /// reconnects, which resend the current bundle).
    pub fn subscribe(&self) -> watch::Receiver<Option<v1::TrustBundle>> {
        self.latest.clone()
    }
}

impl Drop for TrustBundleWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bundle file kept in step with the bundles given to it: each write replaces the file whole
/// (temporary file, sync, rename; mode 0644), and only when the contents change.
#[derive(Debug, Clone)]
pub struct BundleFile {
    path: PathBuf,
    /// What this writer last put in the file.
    written: Option<String>,
}

impl BundleFile {
    /// A writer for `path`; its first write always happens.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            written: None,
        }
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bundle.bundle_pem` unless this writer already wrote it; returns whether it
    /// wrote. A bundle with no certificate is refused (`InvalidData`) and the file is left
    /// alone.
    pub fn apply(&mut self, bundle: &v1::TrustBundle) -> std::io::Result<bool> {
        if bundle_certificates(&bundle.bundle_pem) == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "trust bundle {} holds no certificate; not written",
                    bundle.version
                ),
            ));
        }
        self.write_pem(&bundle.bundle_pem)
    }

    /// Writes `pem` unless this writer already wrote exactly that; returns whether it wrote.
    pub fn write_pem(&mut self, pem: &str) -> std::io::Result<bool> {
        if self.written.as_deref() == Some(pem) {
            return Ok(false);
        }
        crate::atomic_write(&self.path, pem.as_bytes(), 0o644)?;
        self.written = Some(pem.to_owned());
        Ok(true)
    }
}

/// How many certificates a PEM bundle holds (blocks that do not parse count for nothing).
fn bundle_certificates(pem: &str) -> usize {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter(Result::is_ok)
        .count()
}

/// Takes one bundle from the stream: publishes it on `tx` if its version is new, and writes it to
/// `file` if there is one. Returns whether it was new. A bundle without certificates is logged
/// and dropped.
pub(crate) fn accept(
    tx: &watch::Sender<Option<v1::TrustBundle>>,
    file: Option<&mut BundleFile>,
    bundle: v1::TrustBundle,
) -> bool {
    if bundle_certificates(&bundle.bundle_pem) == 0 {
        tracing::warn!(version = %bundle.version, "the server sent a trust bundle with no certificate; ignored");
        return false;
    }
    if let Some(file) = file {
        match file.apply(&bundle) {
            Ok(true) => {
                tracing::info!(version = %bundle.version, path = %file.path().display(), "trust bundle written");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %file.path().display(), "could not write the trust bundle");
            }
        }
    }
    tx.send_if_modified(|latest| {
        let new = latest
            .as_ref()
            .is_none_or(|old| old.version != bundle.version || old.bundle_pem != bundle.bundle_pem);
        if new {
            *latest = Some(bundle);
        }
        new
    })
}

async fn follow(
    connect: Connect,
    tx: watch::Sender<Option<v1::TrustBundle>>,
    config: TrustBundleConfig,
) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut file = config.path.map(BundleFile::new);
    loop {
        match session(&connect, &tx, file.as_mut(), &mut backoff).await {
            Ok(()) => tracing::info!("trust bundle feed ended; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "trust bundle feed failed; reconnecting"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    connect: &Connect,
    tx: &watch::Sender<Option<v1::TrustBundle>>,
    mut file: Option<&mut BundleFile>,
    backoff: &mut Backoff,
) -> Result<(), Error> {
    let client = connect().await?;
    let mut stream = client.watch_trust_bundle().await?;
    while let Some(bundle) = stream.message().await? {
        backoff.reset();
        accept(tx, file.as_deref_mut(), bundle);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        crate::test_pki::TestCa::new(&rand::random::<[u8; 20]>()).pem()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn bundle(version: &str, pem: &str) -> v1::TrustBundle {
        v1::TrustBundle {
            bundle_pem: pem.to_owned(),
            version: version.to_owned(),
            authorities: Vec::new(),
        }
    }

    #[cfg(unix)]
    #[test]
    fn each_new_version_is_published_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let mut file = BundleFile::new(&path);
        let (tx, mut rx) = watch::channel(None);
        let (old, new) = (ca_pem(), ca_pem());
        let v1 = bundle("aa", &old);
        let v2 = bundle("bb", &format!("{old}{new}"));
        let v3 = bundle("cc", &new);

        // The first bundle: published and written.
        assert!(accept(&tx, Some(&mut file), v1.clone()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&v1));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), old);
        assert_eq!(mode(&path), 0o644);

        // A reconnect resends the current bundle: nothing wakes, nothing is written (the file
        // keeps its inode).
        let written_at = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        assert!(!accept(&tx, Some(&mut file), v1.clone()));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(mode(&path), 0o640, "an unchanged bundle is not rewritten");
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written_at
        );

        // A CA is prepared, then the old one leaves: each version replaces the file whole.
        assert!(accept(&tx, Some(&mut file), v2.clone()));
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&v2));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), v2.bundle_pem);
        assert_eq!(mode(&path), 0o644);
        assert!(accept(&tx, Some(&mut file), v3.clone()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bundle_without_certificates_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let mut file = BundleFile::new(&path);
        let (tx, rx) = watch::channel(None);
        let good = bundle("aa", &ca_pem());
        assert!(accept(&tx, Some(&mut file), good.clone()));
        for bad in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        ] {
            assert!(!accept(&tx, Some(&mut file), bundle("bb", bad)));
            assert_eq!(
                file.apply(&bundle("bb", bad)).unwrap_err().kind(),
                std::io::ErrorKind::InvalidData
            );
        }
        assert_eq!(rx.borrow().as_ref(), Some(&good));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), good.bundle_pem);
    }

    #[test]
    fn a_new_writer_rewrites_what_it_has_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, "stale").unwrap();
        let pem = ca_pem();
        let mut file = BundleFile::new(&path);
        assert!(file.write_pem(&pem).unwrap());
        assert!(!file.write_pem(&pem).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
    }
}
