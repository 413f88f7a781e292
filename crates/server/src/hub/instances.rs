//! Instance registration, the fleet listing, and quarantine.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{Bootstrap, DAY_MS, Hub, wrong_answer};
use crate::domain::command::Action;
use crate::domain::fold::Answer;
use crate::domain::influence::{self, Rebuilt};
use crate::domain::model::{
    Instance, Quarantine, Registration, StrategyKey, StrategyOutcome, StrategyRecord, day_of,
};
use crate::error::{Error, Result};

/// One page of ListInstances.
#[derive(Debug, Clone)]
pub struct InstancePage {
    pub instances: Vec<Arc<Instance>>,
    pub by_region: BTreeMap<String, u64>,
    pub total: u64,
    /// Id to continue after; `None` on the last page.
    pub next_after: Option<String>,
}

impl Hub {
    /// Registers `caller` (or refreshes its record) and picks its bootstrap
    /// configuration. The id in the request must be the caller's own.
    pub async fn register(
        &self,
        caller: &str,
        registration: Registration,
    ) -> Result<(Arc<Instance>, bool, Bootstrap)> {
        if registration.instance_id != caller {
            return Err(Error::PermissionDenied(format!(
                "instance_id {:?} does not match the client certificate's identity {caller:?}",
                registration.instance_id
            )));
        }
        let answer = self
            .submit(Action::Register {
                caller: caller.to_string(),
                registration,
            })
            .await?;
        let Answer::Registered { instance, new } = answer else {
            return Err(wrong_answer("Register", answer));
        };
        let bootstrap = self.bootstrap_for(&instance.context);
        Ok((instance, new, bootstrap))
    }

    /// An instance's view of the fleet: counts by region and its own record.
    pub fn own_listing(&self, instance_id: &str) -> InstancePage {
        let mut page = self.list_instances(None, None, 0);
        page.instances = self
            .state()
            .tables
            .instances
            .get(instance_id)
            .cloned()
            .into_iter()
            .collect();
        page.next_after = None;
        page
    }

    /// Instances in id order after `after`, optionally in one region.
    pub fn list_instances(
        &self,
        region: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> InstancePage {
        let state = self.state();
        let mut by_region = BTreeMap::new();
        for instance in state.tables.instances.values() {
            *by_region.entry(instance.region.clone()).or_insert(0) += 1;
        }
        let start = after.map_or(std::ops::Bound::Unbounded, |a| {
            std::ops::Bound::Excluded(crate::domain::model::Name::from(a))
        });
        let mut matching = state
            .tables
            .instances
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, i)| i)
            .filter(|i| region.is_none_or(|r| i.region == r));
        let instances: Vec<_> = matching.by_ref().take(limit).cloned().collect();
        let next_after = match matching.next() {
            Some(_) => instances.last().map(|i| i.instance_id.clone()),
            None => None,
        };
        InstancePage {
            instances,
            by_region,
            total: state.tables.instances.len() as u64,
            next_after,
        }
    }
}

impl Hub {
    /// (Operators) puts `instance_id` in quarantine: its writes are refused
    /// from now on, its pending model updates dropped, and what it reported
    /// stops counting: the evidence windows of the aggregates it reported
    /// into are rebuilt from the outcome log without it, and its failure
    /// reports are taken out.
    pub async fn quarantine(
        &self,
        instance_id: String,
        by: &str,
        reason: String,
    ) -> Result<Arc<Quarantine>> {
        // Outcomes folded between the rebuild and the command make the fold
        // refuse it (nothing may be lost); a few tries get through.
        let mut tries = 0;
        loop {
            tries += 1;
            let rebuilt = self.rebuild_without(&instance_id).await?;
            let answer = self
                .submit(Action::QuarantineInstance {
                    instance_id: instance_id.clone(),
                    by: by.to_string(),
                    reason: reason.clone(),
                    rebuilt,
                })
                .await;
            match answer {
                Ok(Answer::Quarantined { quarantine }) => return Ok(quarantine),
                Ok(other) => return Err(wrong_answer("QuarantineInstance", other)),
                Err(Error::FailedPrecondition(why)) if tries < 5 && why.contains("rebuilt") => {
                    tracing::debug!(%why, tries, "quarantine rebuild raced a write; again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The evidence windows of the aggregates `instance_id` reported into,
    /// rebuilt without its outcomes.
    async fn rebuild_without(&self, instance_id: &str) -> Result<Vec<Rebuilt>> {
        let state = self.state();
        let records: BTreeMap<StrategyKey, Arc<StrategyRecord>> = state
            .tables
            .strategies
            .iter()
            .filter(|(_, r)| r.instances.contains_key(instance_id))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let retention_days = self.shared.settings.tuning.retention_days;
        // The window keeps the days after today − retention_days.
        let since = (day_of(self.now()) - retention_days + 1) * DAY_MS;
        let keys: BTreeSet<StrategyKey> = records.keys().cloned().collect();
        let outcomes = self
            .outcomes_since(since, move |o| keys.contains(&o.key()), usize::MAX)
            .await?;
        let mut by_key: BTreeMap<StrategyKey, Vec<StrategyOutcome>> = BTreeMap::new();
        for outcome in outcomes {
            by_key.entry(outcome.key()).or_default().push(outcome);
        }
        Ok(records
            .iter()
            .map(|(key, record)| {
                let outcomes = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
                influence::rebuild_without(record, outcomes, instance_id, retention_days)
            })
            .collect())
    }

    /// (Operators) ends `instance_id`'s quarantine.
    pub async fn release(&self, instance_id: String) -> Result<()> {
        match self.submit(Action::ReleaseInstance { instance_id }).await? {
            Answer::Released => Ok(()),
            other => Err(wrong_answer("ReleaseInstance", other)),
        }
    }

    /// The instances in quarantine, by id.
    pub fn quarantined(&self) -> Vec<Arc<Quarantine>> {
        self.state().tables.quarantined.values().cloned().collect()
    }
}
