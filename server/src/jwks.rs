//! The `jwt` attestor's key set ([`KeySource`]): read from `[attestation.jwt]`'s `jwks_file` or
//! `jwks_url` at start, again every `jwks_refresh_seconds`, and when a token names a key the
//! set lacks, but then at most once per `jwks_min_refresh_seconds`, one read at a time: a caller
//! sending made-up key ids cannot make the server fetch more often than that. A read that fails
//! keeps the set it had.
//!
//! The URL is fetched over HTTPS only, verified against `jwks_ca_file`, with hyper's HTTP/1.1
//! client on tokio-rustls (both already in the dependency graph for the gRPC and HTTP ports).

use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintgate_domain::jwt::{JwkSet, JwksError, MAX_JWKS_BYTES};
use mintgate_domain::ports::KeySource;
use mintgate_domain::service::Jwt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::time::Instant;

use crate::config::{JwksSource, JwtSettings};

/// How long one fetch of `jwks_url` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the key set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("attestation.jwt.jwks_ca_file: no usable PEM certificate")]
    Roots,
    #[error("{url}: {problem}")]
    Fetch { url: String, problem: String },
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{0}")]
    Keys(#[from] JwksError),
}

/// The key set as last read, and how to read it again.
pub struct JwksReader {
    source: JwksSource,
    tls: Option<Arc<rustls::ClientConfig>>,
    keys: RwLock<Arc<JwkSet>>,
    /// When the set was last read (or tried); held across a read so reads never overlap.
    last_read: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
}

impl JwksReader {
    /// Reads the key set once, and keeps it fresh every `settings.refresh` for as long as the
    /// reader lives. A file that does not read is an error; a URL that does not answer yet
    /// starts with an empty set (every token then refused with JWT_KEY_UNKNOWN until it does).
    pub async fn start(settings: &JwtSettings) -> Result<Arc<Self>, ReadError> {
        let tls = match &settings.jwks {
            JwksSource::File(_) => None,
            JwksSource::Url { ca_pem, .. } => Some(client_config(ca_pem)?),
        };
        let reader = Arc::new(Self {
            source: settings.jwks.clone(),
            tls,
            keys: RwLock::new(Arc::new(JwkSet::empty())),
            last_read: tokio::sync::Mutex::new(None),
            min_refresh: settings.min_refresh,
        });
        match reader.read_now().await {
            Ok(n) => tracing::info!(keys = n, source = %reader.origin(), "jwt: key set read"),
            Err(e) if matches!(reader.source, JwksSource::Url { .. }) => {
                tracing::warn!(error = %e, "jwt: key set not read yet; tokens are refused until it is")
            }
            Err(e) => return Err(e),
        }
        let weak = Arc::downgrade(&reader);
        tokio::spawn(keep_fresh(weak, settings.refresh));
        Ok(reader)
    }

    fn origin(&self) -> &str {
        match &self.source {
            JwksSource::File(path) => path.to_str().unwrap_or("jwks_file"),
            JwksSource::Url { url, .. } => url,
        }
    }

    /// Reads the set now and swaps it in; returns how many keys it has. The caller holds no
    /// lock; this takes `last_read`.
    async fn read_now(&self) -> Result<usize, ReadError> {
        let mut last = self.last_read.lock().await;
        self.read_locked(&mut last).await
    }

    async fn read_locked(&self, last: &mut Option<Instant>) -> Result<usize, ReadError> {
        *last = Some(Instant::now());
        let bytes = match &self.source {
            JwksSource::File(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| ReadError::File {
                        path: path.display().to_string(),
                        source,
                    })?
            }
            JwksSource::Url {
                url,
                bearer_token_file,
                ..
            } => {
                let tls = self.tls.clone().ok_or(ReadError::Roots)?;
                let fetch = fetch(url, tls, bearer_token_file.as_deref());
                tokio::time::timeout(FETCH_TIMEOUT, fetch)
                    .await
                    .map_err(|_| fetch_error(url, "timed out"))??
            }
        };
        let set = JwkSet::parse(&bytes)?;
        let n = set.len();
        if let Ok(mut keys) = self.keys.write() {
            *keys = Arc::new(set);
        }
        Ok(n)
    }
}

impl KeySource for JwksReader {
    fn current(&self) -> Arc<JwkSet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn refresh(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Arc<JwkSet>>> + Send + '_>> {
        Box::pin(async move {
            let mut last = self.last_read.lock().await;
            // Read recently (perhaps by the request this one queued behind): that set it is.
            if last.is_some_and(|at| at.elapsed() < self.min_refresh) {
                return Some(self.current());
            }
            match self.read_locked(&mut last).await {
                Ok(n) => tracing::info!(keys = n, "jwt: key set read again for an unknown kid"),
                Err(e) => tracing::warn!(error = %e, "jwt: key set not read again"),
            }
            Some(self.current())
        })
    }
}

/// Reads the set every `every` until the reader is dropped.
async fn keep_fresh(reader: Weak<JwksReader>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(reader) = reader.upgrade() else {
            return;
        };
        if let Err(e) = reader.read_now().await {
            tracing::warn!(error = %e, "jwt: key set not read again; keeping the last one");
        }
    }
}

/// The `jwt` attestor `[attestation.jwt]` asks for: off without the table.
pub async fn attestor(settings: Option<&JwtSettings>) -> Result<Jwt, ReadError> {
    let Some(settings) = settings else {
        return Ok(Jwt::default());
    };
    let keys = JwksReader::start(settings).await?;
    Ok(Jwt::new(settings.rules.clone(), keys))
}

fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, ReadError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        roots.add(cert).map_err(|_| ReadError::Roots)?;
    }
    if roots.is_empty() {
        return Err(ReadError::Roots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ReadError::Roots)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn fetch_error(url: &str, problem: impl std::fmt::Display) -> ReadError {
    ReadError::Fetch {
        url: url.to_owned(),
        problem: problem.to_string(),
    }
}

/// GET `url` over HTTPS, at most [`MAX_JWKS_BYTES`] of body.
async fn fetch(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    bearer_token_file: Option<&Path>,
) -> Result<Vec<u8>, ReadError> {
    let uri: hyper::Uri = url.parse().map_err(|e| fetch_error(url, e))?;
    let host = uri.host().ok_or_else(|| fetch_error(url, "no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| fetch_error(url, e))?;
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| fetch_error(url, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| fetch_error(url, e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fetch_error(url, e))?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(file) = bearer_token_file {
        let token = tokio::fs::read_to_string(file)
            .await
            .map_err(|source| ReadError::File {
                path: file.display().to_string(),
                source,
            })?;
        request = request.header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| fetch_error(url, e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fetch_error(url, e))?;
    if !response.status().is_success() {
        driver.abort();
        return Err(ReadError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| fetch_error(url, e))?
        .to_bytes();
    driver.abort();
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests;
