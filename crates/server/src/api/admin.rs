//! `learninghub.v1.Admin`: operator actions (the auth layer admits only
//! operator certificates here).

use std::sync::Arc;

use tonic::Request;

use super::{Reply, caller, convert, reply};
use crate::domain::insight_gen::GenerationSettings;
use crate::hub::Hub;
use crate::pb;

/// Implements `learninghub.v1.Admin` over a [`Hub`].
#[derive(Clone)]
pub struct AdminService {
    hub: Arc<Hub>,
}

impl AdminService {
    pub fn new(hub: Arc<Hub>) -> Self {
        AdminService { hub }
    }

    pub fn into_server(self, max_message_bytes: usize) -> pb::admin_server::AdminServer<Self> {
        pb::admin_server::AdminServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn generate_insights(
        &self,
        _: Request<pb::GenerateInsightsRequest>,
    ) -> Reply<pb::GenerateInsightsResponse> {
        let report = self
            .hub
            .generate_insights(GenerationSettings::default())
            .await?;
        reply(pb::GenerateInsightsResponse {
            insights: report.stored.iter().map(|i| convert::insight(i)).collect(),
            candidates: report.candidates as u32,
            validated: report.validated as u32,
            duplicates: report.duplicates as u32,
            outcomes_examined: report.outcomes_examined,
        })
    }

    async fn issue_api_key(
        &self,
        request: Request<pb::IssueApiKeyRequest>,
    ) -> Reply<pb::IssueApiKeyResponse> {
        let operator = caller(&request)?.name.clone();
        let instance_id = convert::required_name("instance_id", request.into_inner().instance_id)?;
        let api_key = self.hub.issue_api_key(&operator, instance_id).await?;
        reply(pb::IssueApiKeyResponse { api_key })
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Reply<pb::RevokeApiKeyResponse> {
        let instance_id = convert::required_name("instance_id", request.into_inner().instance_id)?;
        self.hub.revoke_api_key(instance_id).await?;
        reply(pb::RevokeApiKeyResponse {})
    }

    async fn query_audit(
        &self,
        request: Request<pb::QueryAuditRequest>,
    ) -> Reply<pb::QueryAuditResponse> {
        let q = convert::audit_query(request.into_inner(), self.hub.now())?;
        let entries = self.hub.query_audit(q).await?;
        reply(pb::QueryAuditResponse {
            entries: entries.iter().map(convert::audit_entry).collect(),
        })
    }

    async fn resolve_failure(
        &self,
        request: Request<pb::ResolveFailureRequest>,
    ) -> Reply<pb::ResolveFailureResponse> {
        let id = convert::required_name("failure_id", request.into_inner().failure_id)?;
        let failure = self.hub.resolve_failure(id).await?;
        reply(pb::ResolveFailureResponse {
            failure: Some(convert::failure(&failure)),
        })
    }

    async fn invalidate_insight(
        &self,
        request: Request<pb::InvalidateInsightRequest>,
    ) -> Reply<pb::InvalidateInsightResponse> {
        let id = convert::required_name("insight_id", request.into_inner().insight_id)?;
        self.hub.invalidate_insight(id).await?;
        reply(pb::InvalidateInsightResponse {})
    }

    async fn quarantine_instance(
        &self,
        request: Request<pb::QuarantineInstanceRequest>,
    ) -> Reply<pb::QuarantineInstanceResponse> {
        let by = caller(&request)?.name.clone();
        let (instance_id, reason) = convert::quarantine_request(request.into_inner())?;
        let quarantine = self.hub.quarantine(instance_id, &by, reason).await?;
        reply(pb::QuarantineInstanceResponse {
            quarantine: Some(convert::quarantine(&quarantine)),
        })
    }

    async fn release_instance(
        &self,
        request: Request<pb::ReleaseInstanceRequest>,
    ) -> Reply<pb::ReleaseInstanceResponse> {
        let id = convert::required_name("instance_id", request.into_inner().instance_id)?;
        self.hub.release(id).await?;
        reply(pb::ReleaseInstanceResponse {})
    }

    async fn list_quarantined(
        &self,
        _: Request<pb::ListQuarantinedRequest>,
    ) -> Reply<pb::ListQuarantinedResponse> {
        reply(pb::ListQuarantinedResponse {
            quarantined: self
                .hub
                .quarantined()
                .iter()
                .map(|q| convert::quarantine(q))
                .collect(),
        })
    }

    async fn list_anomalies(
        &self,
        request: Request<pb::ListAnomaliesRequest>,
    ) -> Reply<pb::ListAnomaliesResponse> {
        let new = if request.into_inner().scan {
            self.hub.scan_anomalies(None).await?.new
        } else {
            0
        };
        let quarantined = self.hub.quarantined();
        reply(pb::ListAnomaliesResponse {
            anomalies: self
                .hub
                .anomalies()
                .iter()
                .map(|a| {
                    // A strategy shift's empty instance id matches no one.
                    let held = quarantined
                        .iter()
                        .any(|q| q.instance_id == a.finding.instance_id);
                    convert::anomaly(a, held)
                })
                .collect(),
            new_anomalies: new as u32,
        })
    }

    async fn get_fleet_knowledge(
        &self,
        request: Request<pb::GetFleetKnowledgeRequest>,
    ) -> Reply<pb::GetFleetKnowledgeResponse> {
        let metric = convert::metric_filter(request.into_inner().metric)?;
        let figures = self.hub.fleet_figures();
        let digest = crate::domain::digest::figures_digest(&figures);
        reply(pb::GetFleetKnowledgeResponse {
            region: self.hub.region().to_string(),
            entries: figures
                .iter()
                .filter(|(subject, _)| metric.is_empty() || subject.metric() == metric)
                .filter_map(|(subject, figures)| super::federation::fleet_entry(subject, figures))
                .collect(),
            digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    async fn get_replica_status(
        &self,
        _: Request<pb::GetReplicaStatusRequest>,
    ) -> Reply<pb::GetReplicaStatusResponse> {
        let status = self.hub.replica_report().await?;
        reply(pb::GetReplicaStatusResponse {
            replica: status.replica,
            storage: status.storage,
            log_position: status.log_position,
            log_head: status.log_head,
            state_digest: status.state_digest,
            holds_jobs_lease: status.lease_epoch.is_some() || !status.is_replica,
            lease_epoch: status.lease_epoch.unwrap_or(0),
            not_serving: status.not_serving.unwrap_or_default(),
        })
    }
}
