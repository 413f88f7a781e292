//! Insight fan-out: the live broadcast of newly published insights and the
//! per-subscriber task that turns it into an ordered, gap-free, resumable
//! stream.
//!
//! Every insight has a hub-assigned sequence, and the hub publishes them in
//! sequence order only after they are durable. A subscriber task keeps one
//! number, `position`: the last sequence it has accounted for (delivered,
//! or skipped by its category filter). It
//!
//! 1. subscribes to the broadcast *before* reading the store, so nothing
//!    published meanwhile can slip between the replay and the live phase;
//! 2. replays stored insights after `position`;
//! 3. then delivers live insights, dropping any at or before `position`
//!    (already replayed) and filling any jump past `position + 1` from the
//!    store first — which is also how a subscriber that fell behind the
//!    bounded broadcast buffer (`Lagged`) catches up instead of skipping.
//!
//! A slow client therefore costs a bounded channel, never unbounded hub
//! memory, and never a silently missed insight. The task ends when the
//! client goes away (its [`SubscriberGuard`] then unregisters it) or when
//! the hub shuts down, in which case the client gets UNAVAILABLE naming the
//! sequence to resume from.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{broadcast, mpsc, watch};

use crate::domain::model::{Insight, InsightCategory};
use crate::error::{Error, Result};

/// Where subscribers read insights they did not get live.
pub trait InsightLog: Send + Sync + 'static {
    /// Up to `max` valid insights with `after < sequence <= up_to`, in order.
    fn read_after(&self, after: u64, up_to: u64, max: usize) -> Vec<Arc<Insight>>;
}

/// Insights read from the store per step of a replay or catch-up.
const REPLAY_PAGE: usize = 256;

/// Counters describing the fan-out.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Open subscriptions.
    pub live: AtomicU64,
    /// Times a subscriber fell behind the broadcast buffer and caught up
    /// from the store.
    pub catch_ups: AtomicU64,
}

/// The broadcast side of the insight stream.
pub struct InsightBus {
    sender: broadcast::Sender<Arc<Insight>>,
    stats: Arc<BusStats>,
}

impl InsightBus {
    /// `capacity` bounds how far a subscriber can fall behind before it
    /// switches to catching up from the store.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        InsightBus {
            sender,
            stats: Arc::default(),
        }
    }

    /// Publishes a durable insight. Callers publish in sequence order.
    pub fn publish(&self, insight: Arc<Insight>) {
        // An error only means nobody is subscribed.
        let _ = self.sender.send(insight);
    }

    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// Opens a subscription. The returned channel yields insights with
    /// `sequence > after` in order, then an error if the hub shuts down or
    /// the subscriber's credentials are revoked.
    pub fn subscribe(
        &self,
        log: Arc<dyn InsightLog>,
        after: u64,
        category: Option<InsightCategory>,
        shutdown: watch::Receiver<bool>,
        credentials: Option<Credentials>,
        buffer: usize,
    ) -> mpsc::Receiver<Result<Arc<Insight>>> {
        let (out, rx) = mpsc::channel(buffer.max(1));
        let subscription = Subscription {
            live: self.sender.subscribe(),
            log,
            category,
            position: after,
            out,
            shutdown,
            credentials,
            guard: SubscriberGuard::new(self.stats.clone()),
        };
        tokio::spawn(subscription.run());
        rx
    }
}

/// What keeps a subscription authorized: re-checked whenever `changes`
/// moves (a key was revoked or replaced somewhere).
pub struct Credentials {
    pub changes: watch::Receiver<u64>,
    pub still_valid: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Counts a subscription while it exists; unregisters it on drop, however
/// the task ends.
struct SubscriberGuard(Arc<BusStats>);

impl SubscriberGuard {
    fn new(stats: Arc<BusStats>) -> Self {
        stats.live.fetch_add(1, Ordering::SeqCst);
        SubscriberGuard(stats)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a subscription stopped delivering.
enum Stop {
    ClientGone,
    ShuttingDown,
    Revoked,
}

struct Subscription {
    live: broadcast::Receiver<Arc<Insight>>,
    log: Arc<dyn InsightLog>,
    category: Option<InsightCategory>,
    position: u64,
    out: mpsc::Sender<Result<Arc<Insight>>>,
    shutdown: watch::Receiver<bool>,
    credentials: Option<Credentials>,
    guard: SubscriberGuard,
}

/// Resolves when the credentials have changed and no longer hold (never
/// without credentials).
async fn revoked(credentials: &mut Option<Credentials>) {
    let Some(credentials) = credentials else {
        return std::future::pending().await;
    };
    loop {
        if credentials.changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !(credentials.still_valid)() {
            return;
        }
    }
}

impl Subscription {
    async fn run(mut self) {
        let stop = match self.serve().await {
            Ok(()) => return,
            Err(stop) => stop,
        };
        let ending = match stop {
            Stop::ClientGone => return,
            Stop::ShuttingDown => Error::Unavailable(format!(
                "hub is shutting down; resume with after_sequence={}",
                self.position
            )),
            Stop::Revoked => {
                Error::Unauthenticated("the API key of this stream was revoked".into())
            }
        };
        // Best effort: the client may already be gone.
        let _ = self.out.try_send(Err(ending));
    }

    async fn serve(&mut self) -> std::result::Result<(), Stop> {
        self.catch_up(u64::MAX).await?;
        loop {
            if *self.shutdown.borrow() {
                return Err(Stop::ShuttingDown);
            }
            let received = tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Err(Stop::ShuttingDown),
                _ = self.out.closed() => return Err(Stop::ClientGone),
                () = revoked(&mut self.credentials) => return Err(Stop::Revoked),
                received = self.live.recv() => received,
            };
            match received {
                Ok(insight) => {
                    if insight.sequence <= self.position {
                        continue;
                    }
                    if insight.sequence > self.position + 1 {
                        self.catch_up(insight.sequence - 1).await?;
                    }
                    self.deliver(insight).await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.guard.0.catch_ups.fetch_add(1, Ordering::Relaxed);
                    self.catch_up(u64::MAX).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Stop::ShuttingDown),
            }
        }
    }

    /// Delivers stored insights after `position` up to `up_to`, then treats
    /// everything up to `up_to` as accounted for (insights in between that
    /// are gone from the store have expired).
    async fn catch_up(&mut self, up_to: u64) -> std::result::Result<(), Stop> {
        loop {
            let page = self.log.read_after(self.position, up_to, REPLAY_PAGE);
            let full = page.len() == REPLAY_PAGE;
            for insight in page {
                self.deliver(insight).await?;
            }
            if !full {
                break;
            }
        }
        if up_to != u64::MAX {
            self.position = self.position.max(up_to);
        }
        Ok(())
    }

    async fn deliver(&mut self, insight: Arc<Insight>) -> std::result::Result<(), Stop> {
        let sequence = insight.sequence;
        if self.category.is_none_or(|c| c == insight.draft.category) {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Err(Stop::ShuttingDown),
                sent = self.out.send(Ok(insight)) => sent.map_err(|_| Stop::ClientGone)?,
            }
        }
        self.position = sequence;
        Ok(())
    }
}
