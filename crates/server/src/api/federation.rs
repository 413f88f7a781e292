//! The Federation service: other regions' hubs pull this region's
//! knowledge. Thin: the caller's identity (a peer hub, as the policy
//! checked), the version it holds, the domain's batch, converted.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::Request;

use super::{Reply, caller, convert, exchanged, reply};
use crate::domain::digest::{Batch, FleetStats, RemoteInsight, RemoteModel, Subject};
use crate::domain::model::Insight;
use crate::error::Error;
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
        let (held, held_insights) = held(request.into_inner())?;
        let batches = self.hub.pull(&peer, &held, &held_insights)?;
        reply(pb::PullResponse {
            region: self.hub.region().to_string(),
            batches: batches.iter().map(digest_batch).collect(),
        })
    }

    async fn wake(&self, request: Request<pb::WakeRequest>) -> Reply<pb::WakeResponse> {
        let peer = caller(&request)?.clone();
        reply(pb::WakeResponse {
            pulls_from_caller: self.hub.peer_woke(&peer)?,
        })
    }
}

/// What a puller holds per origin: versions of knowledge, and insight
/// sequences.
pub type Held = (BTreeMap<String, u64>, BTreeMap<String, u64>);

/// A Pull request's versions held, checked: at most a list's worth of
/// origins, each a valid region name.
pub fn held(req: pb::PullRequest) -> Result<Held> {
    for (field, held) in [("held", &req.held), ("held_insights", &req.held_insights)] {
        validate::list_len(field, held.len())?;
        for origin in held.keys() {
            validate::name(&format!("{field}[{origin}]"), origin)?;
        }
    }
    Ok((
        req.held.into_iter().collect(),
        req.held_insights.into_iter().collect(),
    ))
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
            .filter_map(|(subject, entry)| exchanged::entry(subject, entry))
            .collect(),
        records: batch
            .records
            .iter()
            .map(|(id, record)| exchanged::record(id, record))
            .collect(),
        insights_after: batch.insights_after,
        insights_through: batch.insights_through,
        models: batch
            .models
            .iter()
            .map(|m| pb::ExchangedModel {
                name: m.name.clone(),
                version: m.version,
                weights: m.weights.clone(),
                updates: m.updates,
            })
            .collect(),
        insights: batch
            .insights
            .iter()
            .map(|i| pb::ExchangedInsight {
                origin_sequence: i.origin_sequence,
                insight: Some(convert::insight(&Insight {
                    id: i.id.clone(),
                    sequence: i.origin_sequence,
                    draft: i.draft.clone(),
                    created_at: i.created_at,
                    valid_until: i.valid_until,
                    // Nothing here crosses: the message has no such field.
                    shared_by: String::new(),
                    uses: 0,
                    origin_region: String::new(),
                })),
            })
            .collect(),
    }
}

/// A subject's fleet-wide figures as a message.
pub fn fleet_entry(subject: &Subject, figures: &FleetStats) -> Option<pb::FleetEntry> {
    Some(pb::FleetEntry {
        subject: Some(exchanged::strategy_subject(subject)?),
        stats: Some(exchanged::stats(&figures.stats)),
        origins: figures.origins,
    })
}

/// The most a peer's model weights may take (8 bytes each).
const MAX_MODEL_BYTES: usize = 1024 * 1024;

/// A batch a peer sent, checked as any input is: names valid, bands in
/// range, counts consistent, sums finite. The error names the field.
pub fn batch_from(message: pb::DigestBatch, at: usize) -> Result<Batch> {
    let field = |name: &str| format!("batches[{at}].{name}");
    validate::name(&field("origin"), &message.origin)?;
    // No count limit on entries beyond the message size: a region's first
    // answer carries everything it knows.
    let mut entries = BTreeMap::new();
    for (i, entry) in message.entries.into_iter().enumerate() {
        let field = |name: &str| format!("batches[{at}].entries[{i}].{name}");
        let (subject, versioned) = exchanged::entry_from(entry, &field)?;
        entries.insert(subject, versioned);
    }
    let mut records = BTreeMap::new();
    for (i, record) in message.records.into_iter().enumerate() {
        let field = |name: &str| format!("batches[{at}].records[{i}].{name}");
        let (id, record) = exchanged::record_from(record, &field)?;
        records.insert(id, record);
    }
    let mut insights = Vec::with_capacity(message.insights.len());
    for (k, exchanged) in message.insights.into_iter().enumerate() {
        let field = |name: &str| format!("batches[{at}].insights[{k}].{name}");
        let Some(mut insight) = exchanged.insight else {
            return Err(Error::invalid(field("insight"), "is required"));
        };
        let id = std::mem::take(&mut insight.id);
        validate::name(&field("insight.id"), &id)?;
        let stamp = |name: &str, ts: Option<prost_types::Timestamp>| {
            let ts = ts.ok_or_else(|| Error::invalid(field(name), "is required"))?;
            convert::millis(&field(name), &ts)
        };
        let created_at = stamp("insight.created_at", insight.created_at.take())?;
        let valid_until = stamp("insight.valid_until", insight.valid_until.take())?;
        insight.sequence = 0;
        // Checked as a shared insight is; the error names this insight.
        let draft = convert::insight_draft(Some(insight))
            .map_err(|e| Error::invalid(field("insight"), e.to_string()))?;
        insights.push(RemoteInsight {
            origin_sequence: exchanged.origin_sequence,
            id,
            draft,
            created_at,
            valid_until,
        });
    }
    let mut models = Vec::with_capacity(message.models.len());
    for (k, model) in message.models.into_iter().enumerate() {
        let field = |name: &str| format!("batches[{at}].models[{k}].{name}");
        validate::name(&field("name"), &model.name)?;
        validate::max_bytes(&field("weights"), model.weights.len() * 8, MAX_MODEL_BYTES)?;
        for (i, w) in model.weights.iter().enumerate() {
            validate::finite(&field(&format!("weights[{i}]")), *w)?;
        }
        models.push(RemoteModel {
            name: model.name,
            version: model.version,
            weights: model.weights,
            updates: model.updates,
        });
    }
    Ok(Batch {
        origin: message.origin,
        after: message.after,
        through: message.through,
        entries,
        insights_after: message.insights_after,
        insights_through: message.insights_through,
        insights,
        models,
        records,
    })
}
