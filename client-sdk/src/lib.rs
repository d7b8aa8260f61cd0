//! Mintgate's Rust SDK: a typed client over the generated stubs.
//!
//! [`Client::connect`] opens a mutual-TLS channel with the caller's certificate; every call
//! returns a [`Error`] that carries the server's stable reason code and says whether retrying can
//! help. The renewal loop and revocation watcher build on this client.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::time::Duration;

pub use mintgate_proto::v1;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

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

/// A failed call: the gRPC code, Mintgate's reason code, and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?} {reason}: {message}")]
pub struct Error {
    pub code: tonic::Code,
    /// Stable reason from `google.rpc.ErrorInfo` (e.g. `CSR_SIGNATURE_INVALID`), or
    /// `TRANSPORT` when the call never got an answer.
    pub reason: String,
    pub message: String,
    /// `user` or `system`, from `ErrorInfo.metadata["fault"]`; `None` without an answer.
    pub fault: Option<String>,
}

impl Error {
    /// Whether the same call may succeed later (a system fault, not the caller's).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
        )
    }

    /// Whether the server said the fault is the caller's.
    pub fn is_user_fault(&self) -> bool {
        self.fault.as_deref() == Some("user")
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let info = status.get_details_error_info();
        let fault = info.as_ref().and_then(|i| i.metadata.get("fault").cloned());
        let reason = info
            .map(|i| i.reason)
            .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase());
        Self {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
            fault,
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Self {
            code: tonic::Code::Unavailable,
            reason: "TRANSPORT".to_owned(),
            message: e.to_string(),
            fault: None,
        }
    }
}

/// A Mintgate client over one mutual-TLS channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    provisioning: v1::provisioning_client::ProvisioningClient<Channel>,
    admin: v1::admin_client::AdminClient<Channel>,
}

impl Client {
    /// Connects to `https://host:port`; `server_name` must be in the server certificate.
    pub async fn connect(url: &str, server_name: &str, tls: &TlsMaterial) -> Result<Self, Error> {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .domain_name(server_name);
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error {
                code: tonic::Code::InvalidArgument,
                reason: "BAD_URL".to_owned(),
                message: e.to_string(),
                fault: Some("user".to_owned()),
            })?
            .tls_config(config)?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(Self::from_channel(channel))
    }

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            provisioning: v1::provisioning_client::ProvisioningClient::new(channel.clone()),
            admin: v1::admin_client::AdminClient::new(channel),
        }
    }

    /// Provisioning/Enroll.
    pub async fn enroll(&self, request: v1::EnrollRequest) -> Result<v1::IssueResponse, Error> {
        Ok(self
            .provisioning
            .clone()
            .enroll(request)
            .await?
            .into_inner())
    }

    /// Provisioning/Renew.
    pub async fn renew(&self, request: v1::RenewRequest) -> Result<v1::IssueResponse, Error> {
        Ok(self.provisioning.clone().renew(request).await?.into_inner())
    }

    /// Provisioning/GetRequest.
    pub async fn get_request(&self, request_id: &str) -> Result<v1::RequestStatus, Error> {
        let request = v1::GetRequestRequest {
            request_id: request_id.to_owned(),
        };
        Ok(self
            .provisioning
            .clone()
            .get_request(request)
            .await?
            .into_inner())
    }

    /// Admin/CreateJoinToken.
    pub async fn create_join_token(
        &self,
        request: v1::CreateJoinTokenRequest,
    ) -> Result<v1::CreateJoinTokenResponse, Error> {
        Ok(self
            .admin
            .clone()
            .create_join_token(request)
            .await?
            .into_inner())
    }
}

/// A protobuf Duration of `secs` seconds.
pub fn seconds(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}
