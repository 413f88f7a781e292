//! Prometheus metrics: a hub started with a metrics listener serves
//! `GET /metrics` with live figures — calls by RPC and status, latency
//! histograms, store sizes, live subscribers, group commits, rate-limit
//! refusals — and answers anything else with an HTTP error.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use learning_hub::{auth::Identity, config::Config, pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: hub\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample line starting with `prefix`.
fn sample(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{body}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_shows_live_figures() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path(), certs.path());
    config.hub.rate_limit_per_hour = 4;
    let hub = MetricsHub::start(config).await;
    let (addr, metrics) = (hub.addr, hub.metrics);

    let a = connect(addr, certs.path(), &Identity::instance("m1")).await;
    a.register(pb::RegisterRequest {
        instance_id: "m1".into(),
        region: "eu".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    a.share_strategy(strategy_outcome("s", "learningVelocity", true, 0.1))
        .await
        .unwrap();
    let bad = a
        .share_strategy(strategy_outcome("", "learningVelocity", true, 0.1))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let _stream = a
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    // Register, two shares and the subscription use up an hourly limit of 4.
    let limited = a.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted);

    let (status, body) = get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let ok = "learning_hub_calls_total{rpc=\"/learninghub.v1.Hub/ShareStrategy\",code=\"Ok\"}";
    let invalid = "learning_hub_calls_total{rpc=\"/learninghub.v1.Hub/ShareStrategy\",code=\"InvalidArgument\"}";
    assert_eq!(sample(&body, ok), 1.0);
    assert_eq!(sample(&body, invalid), 1.0);
    assert_eq!(
        sample(
            &body,
            "learning_hub_call_duration_seconds_count{rpc=\"/learninghub.v1.Hub/ShareStrategy\"}"
        ),
        2.0
    );
    assert_eq!(sample(&body, "learning_hub_rate_limited_total"), 1.0);
    assert_eq!(
        sample(&body, "learning_hub_records{kind=\"strategy_outcomes\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "learning_hub_records{kind=\"instances\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            "learning_hub_records{kind=\"quarantined_instances\"}"
        ),
        0.0
    );
    assert_eq!(sample(&body, "learning_hub_live_subscribers"), 1.0);
    assert!(sample(&body, "learning_hub_group_commit_requests_count") >= 2.0);
    assert!(sample(&body, "learning_hub_store_flush_seconds_count") >= 2.0);
    assert!(sample(&body, "learning_hub_store_bytes") > 0.0);
    assert_eq!(sample(&body, "learning_hub_shed_total"), 0.0);
    assert!(body.contains("# TYPE learning_hub_call_duration_seconds histogram"));

    // Figures move: another share shows up in the next scrape.
    let op = connect(addr, certs.path(), &Identity::operator("operator")).await;
    op.get_status(pb::GetStatusRequest {}).await.unwrap();
    let (_, later) = get(metrics, "/metrics").await;
    assert!(
        sample(
            &later,
            "learning_hub_calls_total{rpc=\"/learninghub.v1.Hub/GetStatus\",code=\"Ok\"}"
        ) >= 1.0
    );

    assert_eq!(get(metrics, "/other").await.0, "HTTP/1.1 404 Not Found");
    hub.stop().await;
}

/// Every query of the Grafana dashboard in `deploy/grafana` names a metric
/// this hub really exports: a hub with a peer region, a subscriber and a
/// few calls behind it is scraped, and each `learning_hub_…` name in each
/// panel's query must be a series in the scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path(), certs.path());
    // A peer region that never answers: its link's gauges are exported.
    config.hub.region = "us-east".into();
    config.hub.peers = ["eu-west".to_string()].into();
    config.pull_from = [("eu-west".to_string(), "https://127.0.0.1:9".to_string())].into();
    config.pull_interval = Duration::from_millis(100);
    let hub = MetricsHub::start(config).await;
    let (addr, metrics) = (hub.addr, hub.metrics);
    let a = connect(addr, certs.path(), &Identity::instance("m1")).await;
    a.register(pb::RegisterRequest {
        instance_id: "m1".into(),
        region: "us-east".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    a.share_strategy(strategy_outcome("s", "lv", true, 0.1))
        .await
        .unwrap();
    let _ = a
        .share_strategy(strategy_outcome("", "lv", true, 0.1))
        .await
        .unwrap_err();
    let _stream = a
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    // Wait for the failing pulls to show.
    let mut body = String::new();
    for _ in 0..100 {
        body = get(metrics, "/metrics").await.1;
        if body.contains("learning_hub_federation_failures_in_a_row{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exported: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/learning-hub.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    let panels = dashboard["panels"].as_array().unwrap();
    let charted = panels.iter().filter(|p| p["type"] != "row").count();
    assert!(charted >= 15, "{charted} panels");
    assert!(queries.len() >= charted, "every panel has a query");
    let mut named = 0;
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "names no metric: {query}");
        for name in names {
            named += 1;
            assert!(
                exported.contains(name.as_str()),
                "{name} (in {query}) is not exported; the hub exports {exported:?}"
            );
        }
    }
    assert!(named >= queries.len());
    // The check itself tells a real name from a made-up one.
    assert!(!exported.contains("learning_hub_calls"));
    assert!(exported.contains("learning_hub_calls_total"));
    hub.stop().await;
}

/// Every `expr` in a Grafana dashboard, depth first.
fn collect_exprs(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => into.push(e.clone()),
                    _ => collect_exprs(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, into)),
        _ => {}
    }
}

/// The `learning_hub_…` identifiers in a PromQL query.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("learning_hub_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
