//! Prometheus metrics: what the hub counts, and the HTTP listener that
//! serves them in the text exposition format on `GET /metrics`.
//!
//! Each hub owns its registry (no process-global recorder), so tests can
//! run several hubs in one process and scrape each. Counters and histograms
//! are updated where things happen — the auth layer sees every call with
//! its final status, the writer sees every group commit — and gauges that
//! mirror state (store sizes, live subscribers) are read from the hub when
//! scraped, so they cannot drift.
//!
//! The endpoint is hyper's HTTP/1.1 server answering one request per
//! connection. It is a separate listener (default 127.0.0.1:9015) so that
//! it can stay on a private interface while gRPC is exposed. This module
//! knows nothing of the hub: a scrape is handed the [`StateGauges`] of
//! that moment.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};

/// What the hub holds at the moment of a scrape: the gauges that mirror
/// state rather than count events.
#[derive(Debug, Clone, Default)]
pub struct StateGauges {
    /// Records held, per kind (`learning_hub_records{kind=…}`).
    pub records: Vec<(&'static str, u64)>,
    pub live_subscribers: u64,
    pub stream_catch_ups: u64,
    pub last_insight_sequence: u64,
    /// The store's size on disk.
    pub store_bytes: u64,
    /// Per peer region this hub pulls from: seconds since the last
    /// successful exchange, and pulls failed since then.
    pub peers: Vec<(String, f64, u64)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rpc: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Everything the hub counts.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<RpcLabel, Histogram>,
    rate_limited: Counter,
    shed: Counter,
    audit_dropped: Counter,
    batch_requests: Histogram,
    flush_seconds: Histogram,
    fold_lag_seconds: Histogram,
    commit_failures: Counter,
    insight_runs: Counter,
    insights_generated: Counter,
    records: Family<KindLabel, Gauge>,
    live_subscribers: Gauge,
    stream_catch_ups: Gauge,
    last_insight_sequence: Gauge,
    store_bytes: Gauge,
    connections_open: Gauge,
    handshakes_pending: Gauge,
    handshakes_cut: Counter,
    peer_staleness: Family<PeerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    peer_failures: Family<PeerLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 50 µs … ~13 s.
    exponential_buckets(0.000_05, 2.0, 19)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("learning_hub");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Calls answered, by RPC path and gRPC status code (refused calls included)",
            calls.clone(),
        );
        let latency = Family::<RpcLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(seconds_buckets())
        });
        registry.register(
            "call_duration_seconds",
            "Time from a call's arrival to its final status, by RPC path",
            latency.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Calls refused by the per-instance rate limit",
            rate_limited.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "shed",
            "Calls refused by load shedding (more than --max-in-flight in progress)",
            shed.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit entries dropped because the store stalled and too many waited",
            audit_dropped.clone(),
        );
        let batch_requests = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "group_commit_requests",
            "Write requests per group commit",
            batch_requests.clone(),
        );
        let flush_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "store_flush_seconds",
            "Time to write and flush one group commit",
            flush_seconds.clone(),
        );
        let fold_lag_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "replica_fold_lag_seconds",
            "Replicas: from when another replica stamped a command to when this one folded it \
             (as far apart as the two machines' clocks allow)",
            fold_lag_seconds.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "group_commit_failures",
            "Group commits the store refused (every request in them failed)",
            commit_failures.clone(),
        );
        let insight_runs = Counter::default();
        registry.register(
            "insight_generation_runs",
            "Insight-generation runs (background and Admin/GenerateInsights)",
            insight_runs.clone(),
        );
        let insights_generated = Counter::default();
        registry.register(
            "insights_generated",
            "Validated insights stored and published by insight generation",
            insights_generated.clone(),
        );
        let records = Family::<KindLabel, Gauge>::default();
        registry.register("records", "Records held, by kind", records.clone());
        let live_subscribers = Gauge::default();
        registry.register(
            "live_subscribers",
            "Open SubscribeInsights streams",
            live_subscribers.clone(),
        );
        let stream_catch_ups = Gauge::default();
        registry.register(
            "stream_catch_ups",
            "Times a subscriber fell behind the live broadcast and was caught up from the store, since start",
            stream_catch_ups.clone(),
        );
        let last_insight_sequence = Gauge::default();
        registry.register(
            "last_insight_sequence",
            "Sequence of the newest insight (stream lag = this minus a subscriber's last seen)",
            last_insight_sequence.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "Approximate size of the sled database on disk",
            store_bytes.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Authenticated connections open (limits.max_connections)",
            connections_open.clone(),
        );
        let handshakes_pending = Gauge::default();
        registry.register(
            "handshakes_pending",
            "Connections in their TLS handshake (limits.max_handshakes)",
            handshakes_pending.clone(),
        );
        let handshakes_cut = Counter::default();
        registry.register(
            "handshakes_cut",
            "TLS handshakes cut to make room for newer ones (the handshake budget was full)",
            handshakes_cut.clone(),
        );
        let peer_staleness =
            Family::<PeerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "federation_staleness_seconds",
            "Per peer region: seconds since the last successful pull from its hub",
            peer_staleness.clone(),
        );
        let peer_failures = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "federation_failures_in_a_row",
            "Per peer region: pulls from its hub failed since the last success",
            peer_failures.clone(),
        );
        Metrics {
            registry,
            calls,
            latency,
            rate_limited,
            shed,
            audit_dropped,
            batch_requests,
            flush_seconds,
            fold_lag_seconds,
            commit_failures,
            insight_runs,
            insights_generated,
            records,
            live_subscribers,
            stream_catch_ups,
            last_insight_sequence,
            store_bytes,
            connections_open,
            handshakes_pending,
            handshakes_cut,
            peer_staleness,
            peer_failures,
        }
    }

    /// One call ended with gRPC status `code` after `elapsed`.
    pub fn observe_call(&self, rpc: &str, code: i32, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                rpc: rpc.to_string(),
                code: format!("{:?}", tonic::Code::from_i32(code)),
            })
            .inc();
        self.latency
            .get_or_create(&RpcLabel {
                rpc: rpc.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// The load shedder's running total (it counts on its own; this
    /// mirrors it at scrape time).
    pub fn set_shed_total(&self, total: u64) {
        let now = self.shed.get();
        if total > now {
            self.shed.inc_by(total - now);
        }
    }

    /// The transport's figures, mirrored at scrape time.
    pub fn set_transport(&self, open: usize, pending: usize, cut_total: u64) {
        self.connections_open.set(gauge(open as u64));
        self.handshakes_pending.set(gauge(pending as u64));
        let now = self.handshakes_cut.get();
        if cut_total > now {
            self.handshakes_cut.inc_by(cut_total - now);
        }
    }

    /// An audit entry was dropped (see `hub::writer::MAX_DETACHED_WAITING`).
    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// One group commit of `requests` write requests, `flush` to write it.
    pub fn group_commit(&self, requests: usize, flush: Duration, ok: bool) {
        self.batch_requests.observe(requests as f64);
        self.flush_seconds.observe(flush.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }

    /// A replica folded a command another replica stamped `lag` ago.
    pub fn fold_lag(&self, lag: Duration) {
        self.fold_lag_seconds.observe(lag.as_secs_f64());
    }

    pub fn insight_run(&self, stored: usize) {
        self.insight_runs.inc();
        self.insights_generated.inc_by(stored as u64);
    }

    /// The text exposition, with state gauges taken from `state`.
    pub fn render(&self, state: &StateGauges) -> String {
        for &(kind, n) in &state.records {
            self.records
                .get_or_create(&KindLabel { kind })
                .set(gauge(n));
        }
        self.live_subscribers.set(gauge(state.live_subscribers));
        self.stream_catch_ups.set(gauge(state.stream_catch_ups));
        self.last_insight_sequence
            .set(gauge(state.last_insight_sequence));
        self.store_bytes.set(gauge(state.store_bytes));
        for (peer, staleness, failures) in &state.peers {
            let label = PeerLabel { peer: peer.clone() };
            self.peer_staleness.get_or_create(&label).set(*staleness);
            self.peer_failures
                .get_or_create(&label)
                .set(gauge(*failures));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What a path of the listener answers: its content type and body
/// (`None`: no such page).
pub type Page = (&'static str, String);

/// The exposition's content type.
pub const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET` requests on `listener` until `shutdown` turns true; `pages`
/// renders what a path shows now (`/metrics`: the exposition; the server
/// adds the operator dashboard's pages).
pub async fn serve(
    listener: TcpListener,
    pages: impl Fn(&str) -> Option<Page> + Send + Sync + Clone + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return,
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&request, &pages);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            // A scraper sends its request at once: one that takes longer
            // than a second, or a connection held past ten, is not one.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(1))
                .keep_alive(false)
                .serve_connection(TokioIo::new(socket), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    pages: &impl Fn(&str) -> Option<Page>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.method() {
        &Method::GET => match pages(request.uri().path()) {
            Some((content_type, body)) => (StatusCode::OK, content_type, body),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics or /dashboard\n".into(),
            ),
        },
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_region_has_its_staleness_and_failures() {
        let metrics = Metrics::new();
        let page = metrics.render(&StateGauges {
            peers: vec![("eu-west".into(), 1.5, 0), ("us-east".into(), 42.25, 7)],
            ..StateGauges::default()
        });
        for line in [
            r#"learning_hub_federation_staleness_seconds{peer="eu-west"} 1.5"#,
            r#"learning_hub_federation_staleness_seconds{peer="us-east"} 42.25"#,
            r#"learning_hub_federation_failures_in_a_row{peer="us-east"} 7"#,
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "{line} missing from\n{page}"
            );
        }
    }
}
