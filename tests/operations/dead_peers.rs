//! Dead and hostile peers harness: hundreds of TCP connections that never
//! speak must not stop a legitimate client from completing its handshake,
//! and must be closed after the handshake timeout; a client whose network
//! path goes black (packets vanish, no FIN, no RST) must have its insight
//! stream reclaimed by HTTP/2 keepalive.
//!
//! The quick run is in the default suite; the figures it prints (handshake
//! latency next to silent peers, time to close them, time to reclaim a
//! black-holed stream) are in RELIABILITY.md.

use crate::common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use learning_hub::{auth::Identity, client::ClientSettings, client::HubClient, pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_neither_block_clients_nor_linger() {
    const SILENT: usize = 500;
    let timeout = Duration::from_secs(2);
    let hub = TestHub::start_with(|c| {
        c.limits.tls_handshake_timeout = timeout;
        // Room for every silent socket, so each is held to the timeout
        // (with the default budgets most would be cut for newer ones
        // sooner: tests/operations/abuse.rs).
        c.limits.max_handshakes = 4 * SILENT;
        c.limits.max_handshakes_per_source = 4 * SILENT;
    })
    .await;
    let settings = hub.instance_settings("legit").await;

    let opened = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(hub.addr).await.unwrap());
    }

    // Fresh connections (TCP + mutual TLS + HTTP/2) and a call on each,
    // while all the silent peers hold their sockets open.
    let mut handshakes = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let client = HubClient::connect(&settings).await.expect("connects");
        handshakes.push(started.elapsed().as_secs_f64() * 1e3);
        client.get_status(pb::GetStatusRequest {}).await.unwrap();
    }
    handshakes.sort_by(f64::total_cmp);

    // Every silent socket is closed by the hub (EOF or reset), none before
    // the timeout, all soon after it.
    let reads = silent.into_iter().map(|mut socket| async move {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => Some(opened.elapsed()),
            Ok(Ok(n)) => panic!("the hub sent {n} bytes to a silent peer"),
            Err(_) => None,
        }
    });
    let closed = futures_util::future::join_all(reads).await;
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(still_open, 0, "silent connections still open after 10 s");
    let last_closed = closed.iter().flatten().max().unwrap();
    let first_closed = closed.iter().flatten().min().unwrap();
    assert!(
        *first_closed >= timeout - Duration::from_millis(100),
        "closed before the handshake timeout: {first_closed:?}"
    );
    eprintln!(
        "dead peers: {SILENT} silent connections open; 30 legitimate handshakes p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms; silent ones closed {:.2}-{:.2} s after opening \
         (handshake timeout {:?})",
        percentile(&handshakes, 0.5),
        percentile(&handshakes, 0.99),
        percentile(&handshakes, 1.0),
        first_closed.as_secs_f64(),
        last_closed.as_secs_f64(),
        timeout
    );
    // Still serving.
    let client = HubClient::connect(&settings).await.unwrap();
    client.get_status(pb::GetStatusRequest {}).await.unwrap();
}

/// A TCP relay whose path can be cut silently: once `black_hole` is set,
/// bytes in both directions are read and dropped, and nothing is closed.
async fn relay(upstream: SocketAddr, black_hole: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)] {
                let black_hole = black_hole.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if black_hole.load(Ordering::Relaxed) {
                            // Swallow; keep `to` open so no FIN or RST goes out.
                            continue;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_stream_is_reclaimed_by_keepalive() {
    let hub = TestHub::start_with(|c| {
        c.limits.http2_keepalive_interval = Duration::from_millis(500);
        c.limits.http2_keepalive_timeout = Duration::from_millis(500);
    })
    .await;
    let black_hole = Arc::new(AtomicBool::new(false));
    let relay_addr = relay(hub.addr, black_hole.clone()).await;

    let mut settings: ClientSettings = hub.settings(&Identity::instance("faraway"));
    settings.url = format!("https://{relay_addr}");
    settings.api_key = Some(hub.api_key("faraway").await);
    let faraway = HubClient::connect(&settings).await.unwrap();
    let stream = faraway
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();

    let op = hub.operator().await;
    let live = || async {
        op.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .live_subscribers
    };
    assert_eq!(live().await, 1);

    let cut = Instant::now();
    black_hole.store(true, Ordering::Relaxed);
    let mut reclaimed = None;
    while cut.elapsed() < Duration::from_secs(10) {
        if live().await == 0 {
            reclaimed = Some(cut.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reclaimed = reclaimed.expect("the black-holed stream is still registered after 10 s");
    eprintln!(
        "dead peers: black-holed insight stream reclaimed {:.2} s after the cut \
         (keepalive every 0.5 s, 0.5 s to answer)",
        reclaimed.as_secs_f64()
    );
    drop(stream);
}
