//! Writes applied at most once per (instance, request id).
//!
//! The check and the memory of a request id live inside the writer's
//! transaction: the id is looked up in the durable state *and* in the
//! changes staged earlier in the same group commit (so a retry queued in
//! the same batch as its first attempt is caught), and it is remembered in
//! the same atomic batch as the write it guards (so "applied" and
//! "remembered" are never apart, crash or not). A write that fails is not
//! remembered: a retry applies it.

use super::{Hub, Txn};
use crate::domain::idempotency::{Applied, RequestKey, RequestRecord, RequestTag, WriteRpc};
use crate::error::{Error, Result};

impl Hub {
    /// Runs `f` in the writer at most once for `caller`'s `request`.
    ///
    /// `f` gets `None` the first time: it applies the write and returns its
    /// answer and what to remember of it. On a retry within the window it
    /// gets `Some(first answer)` and must rebuild the answer from the
    /// records without changing anything (whatever it stages is dropped).
    /// Without a request id, `f` simply applies the write.
    pub(super) async fn write_once<T, F>(
        &self,
        caller: &str,
        rpc: WriteRpc,
        request: Option<RequestTag>,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>, Option<Applied>) -> Result<(T, Applied)> + Send + 'static,
    {
        let window = self.shared.settings.request_id_window_ms;
        let key = request.as_ref().map(|r| RequestKey::new(caller, &r.id));
        self.write(move |txn| {
            let (Some(tag), Some(key)) = (request, key) else {
                return f(txn, None).map(|(answer, _)| answer);
            };
            if let Some(first) = txn.request(&key).filter(|r| r.live_at(txn.now, window)) {
                let applied = first
                    .judge(rpc, &tag.fingerprint)
                    .map_err(|reuse| reused(&tag.id, reuse, window))?;
                let answer = f(txn, Some(applied)).map(|(answer, _)| answer);
                txn.discard();
                return answer;
            }
            let (answer, applied) = f(txn, None)?;
            if applied.rpc() != rpc {
                return Err(Error::Internal(format!(
                    "{rpc} answered as {}",
                    applied.rpc()
                )));
            }
            let record = RequestRecord {
                applied,
                fingerprint: tag.fingerprint,
                at: txn.now,
            };
            txn.put_request(key, record);
            Ok(answer)
        })
        .await
    }
}

fn reused(id: &str, reuse: impl std::fmt::Display, window_ms: i64) -> Error {
    let hours = window_ms / (60 * 60 * 1000);
    let window = if hours >= 1 {
        format!("{hours} h")
    } else {
        format!("{} s", window_ms / 1000)
    };
    Error::AlreadyExists(format!(
        "request_id {id:?} {reuse} within the last {window}; a different request needs a new request_id"
    ))
}

/// The answer a replay got does not belong to its RPC (the caller checked
/// the RPC, so this is a bug, not a client error).
pub(super) fn unexpected(applied: Applied, rpc: WriteRpc) -> Error {
    Error::Internal(format!("{rpc} replay got the answer of {applied:?}"))
}

/// A retried write whose record has since been removed by retention.
pub(super) fn gone(id: &str, what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "request_id {id:?} was already applied, but {what} it changed has since expired and been removed"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::idempotency::Fingerprint;
    use crate::domain::model::{Attributes, Registration, StrategyShare};
    use crate::hub::HubSettings;
    use crate::store::Store;

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 60 * 60 * 1000;

    fn share(delta: f64) -> StrategyShare {
        StrategyShare {
            strategy: "s".into(),
            metric: "m".into(),
            value_before: 0.5,
            successful: true,
            delta,
            condition: String::new(),
            context: Attributes::new(),
            recent: vec![],
        }
    }

    fn tag(id: &str, payload: &str) -> Option<RequestTag> {
        Some(RequestTag {
            id: id.into(),
            fingerprint: Fingerprint::of(payload.as_bytes()),
        })
    }

    fn open(store: &Store, clock: &ManualClock) -> Arc<Hub> {
        Hub::open(
            store.clone(),
            Arc::new(clock.clone()),
            HubSettings::default(),
        )
        .unwrap()
    }

    async fn register_a(hub: &Hub) {
        hub.register(
            "a",
            Registration {
                instance_id: "a".into(),
                region: "r".into(),
                context: Attributes::new(),
                capabilities: vec![],
            },
        )
        .await
        .unwrap();
    }

    async fn hub(store: &Store, clock: &ManualClock) -> Arc<Hub> {
        let hub = open(store, clock);
        register_a(&hub).await;
        hub
    }

    fn applications(hub: &Hub) -> u64 {
        hub.strategy_records().iter().map(|r| r.applications).sum()
    }

    #[tokio::test]
    async fn duplicates_queued_in_one_batch_apply_once() {
        let store = Store::in_memory();
        let clock = ManualClock::new(T0);
        let hub = hub(&store, &clock).await;
        // Hold the writer up so that the duplicates all wait in its queue
        // and are taken as one group commit.
        let busy = hub.clone();
        let blocker = tokio::spawn(async move {
            busy.write(|_| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok(())
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let calls = (0..20).map(|_| hub.share_strategy("a", share(0.1), tag("r1", "p")));
        let answers = futures_util::future::join_all(calls).await;
        blocker.await.unwrap().unwrap();
        let sequences: Vec<u64> = answers.into_iter().map(|a| a.unwrap().0).collect();
        assert_eq!(sequences, vec![1; 20]);
        assert_eq!(applications(&hub), 1);
        assert_eq!(hub.status().strategy_outcomes, 1);
    }

    #[tokio::test]
    async fn a_failed_write_is_not_remembered() {
        let store = Store::in_memory();
        let clock = ManualClock::new(T0);
        let hub = open(&store, &clock);
        // Not registered yet: refused, and the id stays unused.
        let refused = hub.share_strategy("a", share(0.1), tag("r1", "p")).await;
        assert!(matches!(refused, Err(Error::FailedPrecondition(_))));
        register_a(&hub).await;
        hub.share_strategy("a", share(0.1), tag("r1", "p"))
            .await
            .unwrap();
        assert_eq!(applications(&hub), 1);
    }

    #[tokio::test]
    async fn staged_changes_of_a_failing_write_are_dropped() {
        let store = Store::in_memory();
        let clock = ManualClock::new(T0);
        let hub = hub(&store, &clock).await;
        let failed = hub
            .write(|txn| -> Result<()> {
                txn.next_outcome_sequence();
                Err(Error::FailedPrecondition("changed my mind".into()))
            })
            .await;
        assert!(failed.is_err());
        hub.share_strategy("a", share(0.1), None).await.unwrap();
        assert_eq!(hub.status().strategy_outcomes, 1, "sequence 1 was not used");
    }

    #[tokio::test]
    async fn remembered_across_a_restart_until_the_window_ends() {
        let store = Store::in_memory();
        let clock = ManualClock::new(T0);
        let first = hub(&store, &clock).await;
        first
            .share_strategy("a", share(0.1), tag("r1", "p"))
            .await
            .unwrap();
        first.close().await.unwrap();
        drop(first);

        let second = open(&store, &clock);
        let (sequence, _) = second
            .share_strategy("a", share(0.1), tag("r1", "p"))
            .await
            .unwrap();
        assert_eq!((sequence, applications(&second)), (1, 1));
        // Another payload under the same id is refused, naming the field.
        let err = second
            .share_strategy("a", share(0.2), tag("r1", "q"))
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::AlreadyExists(m) if m.starts_with("request_id \"r1\"")));
        // Past the window it is forgotten: the sweep removes it, a restart
        // does not load it, and the id may be used again.
        clock.advance(24 * HOUR);
        let report = second.run_retention().await.unwrap();
        assert_eq!(report.request_ids, 1);
        assert!(second.state().requests.is_empty());
        second.close().await.unwrap();
        drop(second);

        clock.advance(-HOUR);
        let third = open(&store, &clock);
        assert!(third.state().requests.is_empty(), "the sweep deleted it");
        let (sequence, _) = third
            .share_strategy("a", share(0.1), tag("r1", "p"))
            .await
            .unwrap();
        assert_eq!((sequence, applications(&third)), (2, 2));
    }

    #[tokio::test]
    async fn expired_ids_are_dropped_at_start() {
        let store = Store::in_memory();
        let clock = ManualClock::new(T0);
        let first = hub(&store, &clock).await;
        first
            .share_strategy("a", share(0.1), tag("r1", "p"))
            .await
            .unwrap();
        first.close().await.unwrap();
        drop(first);
        clock.advance(25 * HOUR);
        let second = open(&store, &clock);
        assert!(second.state().requests.is_empty());
        second.close().await.unwrap();
        drop(second);
        // Deleted from the store, not merely skipped: even with the clock
        // back, nothing is loaded.
        clock.set(T0);
        let third = open(&store, &clock);
        assert!(third.state().requests.is_empty());
    }
}
