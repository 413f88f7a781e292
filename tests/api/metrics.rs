//! Prometheus metrics: a hub started with a metrics listener serves
//! `GET /metrics` with live figures — calls by RPC and status, latency
//! histograms, store sizes, live subscribers, group commits, rate-limit
//! refusals — and answers anything else with an HTTP error.

use crate::common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::*;
use learning_hub::{auth::Identity, clock::SystemClock, config::Config, pb, server::PreparedHub};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
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
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.hub.rate_limit_per_hour = 4;
    let prepared = PreparedHub::prepare(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let metrics = prepared.metrics_addr().expect("metrics listener bound");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prepared.serve(listener, async {
        let _ = stopped.await;
    }));

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
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
