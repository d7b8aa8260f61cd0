//! A small filesystem a test can fill: a tmpfs mounted on a temporary directory.
//!
//! Mounting needs privileges (root, or CAP_SYS_ADMIN). Without them the test that asks says it
//! skipped — unless `MINTGATE_REQUIRE_TOOLS=1` (CI), where it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
#[derive(Debug)]
pub struct SmallDisk {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` (rounded up to pages) and makes it writable by everyone (the
    /// PostgreSQL server writes into it as its own user). `None` when this machine does not let
    /// the test mount one.
    pub fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=1777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            let required = std::env::var("MINTGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "MINTGATE_REQUIRE_TOOLS=1 but this test cannot mount a tmpfs (run as root)"
            );
            eprintln!("note: cannot mount a tmpfs here (needs root); skipping");
            return None;
        }
        let filler = dir.path().join("filler");
        Some(Self { dir, filler })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every free byte left, until a write fails with ENOSPC.
    pub fn fill(&self) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        // A partial last block may still fit.
        while file.write_all(&block[..1]).is_ok() {}
    }

    /// Gives back what [`fill`](Self::fill) took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
