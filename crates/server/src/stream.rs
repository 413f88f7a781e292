//! Insight fan-out: the live broadcast of newly published insights and the
//! per-subscriber stream that turns it into an ordered, gap-free,
//! resumable sequence.
//!
//! Every insight has a hub-assigned sequence, and the hub publishes them in
//! sequence order only after they are durable. A subscription keeps one
//! number, `position`: the last sequence it has accounted for (delivered,
//! or skipped by its category filter). It
//!
//! 1. subscribes to the broadcast *before* reading the store, so nothing
//!    published meanwhile can slip between the replay and the live phase;
//! 2. replays stored insights after `position`, a page at a time;
//! 3. then delivers live insights, dropping any at or before `position`
//!    (already replayed) and filling any jump past `position + 1` from the
//!    store first — which is also how a subscriber that fell behind the
//!    bounded broadcast buffer (`Lagged`) catches up instead of skipping.
//!
//! The subscription *is* the response stream: it does its work when the
//! transport asks for the next message, so a client that stops reading
//! stops being served (HTTP/2 flow control), costs one page of insights at
//! most, falls behind the broadcast and later catches up from the store —
//! never unbounded hub memory, never a silently missed insight. No task
//! sits between the broadcast and the connection, which keeps a fan-out to
//! thousands of subscribers to one hop each. When the client goes away the
//! stream is dropped and its [`SubscriberGuard`] unregisters it; when the
//! hub shuts down the client gets UNAVAILABLE naming the sequence to resume
//! from. What can end a stream (shutdown, the hub no longer serving, the
//! subscriber's key revoked) is one future per subscription, polled only
//! when one of its watches fires, so delivering an insight costs a
//! subscriber no work on state that every subscriber shares.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::{ArcWake, AtomicWaker, waker_ref};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;

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

/// An open subscription: insights in sequence order, then (maybe) one
/// error saying why it ended.
pub type InsightStream = Pin<Box<dyn Stream<Item = Result<Arc<Insight>>> + Send>>;

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

    /// Opens a subscription yielding insights with `sequence > after` in
    /// order, then an error if the hub shuts down, stops serving (`stopped`
    /// says why: a replica that lost its log), or the subscriber's
    /// credentials are revoked. The error says where to resume.
    pub fn subscribe(
        &self,
        log: Arc<dyn InsightLog>,
        after: u64,
        category: Option<InsightCategory>,
        shutdown: watch::Receiver<bool>,
        stopped: watch::Receiver<Option<String>>,
        credentials: Option<Credentials>,
    ) -> InsightStream {
        let subscription = Subscription {
            live: self.sender.subscribe(),
            log,
            category,
            position: after,
            pending: VecDeque::new(),
            catch_up: Some(u64::MAX),
            finish_catch_up: None,
            deferred: None,
            ending: None,
            ended: false,
            end: EndWatch::new(end_signal(shutdown.clone(), stopped.clone(), credentials)),
            shutdown,
            stopped,
            guard: SubscriberGuard::new(self.stats.clone()),
        };
        Box::pin(futures_util::stream::unfold(
            subscription,
            |mut subscription| async move {
                let item = subscription.next().await?;
                Some((item, subscription))
            },
        ))
    }
}

/// What keeps a subscription authorized: re-checked whenever `changes`
/// moves (a key was revoked or replaced somewhere).
pub struct Credentials {
    pub changes: watch::Receiver<u64>,
    pub still_valid: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Counts a subscription while it exists; unregisters it on drop, however
/// the stream ends.
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

struct Subscription {
    live: broadcast::Receiver<Arc<Insight>>,
    log: Arc<dyn InsightLog>,
    category: Option<InsightCategory>,
    position: u64,
    /// Insights read and not yet handed out.
    pending: VecDeque<Arc<Insight>>,
    /// A catch-up from the store in progress, up to this sequence
    /// (`u64::MAX`: everything stored).
    catch_up: Option<u64>,
    /// A finished catch-up's bound, applied once its last page is out.
    finish_catch_up: Option<u64>,
    /// The live insight whose gap started the catch-up: delivered after it.
    deferred: Option<Arc<Insight>>,
    /// Why the stream is about to end (yielded once).
    ending: Option<Error>,
    ended: bool,
    /// Resolves when the stream must end; polled only when woken.
    end: EndWatch,
    /// Read at every step, so a stream ends at once if the hub is shutting
    /// down or not serving — already when it opens, or in the middle of a
    /// replay, where `end` is not polled; `end` reports changes while the
    /// stream waits.
    shutdown: watch::Receiver<bool>,
    /// Why the hub stopped serving, while it has.
    stopped: watch::Receiver<Option<String>>,
    guard: SubscriberGuard,
}

/// A subscription's end signal, made once and polled only after one of
/// its watches woke it. A fresh `changed()` on each watch for every
/// delivered insight (as this was first written), or even a poll of kept
/// ones, takes the locks of waiter lists that every subscriber shares; in
/// a fan-out to 10,000 subscribers that was several percent of the hub's
/// CPU (profiled), and a `FuturesUnordered` of one future, which also
/// polls only when woken, cost about as much again in its own bookkeeping.
struct EndWatch {
    future: Pin<Box<dyn Future<Output = End> + Send>>,
    woken: Arc<EndWoken>,
    /// Polled at least once, so its watches hold `woken`'s waker.
    armed: bool,
}

/// Set by the end signal's watches; wakes the task polling the stream.
#[derive(Default)]
struct EndWoken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for EndWoken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.fired.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl EndWatch {
    fn new(future: impl Future<Output = End> + Send + 'static) -> Self {
        EndWatch {
            future: Box::pin(future),
            woken: Arc::default(),
            armed: false,
        }
    }
}

impl Future for EndWatch {
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        self.woken.task.register(cx.waker());
        if self.armed && !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.armed = true;
        let woken = self.woken.clone();
        let waker = waker_ref(&woken);
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

/// Why a subscription ends.
enum End {
    Shutdown,
    /// The hub stopped serving, for this reason.
    Stopped(String),
    Revoked,
}

/// Waits until the hub shuts down, stops serving, or `credentials` no
/// longer hold.
async fn end_signal(
    mut shutdown: watch::Receiver<bool>,
    mut stopped: watch::Receiver<Option<String>>,
    mut credentials: Option<Credentials>,
) -> End {
    let mut stopped_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return End::Shutdown,
            changed = stopped.changed(), if stopped_open => match changed {
                Ok(()) => {
                    if let Some(why) = stopped.borrow_and_update().clone() {
                        return End::Stopped(why);
                    }
                }
                Err(_) => stopped_open = false,
            },
            () = revoked(&mut credentials) => return End::Revoked,
        }
    }
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
    /// Stops delivering: whatever was read is dropped (the client resumes
    /// from `position`), `error` is yielded next.
    fn end_with(&mut self, error: Error) {
        self.pending.clear();
        self.catch_up = None;
        self.finish_catch_up = None;
        self.deferred = None;
        self.ending = Some(error);
    }

    fn shutting_down(&self) -> Error {
        Error::Unavailable(format!(
            "hub is shutting down; resume with after_sequence={}",
            self.position
        ))
    }

    fn stopped_serving(&self, why: &str) -> Error {
        // Another replica can go on from here.
        Error::Unavailable(format!(
            "{why}; resume with after_sequence={} (on another replica)",
            self.position
        ))
    }

    async fn next(&mut self) -> Option<Result<Arc<Insight>>> {
        loop {
            if self.ended {
                return None;
            }
            if self.ending.is_none() && *self.shutdown.borrow() {
                let error = self.shutting_down();
                self.end_with(error);
            }
            if self.ending.is_none() {
                let stopped = self.stopped.borrow().clone();
                if let Some(why) = stopped {
                    let error = self.stopped_serving(&why);
                    self.end_with(error);
                }
            }
            if let Some(insight) = self.pending.pop_front() {
                if insight.sequence <= self.position {
                    continue;
                }
                self.position = insight.sequence;
                if self.category.is_none_or(|c| c == insight.draft.category) {
                    return Some(Ok(insight));
                }
                continue;
            }
            if let Some(up_to) = self.catch_up {
                let page = self.log.read_after(self.position, up_to, REPLAY_PAGE);
                if page.len() < REPLAY_PAGE {
                    self.catch_up = None;
                    self.finish_catch_up = Some(up_to);
                }
                self.pending.extend(page);
                continue;
            }
            if let Some(up_to) = self.finish_catch_up.take() {
                // Everything up to the bound is accounted for: insights in
                // between that are gone from the store have expired.
                if up_to != u64::MAX {
                    self.position = self.position.max(up_to);
                }
                self.pending.extend(self.deferred.take());
                continue;
            }
            if let Some(error) = self.ending.take() {
                self.ended = true;
                return Some(Err(error));
            }
            let received = tokio::select! {
                biased;
                end = &mut self.end => {
                    let error = match end {
                        End::Shutdown => self.shutting_down(),
                        End::Stopped(why) => self.stopped_serving(&why),
                        End::Revoked => Error::Unauthenticated(
                            "the API key of this stream was revoked".into(),
                        ),
                    };
                    self.end_with(error);
                    continue;
                }
                received = self.live.recv() => received,
            };
            match received {
                Ok(insight) if insight.sequence <= self.position => {}
                Ok(insight) if insight.sequence > self.position + 1 => {
                    self.catch_up = Some(insight.sequence - 1);
                    self.deferred = Some(insight);
                }
                Ok(insight) => self.pending.push_back(insight),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.guard.0.catch_ups.fetch_add(1, Ordering::Relaxed);
                    self.catch_up = Some(u64::MAX);
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let error = self.shutting_down();
                    self.end_with(error);
                }
            }
        }
    }
}
