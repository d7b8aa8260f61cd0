//! [`Client`]: typed calls over one mutual-TLS channel.

use std::sync::Arc;
use std::time::Duration;

use mintgate_proto::v1;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::pacing::Pacing;
use crate::{Error, transport};

/// PEM material for a mutual-TLS connection.
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA certificate(s) that verify the server.
    pub ca_pem: String,
    /// The caller's certificate chain.
    pub cert_pem: String,
    /// The caller's private key. Never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// A fresh random request id (128 bits, hex), for calls the caller gave none.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The request id to send: the caller's, or a fresh one.
fn request_id(given: String) -> String {
    if given.is_empty() {
        new_request_id()
    } else {
        given
    }
}

/// A Mintgate client over one mutual-TLS channel. Cheap to clone.
///
/// Every mutating call takes a request id; an empty one is replaced by a fresh random id (then
/// a retry is a new request). To retry safely after an unknown outcome, set your own id and send
/// the same request again: Mintgate answers the same.
///
/// Enroll and Renew are paced (the client and its clones together): at most
/// [`ISSUANCES_ON_THE_WIRE`](crate::ISSUANCES_ON_THE_WIRE) are sent at once, and once the
/// server sheds one (`RESOURCE_EXHAUSTED` with a `RetryInfo`) none is sent until the time it
/// asked for has passed.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    pacing: Arc<Pacing>,
    provisioning: v1::provisioning_client::ProvisioningClient<Channel>,
    revocation: v1::revocation_client::RevocationClient<Channel>,
    admin: v1::admin_client::AdminClient<Channel>,
}

impl Client {
    /// Connects to `https://host:port`; `server_name` must be in the server certificate. With
    /// several replicas' URLs separated by commas, it connects to the first that answers, and
    /// when that one dies the next call reconnects to another (a call in flight then fails as
    /// `UNAVAILABLE`, and a retry with the same request id gets the same answer).
    ///
    /// Returns once the server has accepted this client's certificate. If it refuses it, this
    /// fails at once with code `UNAUTHENTICATED` and reason `CERTIFICATE_REVOKED`,
    /// `CERTIFICATE_EXPIRED` or `CERTIFICATE_REFUSED` (never retryable), the TLS alert the
    /// server sent named in the message.
    pub async fn connect(url: &str, server_name: &str, tls: &TlsMaterial) -> Result<Self, Error> {
        let channel = transport::channel(url, server_name, tls, Duration::from_secs(10)).await?;
        Ok(Self::from_channel(channel))
    }

    /// A client over an already connected channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            provisioning: v1::provisioning_client::ProvisioningClient::new(channel.clone()),
            revocation: v1::revocation_client::RevocationClient::new(channel.clone()),
            admin: v1::admin_client::AdminClient::new(channel.clone()),
            channel,
            pacing: Arc::new(Pacing::new()),
        }
    }

    /// The mutual-TLS channel itself, for services this client does not wrap (e.g.
    /// `grpc.health.v1.Health`, which Mintgate serves on the same port).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Provisioning/Enroll: a first certificate, attested by the node certificate this client
    /// connected with (and `join_token` where policy asks for one).
    pub async fn enroll(&self, mut request: v1::EnrollRequest) -> Result<v1::IssueResponse, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.provisioning.clone();
        let call = async { Ok(with_deadline(client.enroll(request)).await?.into_inner()) };
        self.pacing.send(call).await
    }

    /// Provisioning/Renew: a new certificate for the identity this client connected with.
    pub async fn renew(&self, mut request: v1::RenewRequest) -> Result<v1::IssueResponse, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.provisioning.clone();
        let call = async { Ok(with_deadline(client.renew(request)).await?.into_inner()) };
        self.pacing.send(call).await
    }

    /// Provisioning/GetRequest.
    pub async fn get_request(&self, request_id: &str) -> Result<v1::RequestStatus, Error> {
        let request = v1::GetRequestRequest {
            request_id: request_id.to_owned(),
        };
        let mut client = self.provisioning.clone();
        Ok(with_deadline(client.get_request(request))
            .await?
            .into_inner())
    }

    /// Revocation/Revoke: one certificate, by serial.
    pub async fn revoke(
        &self,
        mut request: v1::RevokeRequest,
    ) -> Result<v1::RevocationEvent, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.revocation.clone();
        with_deadline(client.revoke(request))
            .await?
            .into_inner()
            .revocation
            .ok_or_else(|| missing("revocation"))
    }

    /// Revocation/RevokeIdentity: every live certificate of one SPIFFE ID (operators).
    pub async fn revoke_identity(
        &self,
        mut request: v1::RevokeIdentityRequest,
    ) -> Result<v1::RevokeIdentityResponse, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.revocation.clone();
        Ok(with_deadline(client.revoke_identity(request))
            .await?
            .into_inner())
    }

    /// Revocation/CheckStatus.
    pub async fn check_status(
        &self,
        serials: Vec<String>,
    ) -> Result<v1::CheckStatusResponse, Error> {
        let mut client = self.revocation.clone();
        let request = v1::CheckStatusRequest { serials };
        Ok(with_deadline(client.check_status(request))
            .await?
            .into_inner())
    }

    /// Revocation/WatchRevocations from `cursor` (the last sequence number applied). The stream
    /// has no deadline; [`crate::RevocationWatcher`] keeps one alive and resumes it.
    pub async fn watch_revocations(
        &self,
        cursor: i64,
    ) -> Result<Streaming<v1::WatchRevocationsResponse>, Error> {
        let mut client = self.revocation.clone();
        Ok(client
            .watch_revocations(v1::WatchRevocationsRequest { cursor })
            .await?
            .into_inner())
    }

    /// Revocation/RevokeIssuer: proposes revoking a whole CA by its key id (hex SKI, as
    /// [`Client::list_authorities`] shows it). Nothing is revoked until a different operator
    /// approves the proposal; then one log entry (an event with `issuer` set) revokes every
    /// certificate the CA signed, which [`crate::RevocationSet`] applies to all of them.
    pub async fn revoke_issuer(
        &self,
        mut request: v1::RevokeIssuerRequest,
    ) -> Result<v1::Proposal, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.revocation.clone();
        with_deadline(client.revoke_issuer(request))
            .await?
            .into_inner()
            .proposal
            .ok_or_else(|| missing("proposal"))
    }

    /// Revocation/WatchTrustBundle: the current trust bundle at once, then each change. The
    /// stream has no deadline and ends when the server shuts down;
    /// [`crate::TrustBundleWatcher`] keeps one alive and reconnects.
    pub async fn watch_trust_bundle(&self) -> Result<Streaming<v1::TrustBundle>, Error> {
        let mut client = self.revocation.clone();
        Ok(client
            .watch_trust_bundle(v1::WatchTrustBundleRequest {})
            .await?
            .into_inner())
    }

    /// Admin/CreateJoinToken.
    pub async fn create_join_token(
        &self,
        mut request: v1::CreateJoinTokenRequest,
    ) -> Result<v1::CreateJoinTokenResponse, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.admin.clone();
        Ok(with_deadline(client.create_join_token(request))
            .await?
            .into_inner())
    }

    /// Admin/ProposeCa: proposes one step of a CA's staged rotation (prepare, activate,
    /// retire). It takes effect when a different operator approves the proposal.
    pub async fn propose_ca(
        &self,
        mut request: v1::ProposeCaRequest,
    ) -> Result<v1::Proposal, Error> {
        request.request_id = request_id(request.request_id);
        let mut client = self.admin.clone();
        with_deadline(client.propose_ca(request))
            .await?
            .into_inner()
            .proposal
            .ok_or_else(|| missing("proposal"))
    }

    /// Admin/ListAuthorities: every CA the server knows (newest first, with its state) and the
    /// current trust bundle.
    pub async fn list_authorities(&self) -> Result<v1::TrustBundle, Error> {
        let mut client = self.admin.clone();
        Ok(
            with_deadline(client.list_authorities(v1::ListAuthoritiesRequest {}))
                .await?
                .into_inner(),
        )
    }
}

/// Unary calls get a deadline; a stuck call is reported as unavailable.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

async fn with_deadline<T>(
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, Error> {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::from(tonic::Status::deadline_exceeded(
            "no answer within 30 s",
        ))),
    }
}

fn missing(field: &str) -> Error {
    Error::from(tonic::Status::internal(format!(
        "the answer has no {field}"
    )))
}
