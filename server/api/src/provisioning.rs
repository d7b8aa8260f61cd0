//! `mintgate.v1.Provisioning`: Enroll, Renew, GetRequest.

use std::sync::Arc;

use mintgate_domain::model::Caller;
use mintgate_domain::service::Mintgate;
use mintgate_domain::store::CertificateStore;
use mintgate_proto::v1;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::server::caller;
use crate::shedding::IssuanceGate;
use crate::status::to_status;

pub(crate) struct ProvisioningService<S> {
    pub(crate) app: Arc<Mintgate<S>>,
    /// Sheds issuances over the server's and the caller's limits.
    pub(crate) gate: Arc<IssuanceGate>,
}

#[tonic::async_trait]
impl<S: CertificateStore> v1::provisioning_server::Provisioning for ProvisioningService<S> {
    #[tracing::instrument(name = "Enroll", skip_all, fields(request_id, caller))]
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::IssueResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let _pass = self.gate.enter(caller.id.as_str(), "Enroll")?;
        let rid = body.request_id.clone();
        self.app
            .enroll(&caller, convert::enroll_input(body))
            .await
            .map(|i| Response::new(convert::issue_outcome(i)))
            .map_err(|e| to_status(&e, "Enroll", &rid))
    }

    #[tracing::instrument(name = "Renew", skip_all, fields(request_id, caller))]
    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::IssueResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let _pass = self.gate.enter(caller.id.as_str(), "Renew")?;
        let rid = body.request_id.clone();
        self.app
            .renew(&caller, convert::renew_input(body))
            .await
            .map(|i| Response::new(convert::issue_outcome(i)))
            .map_err(|e| to_status(&e, "Renew", &rid))
    }

    #[tracing::instrument(name = "GetRequest", skip_all, fields(request_id, caller))]
    async fn get_request(
        &self,
        request: Request<v1::GetRequestRequest>,
    ) -> Result<Response<v1::RequestStatus>, Status> {
        let (caller, body) = open_request(request)?;
        self.app
            .get_request(&caller, &body.request_id)
            .await
            .map(|r| Response::new(convert::request_status(r)))
            .map_err(|e| to_status(&e, "GetRequest", &body.request_id))
    }
}

/// The caller and the message, with both recorded on the current span (the caller by
/// [`caller`]).
pub(crate) fn open_request<T: RequestIdField>(
    request: Request<T>,
) -> Result<(Arc<Caller>, T), Status> {
    let caller = caller(&request)?;
    let body = request.into_inner();
    tracing::Span::current().record("request_id", body.request_id());
    Ok((caller, body))
}

pub(crate) trait RequestIdField {
    fn request_id(&self) -> &str;
}

macro_rules! request_id_field {
    ($($t:ty),*) => {$(
        impl RequestIdField for $t {
            fn request_id(&self) -> &str {
                &self.request_id
            }
        }
    )*};
}

request_id_field!(
    v1::EnrollRequest,
    v1::RenewRequest,
    v1::GetRequestRequest,
    v1::CreateJoinTokenRequest,
    v1::RevokeRequest,
    v1::RevokeIdentityRequest,
    v1::UnblockIdentityRequest,
    v1::ProposePolicyRequest,
    v1::ProposeRoleBindingRequest,
    v1::ProposeCaRequest,
    v1::RevokeIssuerRequest
);
