//! A TCP proxy the test controls, between hubs and PostgreSQL or between
//! regional hubs: it passes traffic, refuses it (every connection closed,
//! new ones closed at once: the server is down), or black-holes it
//! (connections stay open and nothing passes: a network partition).

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// As if the server were down: connections reset, new ones closed.
    Refuse,
    /// As if the network were cut: connections open, nothing delivered.
    Blackhole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    /// Where new connections go (settable: a hub's address is known only
    /// once it runs, and its peers are configured with the proxy's).
    target: Arc<std::sync::Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on 127.0.0.1:0 to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(watch::channel(Mode::Pass).0);
        let modes = mode.clone();
        let target = Arc::new(std::sync::Mutex::new(target));
        let targets = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut changes = modes.subscribe();
                let target = *targets.lock().unwrap();
                tokio::spawn(async move {
                    let current = *changes.borrow_and_update();
                    match current {
                        Mode::Refuse => return,
                        Mode::Blackhole => {
                            // Hold the socket silently until the cut heals.
                            until(&mut changes, |m| m != Mode::Blackhole).await;
                            return;
                        }
                        Mode::Pass => {}
                    }
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        () = until(&mut changes, |m| m != Mode::Pass) => {
                            let cut = *changes.borrow() == Mode::Blackhole;
                            if cut {
                                // Both ends stay open and hear nothing.
                                until(&mut changes, |m| m != Mode::Blackhole).await;
                            }
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            mode,
            target,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// `url` (postgres://user@host:port/db) with the proxy as its host.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (user, rest) = rest.split_once('@').unwrap_or(("", rest));
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let user = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        format!("{scheme}://{user}{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the mode satisfies `done` (or the proxy is gone).
async fn until(changes: &mut watch::Receiver<Mode>, done: impl Fn(Mode) -> bool) {
    let _ = changes.wait_for(|m| done(*m)).await.map(|_| ());
}

/// PostgreSQL's address as the tests reach it.
pub fn postgres_addr() -> SocketAddr {
    let url = super::pg::admin_url();
    let host = url
        .split_once('@')
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5432");
    let host = host
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://");
    host.parse()
        .unwrap_or_else(|_| "127.0.0.1:5432".parse().unwrap())
}
