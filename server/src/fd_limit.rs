//! How many gRPC connections the process may hold: the configured number, capped by the
//! open-file limit minus a reserve for everything else.

use crate::app::BuildError;

/// How many gRPC connections may be open at once: `configured`, but never more than the soft
/// `RLIMIT_NOFILE` (as `main` left it, raised to the hard limit) minus `reserve`.
///
/// Each TCP connection holds one file descriptor, so the gRPC acceptor counting its open
/// connections against this limit (and closing new ones at once when it is reached) keeps at
/// least `reserve` descriptors free for everything else the process opens: the HTTP port's
/// connections (`/healthz`, `/readyz`, `/metrics` keep answering under a connection flood),
/// database connections, log and OTLP sockets, and the listeners themselves. Without it, a flood
/// drives the process to `EMFILE`, where every `accept` fails — the HTTP port's included — until
/// half-open handshakes time out.
pub(crate) fn connection_limit(configured: usize, reserve: u64) -> Result<usize, BuildError> {
    let limit = match open_file_limit() {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "open-file limit unknown; gRPC connections not capped by it");
            return Ok(configured);
        }
    };
    let left = limit.saturating_sub(reserve);
    if left == 0 {
        return Err(BuildError::NoDescriptors { reserve, limit });
    }
    let capped = configured.min(usize::try_from(left).unwrap_or(usize::MAX));
    tracing::info!(
        open_file_limit = limit,
        reserve,
        max_connections = capped,
        "gRPC connection limit"
    );
    Ok(capped)
}

/// The soft `RLIMIT_NOFILE`.
#[cfg(unix)]
fn open_file_limit() -> std::io::Result<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _hard)| soft)
}

#[cfg(not(unix))]
fn open_file_limit() -> std::io::Result<u64> {
    Err(std::io::ErrorKind::Unsupported.into())
}
