//! `learninghub.v1.Admin`: operator actions (the auth layer admits only
//! operator certificates here).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
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
    ) -> Result<Response<pb::GenerateInsightsResponse>, Status> {
        let report = self
            .hub
            .generate_insights(GenerationSettings::default())
            .await?;
        Ok(Response::new(pb::GenerateInsightsResponse {
            insights: report.stored.iter().map(|i| convert::insight(i)).collect(),
            candidates: report.candidates as u32,
            validated: report.validated as u32,
            duplicates: report.duplicates as u32,
            outcomes_examined: report.outcomes_examined,
        }))
    }
}
