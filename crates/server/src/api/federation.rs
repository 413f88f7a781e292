//! The Federation service: other regions' hubs pull this region's
//! knowledge. Thin: the caller's identity (a peer hub, as the policy
//! checked), the version it holds, the domain's batch, converted.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::Request;

use super::{Reply, caller, reply};
use crate::domain::digest::{Batch, Subject};
use crate::error::Result;
use crate::hub::Hub;
use crate::pb;
use crate::validate;

/// The `learninghub.v1.Federation` service.
pub struct FederationService {
    hub: Arc<Hub>,
}

impl FederationService {
    pub fn new(hub: Arc<Hub>) -> Self {
        FederationService { hub }
    }

    pub fn into_server(
        self,
        max_message_bytes: usize,
    ) -> pb::federation_server::FederationServer<Self> {
        pb::federation_server::FederationServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    async fn pull(&self, request: Request<pb::PullRequest>) -> Reply<pb::PullResponse> {
        let peer = caller(&request)?.clone();
        let held = held(request.into_inner())?;
        let own = self.hub.region().to_string();
        let after = held.get(&own).copied().unwrap_or(0);
        let batch = self.hub.pull(&peer, after)?;
        let batches = if batch.entries.is_empty() && batch.through <= after {
            Vec::new()
        } else {
            vec![digest_batch(&batch)]
        };
        reply(pb::PullResponse {
            region: own,
            batches,
        })
    }
}

/// A Pull request's versions held, checked: at most a list's worth of
/// origins, each a valid region name.
pub fn held(req: pb::PullRequest) -> Result<BTreeMap<String, u64>> {
    validate::list_len("held", req.held.len())?;
    for origin in req.held.keys() {
        validate::name(&format!("held[{origin}]"), origin)?;
    }
    Ok(req.held.into_iter().collect())
}

/// A batch as a message.
pub fn digest_batch(batch: &Batch) -> pb::DigestBatch {
    pb::DigestBatch {
        origin: batch.origin.clone(),
        after: batch.after,
        through: batch.through,
        entries: batch
            .entries
            .iter()
            .filter_map(|(subject, entry)| match subject {
                Subject::Strategy {
                    metric,
                    strategy,
                    context_key,
                    band,
                    day,
                } => Some(pb::DigestEntry {
                    strategy: Some(pb::StrategySubject {
                        metric: metric.clone(),
                        strategy: strategy.clone(),
                        context_key: context_key.clone(),
                        band: u32::from(*band),
                        day: *day,
                    }),
                    version: entry.version,
                    stats: Some(pb::DigestStats {
                        count: entry.stats.count,
                        successes: entry.stats.successes,
                        gain_sum: entry.stats.gain_sum,
                        gain_sum_sq: entry.stats.gain_sum_sq,
                        loss_sum: entry.stats.loss_sum,
                        loss_sum_sq: entry.stats.loss_sum_sq,
                    }),
                }),
                // Recovery subjects are not exported yet.
                Subject::Recovery { .. } => None,
            })
            .collect(),
    }
}
