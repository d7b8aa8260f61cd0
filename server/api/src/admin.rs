//! `mintgate.v1.Admin`: operator RPCs.

use std::sync::Arc;

use mintgate_domain::service::{JoinTokenInput, Mintgate};
use mintgate_domain::store::CertificateStore;
use mintgate_proto::v1;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::provisioning::open_request;
use crate::status::to_status;

pub(crate) struct AdminService<S> {
    pub(crate) app: Arc<Mintgate<S>>,
}

#[tonic::async_trait]
impl<S: CertificateStore> v1::admin_server::Admin for AdminService<S> {
    #[tracing::instrument(name = "CreateJoinToken", skip_all, fields(request_id, caller))]
    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let rid = body.request_id.clone();
        let input = JoinTokenInput {
            request_id: body.request_id,
            spiffe_id: body.spiffe_id,
            ttl: body.ttl.map(|d| (d.seconds, d.nanos)),
        };
        self.app
            .create_join_token(&caller, input)
            .await
            .map(|t| Response::new(convert::join_token_response(t)))
            .map_err(|e| to_status(&e, "CreateJoinToken", &rid))
    }
}
