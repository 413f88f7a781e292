//! The insight fan-out measure: `subscribers` SubscribeInsights streams
//! spread over the fleet's connections, then a series of ShareInsight
//! calls; for each published insight, the time from the start of its
//! ShareInsight call (which includes its durable write) until each
//! subscriber, and the last one, received it. Subscribers run in this
//! process, so their own scheduling is part of what is measured; the CPU
//! time they used and the server's are reported apart. With `--baseline`
//! the same measure runs first against the bare streaming service
//! ([`crate::bare`]) and the hub's figures are also given as ratios to it
//! ([`FanoutStep`]).

use std::{collections::HashMap, time::Duration};

use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{sync::watch, time::Instant};
use tokio_stream::StreamExt;

use super::fleet::Member;
use super::load::new_histogram;
use crate::client::HubClient;
use crate::error::{Error, Result};
use crate::pb;

#[derive(Debug, Clone)]
pub struct FanoutSpec {
    /// Subscriber counts measured in turn, ascending: one, or a sweep.
    pub subscribers: Vec<usize>,
    pub publishes: usize,
    /// Pause between publishes, so each is measured on its own.
    pub interval: Duration,
    /// Extra subscriptions that are opened and then never read: what a
    /// stalled consumer costs the hub (memory) and the others (latency).
    pub stalled: usize,
    /// Size of each published insight's text (bytes), so stalled streams
    /// fill their HTTP/2 windows.
    pub insight_bytes: usize,
}

/// What the fan-out measure found.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutSummary {
    pub subscribers: usize,
    pub connections: usize,
    /// Subscriptions held open without reading (not in the figures).
    pub stalled: usize,
    pub publishes: usize,
    /// Insight deliveries received (subscribers × publishes when none is lost).
    pub deliveries: u64,
    pub missing: u64,
    /// Publish to each delivery.
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    /// Publish to the last subscriber's delivery, over publishes.
    pub last_delivery_p50_ms: f64,
    pub last_delivery_p99_ms: f64,
    pub last_delivery_max_ms: f64,
    /// ShareInsight's own answer time.
    pub publish_ack_p50_ms: f64,
    pub publish_ack_p99_ms: f64,
    /// Time to open every subscription.
    pub subscribe_s: f64,
    /// Encoded size of one delivered message (the first received).
    pub message_bytes: usize,
    /// CPU seconds (user + system) the server process used from the first
    /// publish until the last delivery (`None` for a hub the bench did not
    /// start).
    pub server_cpu_s: Option<f64>,
    /// CPU seconds this process (the receivers, and the one publisher) used
    /// over the same time.
    pub receivers_cpu_s: Option<f64>,
}

/// One subscriber count measured against the hub and, with `--baseline`,
/// against the bare streaming service in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutStep {
    pub subscribers: usize,
    pub hub: FanoutSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<FanoutSummary>,
    /// The hub's publish → last delivery p50 over the baseline's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery_p50_ratio: Option<f64>,
    /// The same for p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery_p99_ratio: Option<f64>,
}

impl FanoutStep {
    pub fn new(hub: FanoutSummary, baseline: Option<FanoutSummary>) -> Self {
        let ratio = |hub: f64, bare: f64| (bare > 0.0).then(|| hub / bare);
        FanoutStep {
            subscribers: hub.subscribers,
            last_delivery_p50_ratio: baseline
                .as_ref()
                .and_then(|b| ratio(hub.last_delivery_p50_ms, b.last_delivery_p50_ms)),
            last_delivery_p99_ratio: baseline
                .as_ref()
                .and_then(|b| ratio(hub.last_delivery_p99_ms, b.last_delivery_p99_ms)),
            hub,
            baseline,
        }
    }
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// What one subscriber got: (sequence, arrival) pairs, the encoded size of
/// the first message, and the stream itself, still open.
type Received = (Vec<(u64, Instant)>, usize, Option<Box<dyn Send>>);

/// Reads one stream until it has `expected` insights or `stop` turns true.
/// The stream is handed back open: they are all closed together once
/// every subscriber is done, so that streams closing early (10,000 at
/// once, and the server's work for each) do not delay the deliveries still
/// under way, which is not what the measure is about.
async fn subscriber(
    client: HubClient,
    after: u64,
    expected: usize,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut received = Vec::with_capacity(expected);
    let mut size = 0;
    let request = pb::SubscribeInsightsRequest {
        after_sequence: after,
        category: 0,
    };
    let Ok(mut stream) = client.subscribe_insights_once(request).await else {
        return (received, size, None);
    };
    while received.len() < expected {
        tokio::select! {
            _ = stop.changed() => break,
            item = stream.next() => match item {
                Some(Ok(response @ pb::SubscribeInsightsResponse { insight: Some(_) })) => {
                    let at = Instant::now();
                    if size == 0 {
                        size = prost::Message::encoded_len(&response);
                    }
                    let sequence = response.insight.map_or(0, |i| i.sequence);
                    received.push((sequence, at));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    }
    (received, size, Some(Box::new(stream)))
}

/// Opens a stream and never reads it, until `stop`.
async fn stalled(client: HubClient, after: u64, mut stop: watch::Receiver<bool>) {
    let request = pb::SubscribeInsightsRequest {
        after_sequence: after,
        category: 0,
    };
    if let Ok(stream) = client.subscribe_insights_once(request).await {
        let _ = stop.changed().await;
        drop(stream);
    }
}

async fn live_subscribers(operator: &HubClient) -> Result<u64> {
    operator
        .get_status(pb::GetStatusRequest {})
        .await
        .map(|s| s.live_subscribers)
        .map_err(|s| Error::Unavailable(format!("GetStatus: {}", s.message())))
}

/// Measures the fan-out to `subscribers` streams (with `spec`'s other
/// settings) over `members`' connections, publishing
/// through `publisher`; `operator` reads the server's status and
/// `server_cpu` its CPU seconds so far.
pub async fn run(
    members: &[Member],
    publisher: &Member,
    operator: &HubClient,
    spec: &FanoutSpec,
    subscribers: usize,
    server_cpu: &(dyn Fn() -> Option<f64> + Sync),
) -> Result<FanoutSummary> {
    let status = operator
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| Error::Unavailable(format!("GetStatus: {}", s.message())))?;
    let after = status.last_insight_sequence;
    let already_live = status.live_subscribers;
    let (stop_tx, stop) = watch::channel(false);
    let opening = Instant::now();
    let stalled_connections = spec.stalled.div_ceil(super::STREAMS_PER_CONNECTION);
    let (members, stalled_members) = members.split_at(members.len() - stalled_connections);
    let tasks: Vec<_> = (0..subscribers)
        .map(|i| {
            let client = members[i % members.len()].client.clone();
            tokio::spawn(subscriber(client, after, spec.publishes, stop.clone()))
        })
        .collect();
    let stalled_tasks: Vec<_> = (0..spec.stalled)
        .map(|i| {
            let client = stalled_members[i % stalled_members.len()].client.clone();
            tokio::spawn(stalled(client, after, stop.clone()))
        })
        .collect();
    let opened = (subscribers + spec.stalled) as u64;
    // The hub counts a subscription once its task runs: wait for all.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = live_subscribers(operator).await?;
        if live >= already_live + opened {
            break;
        }
        if Instant::now() > deadline {
            let _ = stop_tx.send(true);
            return Err(Error::Unavailable(format!(
                "only {} of {opened} subscriptions opened within 120 s",
                live.saturating_sub(already_live),
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subscribe_s = opening.elapsed().as_secs_f64();

    let own_cpu = || crate::target::process_cpu_seconds("/proc/self/stat");
    let cpu_before = (server_cpu(), own_cpu());
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut published: HashMap<u64, Instant> = HashMap::new();
    let mut acks = new_histogram();
    for k in 0..spec.publishes {
        let insight = pb::Insight {
            category: pb::InsightCategory::Timing as i32,
            title: format!("bench fan-out {run_id} #{k}"),
            insight: format!(
                "A benchmark insight: measures delivery to every subscriber.{}",
                " ".repeat(spec.insight_bytes.saturating_sub(60))
            ),
            effectiveness: 0.5,
            ..Default::default()
        };
        let started = Instant::now();
        let answer = publisher
            .client
            .share_insight(pb::ShareInsightRequest {
                insight: Some(insight),
                ..Default::default()
            })
            .await
            .map_err(|s| Error::Unavailable(format!("ShareInsight: {}", s.message())))?;
        acks.saturating_record(started.elapsed().as_micros().max(1) as u64);
        if let Some(insight) = answer.insight {
            published.insert(insight.sequence, started);
        }
        tokio::time::sleep(spec.interval).await;
    }
    // Give stragglers a bounded time, then stop the rest.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = stop_tx.send(true);
    });
    let mut received = Vec::with_capacity(subscribers);
    let mut streams = Vec::with_capacity(subscribers);
    let mut message_bytes = 0;
    for (arrivals, size, stream) in join_all(tasks).await.into_iter().flatten() {
        received.push(arrivals);
        streams.push(stream);
        message_bytes = message_bytes.max(size);
    }
    let used = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    let server_cpu_s = used(cpu_before.0, server_cpu());
    let receivers_cpu_s = used(cpu_before.1, own_cpu());
    drop(streams);
    stopper.abort();
    // Release the stalled streams (their tasks end at the stop signal).
    for task in &stalled_tasks {
        task.abort();
    }

    let mut deliveries = new_histogram();
    let mut last: HashMap<u64, Duration> = HashMap::new();
    for (sequence, at) in received.into_iter().flatten() {
        let Some(&sent) = published.get(&sequence) else {
            continue;
        };
        let latency = at.saturating_duration_since(sent);
        deliveries.saturating_record(latency.as_micros().max(1) as u64);
        let slot = last.entry(sequence).or_default();
        *slot = (*slot).max(latency);
    }
    let mut lasts = new_histogram();
    for latency in last.values() {
        lasts.saturating_record(latency.as_micros().max(1) as u64);
    }
    let expected = (subscribers * published.len()) as u64;
    Ok(FanoutSummary {
        subscribers,
        connections: members.len().min(subscribers) + stalled_connections,
        stalled: spec.stalled,
        publishes: published.len(),
        deliveries: deliveries.len(),
        missing: expected.saturating_sub(deliveries.len()),
        delivery_p50_ms: quantile_ms(&deliveries, 0.5),
        delivery_p99_ms: quantile_ms(&deliveries, 0.99),
        delivery_max_ms: quantile_ms(&deliveries, 1.0),
        last_delivery_p50_ms: quantile_ms(&lasts, 0.5),
        last_delivery_p99_ms: quantile_ms(&lasts, 0.99),
        last_delivery_max_ms: quantile_ms(&lasts, 1.0),
        publish_ack_p50_ms: quantile_ms(&acks, 0.5),
        publish_ack_p99_ms: quantile_ms(&acks, 0.99),
        subscribe_s,
        message_bytes,
        server_cpu_s,
        receivers_cpu_s,
    })
}
