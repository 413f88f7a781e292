//! The operator dashboard in a real browser: headless Chromium (Debian's,
//! driven by playwright-core from `tests/dashboard`) loads the dashboard of
//! a real hub, a strategy and an insight are shared over gRPC, and both
//! must show within 2 s; the page's screenshot is saved as
//! `target/dashboard.png` (a CI artifact).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use learning_hub::{auth::Identity, config::Config};

/// The body of `GET path` on the plain-HTTP listener at `addr`.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: hub\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_shared_strategy_and_insight_within_two_seconds() {
    let test = "dashboard::the_dashboard_shows_a_shared_strategy_and_insight_within_two_seconds";
    let dir = repo().join("tests/dashboard");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let found = probe(&chromium, &["--version"], &dir).and_then(|()| {
        probe(
            "node",
            &["-e", "import('playwright-core').then(() => 0)"],
            &dir,
        )
    });
    if !outside_dependency(
        test,
        "Chromium and the Node packages of tests/dashboard (npm ci)",
        found,
    ) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let hub = MetricsHub::start(Config::new(data.path(), certs.path())).await;
    let (addr, metrics) = (hub.addr, hub.metrics);
    let client = connect(addr, certs.path(), &Identity::instance("dash-1")).await;
    client
        .register(learning_hub::pb::RegisterRequest {
            instance_id: "dash-1".into(),
            region: "us-east".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let shot = repo().join("target/dashboard.png");
    let mut browser = Command::new("node")
        .arg("check.mjs")
        .arg(format!("http://{metrics}/dashboard"))
        .arg("novelty_injection")
        .arg("Warm restarts help")
        .arg(&shot)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = browser.stdin.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first = lines_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the page loaded");
    assert_eq!(first, "loaded");

    // Shared over gRPC while the page is open.
    client
        .share_strategy(strategy_outcome(
            "novelty_injection",
            "learningVelocity",
            true,
            0.18,
        ))
        .await
        .unwrap();
    client
        .share_insight(insight("Warm restarts help"))
        .await
        .unwrap();
    writeln!(stdin, "shared").unwrap();
    drop(stdin);
    let status = tokio::task::spawn_blocking(move || browser.wait().unwrap())
        .await
        .unwrap();
    let said: Vec<String> = lines_rx.try_iter().collect();
    for line in &said {
        eprintln!("browser: {line}");
    }
    assert!(status.success(), "{said:?}");
    assert!(
        said.iter().any(|l| l.starts_with("strategy shown after")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|l| l.starts_with("insight shown after")),
        "{said:?}"
    );
    assert!(shot.exists());

    // What the page reads names strategies and regions, never an instance.
    let state = http_get(metrics, "/dashboard/state.json").await;
    assert!(state.contains("novelty_injection"), "{state}");
    assert!(state.contains("us-east"), "{state}");
    assert!(!state.contains("dash-1"), "an instance id left: {state}");
    hub.stop().await;
}
