//! `mintgate.v1.Admin`: operator RPCs, each authorized by the active Cedar policy.

use std::sync::Arc;

use mintgate_domain::governance::{Change, ProposalStatus};
use mintgate_domain::policy::{PolicyFile, PolicySource};
use mintgate_domain::ports::Clock;
use mintgate_domain::service::{
    CaProposalInput, JoinTokenInput, Mintgate, PolicyProposalInput, RoleBindingInput,
};
use mintgate_domain::store::CertificateStore;
use mintgate_domain::{Error, InputError};
use mintgate_proto::v1;
use tonic::{Request, Response, Status};

use crate::bundle::BundleFeed;
use crate::convert;
use crate::evidence::{ChunkStream, EvidenceExporter};
use crate::holds::{HoldFeed, WatchPendingStream};
use crate::provisioning::open_request;
use crate::server::caller;
use crate::status::to_status;

pub(crate) struct AdminService<S> {
    pub(crate) app: Arc<Mintgate<S>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) holds: HoldFeed,
    pub(crate) evidence: Arc<dyn EvidenceExporter>,
    pub(crate) bundle: BundleFeed,
}

impl<S: CertificateStore> AdminService<S> {
    fn proposal_response(
        &self,
        p: &mintgate_domain::governance::ProposalRecord,
    ) -> Response<v1::ProposalResponse> {
        Response::new(v1::ProposalResponse {
            proposal: Some(convert::proposal(p, p.status(self.clock.now()))),
            diff: String::new(),
        })
    }
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

    #[tracing::instrument(name = "ProposePolicy", skip_all, fields(request_id, caller))]
    async fn propose_policy(
        &self,
        request: Request<v1::ProposePolicyRequest>,
    ) -> Result<Response<v1::ProposalResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let rid = body.request_id.clone();
        let input = PolicyProposalInput {
            request_id: body.request_id,
            source: PolicySource {
                schema: body.schema,
                files: body
                    .files
                    .into_iter()
                    .map(|f| PolicyFile {
                        name: f.name,
                        text: f.text,
                    })
                    .collect(),
            },
            label: body.label,
        };
        self.app
            .propose_policy(&caller, input)
            .await
            .map(|p| self.proposal_response(&p))
            .map_err(|e| to_status(&e, "ProposePolicy", &rid))
    }

    #[tracing::instrument(name = "ProposeRoleBinding", skip_all, fields(request_id, caller))]
    async fn propose_role_binding(
        &self,
        request: Request<v1::ProposeRoleBindingRequest>,
    ) -> Result<Response<v1::ProposalResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let rid = body.request_id.clone();
        let status = |e: Error| to_status(&e, "ProposeRoleBinding", &rid);
        let valid_until =
            convert::time_of(body.valid_until, "valid_until").map_err(|e| status(e.into()))?;
        let input = RoleBindingInput {
            request_id: body.request_id,
            operator: body.operator,
            role: body.role,
            valid_until,
            remove: body.remove,
        };
        self.app
            .propose_role_binding(&caller, input)
            .await
            .map(|p| self.proposal_response(&p))
            .map_err(status)
    }

    #[tracing::instrument(name = "ProposeCa", skip_all, fields(request_id, caller))]
    async fn propose_ca(
        &self,
        request: Request<v1::ProposeCaRequest>,
    ) -> Result<Response<v1::ProposalResponse>, Status> {
        let (caller, body) = open_request(request)?;
        let rid = body.request_id.clone();
        let status = |e: Error| to_status(&e, "ProposeCa", &rid);
        let input = CaProposalInput {
            action: convert::ca_action(body.action).map_err(|e| status(e.into()))?,
            request_id: body.request_id,
            chain_pem: body.chain_pem,
            key: body.key,
            key_id: body.key_id,
        };
        self.app
            .propose_ca(&caller, input)
            .await
            .map(|p| self.proposal_response(&p))
            .map_err(status)
    }

    #[tracing::instrument(name = "ListAuthorities", skip_all, fields(caller))]
    async fn list_authorities(
        &self,
        request: Request<v1::ListAuthoritiesRequest>,
    ) -> Result<Response<v1::TrustBundle>, Status> {
        let caller = caller(&request)?;
        let authorities = self
            .app
            .list_authorities(&caller)
            .await
            .map_err(|e| to_status(&e, "ListAuthorities", ""))?;
        let bundle = self.bundle.current();
        Ok(Response::new(v1::TrustBundle {
            bundle_pem: bundle.bundle_pem.clone(),
            version: bundle.version.clone(),
            authorities: authorities.iter().map(convert::authority).collect(),
        }))
    }

    #[tracing::instrument(name = "GetProposal", skip_all, fields(caller))]
    async fn get_proposal(
        &self,
        request: Request<v1::GetProposalRequest>,
    ) -> Result<Response<v1::ProposalResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().proposal_id;
        self.app
            .get_proposal(&caller, &id)
            .await
            .map(|view| {
                Response::new(v1::ProposalResponse {
                    proposal: Some(convert::proposal(&view.proposal, view.status)),
                    diff: view.diff,
                })
            })
            .map_err(|e| to_status(&e, "GetProposal", ""))
    }

    #[tracing::instrument(name = "ListProposals", skip_all, fields(caller))]
    async fn list_proposals(
        &self,
        request: Request<v1::ListProposalsRequest>,
    ) -> Result<Response<v1::ListProposalsResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let status = |e: Error| to_status(&e, "ListProposals", "");
        let state = match v1::ProposalState::try_from(body.state) {
            Ok(v1::ProposalState::Unspecified) => None,
            Ok(v1::ProposalState::Open) => Some(ProposalStatus::Open),
            Ok(v1::ProposalState::Applied) => Some(ProposalStatus::Applied),
            Ok(v1::ProposalState::Expired) => Some(ProposalStatus::Expired),
            Ok(v1::ProposalState::Superseded) => Some(ProposalStatus::Superseded),
            Err(_) => return Err(status(InputError::ProposalStateInvalid.into())),
        };
        let found = self
            .app
            .list_proposals(&caller, state, u64::from(body.limit))
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListProposalsResponse {
            proposals: found
                .iter()
                .map(|(p, s)| convert::proposal(p, *s))
                .collect(),
        }))
    }

    #[tracing::instrument(name = "ShadowPolicy", skip_all, fields(caller))]
    async fn shadow_policy(
        &self,
        request: Request<v1::ShadowPolicyRequest>,
    ) -> Result<Response<v1::ShadowPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        self.app
            .shadow_policy(&caller, &body.proposal_id, body.stop)
            .await
            .map(|version| {
                Response::new(v1::ShadowPolicyResponse {
                    shadow_version: version.unwrap_or_default(),
                })
            })
            .map_err(|e| to_status(&e, "ShadowPolicy", ""))
    }

    #[tracing::instrument(name = "ApproveProposal", skip_all, fields(caller))]
    async fn approve_proposal(
        &self,
        request: Request<v1::ApproveProposalRequest>,
    ) -> Result<Response<v1::ProposalResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().proposal_id;
        let applied = self
            .app
            .approve_proposal(&caller, &id)
            .await
            .map_err(|e| to_status(&e, "ApproveProposal", ""))?;
        // A CA change is in force here (signer, listener, bundle, revocations) when answered.
        if matches!(
            applied.change,
            Change::Ca { .. } | Change::RevokeIssuer { .. }
        ) {
            self.bundle.reloaded().await;
        }
        Ok(self.proposal_response(&applied))
    }

    #[tracing::instrument(name = "GetGovernance", skip_all, fields(caller))]
    async fn get_governance(
        &self,
        request: Request<v1::GetGovernanceRequest>,
    ) -> Result<Response<v1::GetGovernanceResponse>, Status> {
        let caller = caller(&request)?;
        let view = self
            .app
            .governance(&caller)
            .await
            .map_err(|e| to_status(&e, "GetGovernance", ""))?;
        let activation = view.activation;
        Ok(Response::new(v1::GetGovernanceResponse {
            policy_version: activation
                .as_ref()
                .map(|a| a.version.clone())
                .unwrap_or_else(|| self.app.policy().version().to_owned()),
            policy_label: activation
                .as_ref()
                .and_then(|a| a.label.clone())
                .unwrap_or_default(),
            activated_at: activation
                .as_ref()
                .map(|a| convert::timestamp(a.activated_at)),
            shadow_version: view.shadow_version.unwrap_or_default(),
            role_bindings: view.bindings.iter().map(convert::role_binding).collect(),
        }))
    }

    #[tracing::instrument(name = "ListPending", skip_all, fields(caller))]
    async fn list_pending(
        &self,
        request: Request<v1::ListPendingRequest>,
    ) -> Result<Response<v1::ListPendingResponse>, Status> {
        self.list_pending_rpc(request).await
    }

    #[tracing::instrument(name = "Approve", skip_all, fields(caller))]
    async fn approve(
        &self,
        request: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::Hold>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        self.vote_rpc(&caller, &body.hold_id, &body.reason, true)
            .await
    }

    #[tracing::instrument(name = "Deny", skip_all, fields(caller))]
    async fn deny(&self, request: Request<v1::DenyRequest>) -> Result<Response<v1::Hold>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        self.vote_rpc(&caller, &body.hold_id, &body.reason, false)
            .await
    }

    type WatchPendingStream = WatchPendingStream;

    #[tracing::instrument(name = "WatchPending", skip_all, fields(caller))]
    async fn watch_pending(
        &self,
        request: Request<v1::WatchPendingRequest>,
    ) -> Result<Response<Self::WatchPendingStream>, Status> {
        self.watch_pending_rpc(request).await
    }

    type ExportEvidenceStream = ChunkStream;

    #[tracing::instrument(name = "ExportEvidence", skip_all, fields(caller))]
    async fn export_evidence(
        &self,
        request: Request<v1::ExportEvidenceRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        crate::evidence::stream(&self.app, self.evidence.as_ref(), &caller, body)
            .await
            .map(Response::new)
    }
}
