//! This regional hub among the others: what it tells a peer that pulls
//! (its own knowledge, and what it holds of third regions), what it keeps
//! of what it pulls (merged per origin through the log, see
//! [`crate::domain::digest`]), and how each link to a peer is doing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Hub, State, wrong_answer};
use crate::domain::command::Action;
use crate::domain::digest::{
    self, Batch, FleetStats, RemoteInsight, RemoteModel, Subject, Versioned,
};
use crate::domain::fold::Answer;
use crate::domain::identity::Identity;
use crate::domain::knowledge;
use crate::domain::model::{Insight, UnixMillis};
use crate::error::{Error, Result};

/// An insight as another region receives it, under `origin_sequence`.
fn remote_insight(origin_sequence: u64, insight: &Insight) -> RemoteInsight {
    RemoteInsight {
        origin_sequence,
        id: insight.id.clone(),
        draft: insight.draft.clone(),
        created_at: insight.created_at,
        valid_until: insight.valid_until,
    }
}

/// How the exchanges with one peer region are going (kept in memory: a
/// restarted hub starts counting again).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerLink {
    /// Where this hub pulls from.
    pub url: String,
    /// When a pull last succeeded (`None`: never since start).
    pub last_success: Option<UnixMillis>,
    /// When this hub last tried.
    pub last_attempt: Option<UnixMillis>,
    /// Pulls that failed since the last success.
    pub failures_in_a_row: u64,
    /// Why the last failed pull failed (empty after a success).
    pub last_error: String,
    /// Batches from this peer that changed what this region holds.
    pub batches_merged: u64,
}

impl PeerLink {
    /// How old what this region holds of the peer may be at `now`: the time
    /// since the last successful exchange, or since `started` if there was
    /// none.
    pub fn staleness_ms(&self, now: UnixMillis, started: UnixMillis) -> u64 {
        (now - self.last_success.unwrap_or(started)).max(0) as u64
    }
}

impl Hub {
    /// What the peer `caller` may pull: this region's own knowledge above
    /// what it holds of it, and what this region holds of every third
    /// region above what the caller holds of each (so knowledge crosses a
    /// cut link by another path). FAILED_PRECONDITION when this hub has no
    /// region, PERMISSION_DENIED when the caller's region is not among its
    /// peers.
    pub fn pull(
        &self,
        caller: &Identity,
        held: &BTreeMap<String, u64>,
        held_insights: &BTreeMap<String, u64>,
    ) -> Result<Vec<Batch>> {
        self.check_peer(caller)?;
        let settings = &self.shared.settings;
        let state = self.state();
        let now = self.now();
        let since = |origin: &str| held.get(origin).copied().unwrap_or(0);
        let insights_since = |origin: &str| held_insights.get(origin).copied().unwrap_or(0);
        let valid = |sequence: u64| {
            state
                .tables
                .insights
                .get(&sequence)
                .filter(|i| i.is_valid_at(now))
        };
        let mut own = self.own_export(&state, since(&settings.region));
        // This region's own insights (not those it imported).
        own.insights_after = insights_since(&settings.region);
        own.insights_through = state.counters.insight_sequence;
        own.insights = state
            .tables
            .insights
            .range(own.insights_after + 1..)
            .filter(|(_, i)| i.origin_region.is_empty() && i.is_valid_at(now))
            .map(|(sequence, i)| remote_insight(*sequence, i))
            .collect();
        // Its fleet models (a context's model stays in the region).
        own.models = state
            .tables
            .models
            .values()
            .filter(|m| m.version > 0 && m.base_name() == m.name)
            .map(|m| RemoteModel {
                name: m.name.clone(),
                version: m.version,
                weights: m.weights.clone(),
                updates: m.contributors.values().sum(),
            })
            .collect();
        let mut batches = Vec::new();
        if !own.is_empty() {
            batches.push(own);
        }
        for (origin, knowledge) in state.tables.regions.iter() {
            if *origin == caller.name || *origin == settings.region {
                continue;
            }
            let mut batch = knowledge.since(origin, since(origin));
            batch.insights_after = insights_since(origin);
            batch.insights_through = knowledge.insights_through;
            batch.insights = knowledge
                .imported
                .range(batch.insights_after + 1..)
                .filter_map(|(origin_sequence, local)| {
                    Some(remote_insight(*origin_sequence, valid(*local)?))
                })
                .collect();
            if !batch.is_empty() {
                batches.push(batch);
            }
        }
        Ok(batches)
    }

    /// FAILED_PRECONDITION when this hub has no region, PERMISSION_DENIED
    /// when `caller`'s region is not among its peers.
    fn check_peer(&self, caller: &Identity) -> Result<()> {
        let settings = &self.shared.settings;
        if settings.region.is_empty() {
            return Err(Error::FailedPrecondition(
                "this hub has no region (federation.region): it does not federate".into(),
            ));
        }
        if !settings.peers.contains(&caller.name) {
            return Err(Error::PermissionDenied(format!(
                "region {:?} is not among this hub's peers (federation.peers: {:?})",
                caller.name, settings.peers
            )));
        }
        Ok(())
    }

    /// A peer's wake-up: its pull loop here (if this hub pulls from it)
    /// pulls now. Returns whether this hub pulls from the caller. The same
    /// callers as [`Hub::pull`].
    pub fn peer_woke(&self, caller: &Identity) -> Result<bool> {
        self.check_peer(caller)?;
        let wakes = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match wakes.get(&caller.name) {
            Some(notify) => {
                // Kept if the loop is busy: it pulls once more after.
                notify.notify_one();
                true
            }
            None => false,
        })
    }

    /// What wakes the pull loop of `peer` (made on first use).
    pub fn wake_signal(&self, peer: &str) -> Arc<tokio::sync::Notify> {
        let mut wakes = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
        wakes.entry(peer.to_string()).or_default().clone()
    }

    /// Moves whenever this hub's log does: what its wake-ups follow.
    pub fn log_moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.position.subscribe()
    }

    /// This region's own knowledge above `after` (its strategy statistics,
    /// failures, patterns and configurations), complete through the newest
    /// change of any.
    fn own_export(&self, state: &State, after: u64) -> Batch {
        let tables = &state.tables;
        let through = (tables.strategies.values().map(|r| r.version()))
            .chain(tables.failures.values().map(|f| f.changed_at))
            .chain(tables.patterns.values().map(|p| p.changed_at))
            .chain(tables.configs.values().map(|c| c.changed_at))
            .max()
            .unwrap_or(0);
        let mut batch = digest::export_strategies(
            &self.shared.settings.region,
            state.tables.strategies.values().map(|r| &**r),
            after,
            through,
        );
        batch.records = knowledge::export_failures(
            tables.failures.values().map(|f| &**f),
            |strategy| state.own_usage_of(strategy),
            after,
        );
        batch.records.extend(knowledge::export_patterns(
            tables.patterns.values().map(|p| &**p),
            after,
        ));
        batch.records.extend(knowledge::export_configurations(
            tables.configs.values().map(|c| &**c),
            after,
        ));
        batch
    }

    /// For each other origin region, the version through which this hub
    /// holds its knowledge complete: what a pull asks for more than.
    pub fn held_versions(&self) -> BTreeMap<String, u64> {
        self.state()
            .tables
            .regions
            .iter()
            .map(|(origin, knowledge)| (origin.clone(), knowledge.complete_through))
            .collect()
    }

    /// For each other origin region, its insight sequence through which
    /// this hub holds its insights.
    pub fn held_insight_versions(&self) -> BTreeMap<String, u64> {
        self.state()
            .tables
            .regions
            .iter()
            .map(|(origin, knowledge)| (origin.clone(), knowledge.insights_through))
            .collect()
    }

    /// Keeps what a peer sent, through the log. Writes nothing when it would
    /// change nothing (the usual answer to a pull between two quiet
    /// regions), so idle links do not grow the log. Returns how many
    /// batches changed what this region holds.
    pub async fn merge_digests(&self, batches: Vec<Batch>) -> Result<usize> {
        let own_region = self.shared.settings.region.clone();
        let state = self.state();
        let news: Vec<Batch> = batches
            .into_iter()
            .filter(|b| b.origin != own_region)
            .filter(|b| {
                state
                    .tables
                    .regions
                    .get(&b.origin)
                    .is_none_or(|held| held.would_change(b))
            })
            .collect();
        if news.is_empty() {
            return Ok(0);
        }
        match self
            .submit(Action::MergeDigests {
                own_region,
                batches: news,
            })
            .await?
        {
            Answer::DigestsMerged { changed } => Ok(changed),
            other => Err(wrong_answer("MergeDigests", other)),
        }
    }

    /// The fleet's figures as this region holds them: its own knowledge and
    /// every other origin's, summed in origin order (see
    /// [`digest::fleet_figures`]).
    pub fn fleet_figures(&self) -> BTreeMap<Subject, FleetStats> {
        let state = self.state();
        let own = self.own_export(&state, 0);
        let mut origins: BTreeMap<&str, &BTreeMap<Subject, Versioned>> = state
            .tables
            .regions
            .iter()
            .filter(|(origin, _)| **origin != own.origin)
            .map(|(origin, knowledge)| (origin.as_str(), &knowledge.entries))
            .collect();
        origins.insert(own.origin.as_str(), &own.entries);
        digest::fleet_figures(&origins)
    }

    /// Records how a pull from `peer` went.
    pub fn note_pull(&self, peer: &str, url: &str, outcome: std::result::Result<usize, String>) {
        let now = self.now();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let link = links.entry(peer.to_string()).or_default();
        link.url = url.to_string();
        link.last_attempt = Some(now);
        match outcome {
            Ok(merged) => {
                link.last_success = Some(now);
                link.failures_in_a_row = 0;
                link.last_error.clear();
                link.batches_merged += merged as u64;
            }
            Err(why) => {
                link.failures_in_a_row += 1;
                link.last_error = why;
            }
        }
    }

    /// Each peer this hub pulls from, with how its link is doing.
    pub fn peer_links(&self) -> BTreeMap<String, PeerLink> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// When this hub process started.
    pub fn started_at(&self) -> UnixMillis {
        self.started_at
    }

    /// This hub's region (empty when it does not federate).
    pub fn region(&self) -> &str {
        &self.shared.settings.region
    }
}
