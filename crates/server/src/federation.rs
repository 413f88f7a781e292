//! The pull loop of a regional hub. Every interval it asks each peer
//! region's hub (`federation.peers` entries with a URL) for what that hub
//! knows above what this region holds — the peer's own knowledge and what
//! it holds of third regions — over mutual TLS with this region's own hub
//! certificate (`<certs_dir>/<region>.pem`, made by `learning-hub certs
//! issue --hub <region>`), and keeps what changed through the log
//! ([`Hub::merge_digests`]). A peer that does not answer is asked again at
//! the next tick; nothing is lost meanwhile, because the next answer
//! carries everything above what this region holds. How each link is
//! doing is in GetStatus and /metrics. Among replicas of one region only
//! the holder of the jobs lease pulls (the others list no links).
//!
//! Pushed wake-ups cut the wait: whenever this hub's log moves, it tells
//! each peer it has a URL for (at most once per `wake_spacing`), and a
//! peer that pulls from it pulls at once ([`Hub::peer_woke`]). A wake-up
//! carries no data and may be lost: the periodic pull still comes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::federation::batch_from;
use crate::hub::Hub;
use crate::pb;
use crate::pb::federation_client::FederationClient;
use learning_hub_client::CertPaths;

/// Where and how often a regional hub pulls.
#[derive(Debug, Clone, PartialEq)]
pub struct PullSettings {
    /// Peer region → the URL of its hub (`https://host:port`).
    pub peers: BTreeMap<String, String>,
    /// How often each peer is asked (`federation.pull_interval_ms`).
    pub every: Duration,
    /// The least time between two wake-ups sent to one peer
    /// (`federation.wake_interval_ms`; `None`: none are sent).
    pub wake_spacing: Option<Duration>,
    /// Where this region's hub certificate is (`<region>.pem`, `.key`)
    /// beside the CA that signed the peers' server certificates.
    pub certs_dir: PathBuf,
}

impl PullSettings {
    /// How long one pull may take before it counts as failed: a cut link
    /// that swallows packets must not hold the loop.
    fn timeout(&self) -> Duration {
        (self.every * 5).clamp(Duration::from_secs(2), Duration::from_secs(30))
    }
}

/// Starts the pull loops, one per peer (so a cut link delays no other),
/// if this hub has a region and peers to pull from. The handle ends when
/// every loop has, at the hub's shutdown.
pub fn spawn_pulls(hub: Arc<Hub>, settings: PullSettings) -> Option<JoinHandle<()>> {
    if hub.region().is_empty() || settings.peers.is_empty() {
        return None;
    }
    let settings = Arc::new(settings);
    let mut loops: Vec<JoinHandle<()>> = Vec::new();
    for (peer, url) in &settings.peers {
        loops.push(tokio::spawn(pull_loop(
            hub.clone(),
            settings.clone(),
            peer.clone(),
            url.clone(),
        )));
        if let Some(spacing) = settings.wake_spacing {
            loops.push(tokio::spawn(wake_loop(
                hub.clone(),
                settings.clone(),
                spacing,
                peer.clone(),
                url.clone(),
            )));
        }
    }
    Some(tokio::spawn(async move {
        for task in loops {
            let _ = task.await;
        }
    }))
}

/// Pulls from `peer` every interval until the hub shuts down.
async fn pull_loop(hub: Arc<Hub>, settings: Arc<PullSettings>, peer: String, url: String) {
    let mut shutdown = hub.shutdown_signal();
    let woken = hub.wake_signal(&peer);
    let mut link: Option<FederationClient<Channel>> = None;
    let mut ticks = tokio::time::interval(settings.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let outcome = tokio::select! {
            // The interval, or the peer's wake-up: it has news.
            _ = async {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = woken.notified() => ticks.reset(),
                }
            } => {
                // Among replicas of one region, the holder of the jobs
                // lease pulls: the others fold its merges from the log.
                if hub.job_turn("federation", settings.every).is_none() {
                    continue;
                }
                tokio::select! {
                    outcome = pull_once(&hub, &settings, &mut link, &peer, &url) => outcome,
                    _ = shutdown.changed() => return,
                }
            }
            _ = shutdown.changed() => return,
        };
        if let Err(why) = &outcome {
            // Dropped: the next pull connects again.
            link = None;
            tracing::debug!(peer, url, error = %why, "pull from a peer region failed");
        }
        hub.note_pull(&peer, &url, outcome);
    }
}

/// Tells `peer` whenever this hub's log moves, at most once per
/// `spacing`, until the hub shuts down. Failures are only logged: the
/// peer's periodic pull still comes.
async fn wake_loop(
    hub: Arc<Hub>,
    settings: Arc<PullSettings>,
    spacing: Duration,
    peer: String,
    url: String,
) {
    let mut shutdown = hub.shutdown_signal();
    let mut moves = hub.log_moves();
    let mut link: Option<FederationClient<Channel>> = None;
    loop {
        tokio::select! {
            moved = moves.changed() => if moved.is_err() { return },
            _ = shutdown.changed() => return,
        }
        // Among replicas of one region, the holder of the jobs lease
        // speaks for it, as it pulls for it.
        if hub.job_turn("federation", settings.every).is_some() {
            let sent = async {
                let client = match &mut link {
                    Some(client) => client,
                    None => link.insert(FederationClient::new(channel(
                        &url,
                        &settings.certs_dir,
                        hub.region(),
                        settings.timeout(),
                    )?)),
                };
                client
                    .wake(pb::WakeRequest {})
                    .await
                    .map_err(|status| learning_hub_client::describe_status(&status))
            };
            let sent = tokio::select! {
                sent = sent => sent,
                _ = shutdown.changed() => return,
            };
            if let Err(why) = sent {
                link = None;
                tracing::debug!(peer, url, error = %why, "waking a peer region failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(spacing) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One exchange with `peer`: how many batches changed what this region
/// holds, or why it failed.
async fn pull_once(
    hub: &Hub,
    settings: &PullSettings,
    link: &mut Option<FederationClient<Channel>>,
    peer: &str,
    url: &str,
) -> Result<usize, String> {
    let client = match link {
        Some(client) => client,
        None => link.insert(FederationClient::new(channel(
            url,
            &settings.certs_dir,
            hub.region(),
            settings.timeout(),
        )?)),
    };
    let answer = client
        .pull(pb::PullRequest {
            held: hub.held_versions().into_iter().collect(),
            held_insights: hub.held_insight_versions().into_iter().collect(),
        })
        .await
        .map_err(|status| learning_hub_client::describe_status(&status))?
        .into_inner();
    if answer.region != peer {
        return Err(format!(
            "{url} answered as region {:?}, not {peer:?}",
            answer.region
        ));
    }
    let batches = answer
        .batches
        .into_iter()
        .enumerate()
        .map(|(i, batch)| batch_from(batch, i))
        .collect::<crate::error::Result<Vec<_>>>()
        .map_err(|e| format!("{url} sent a batch this hub refuses: {e}"))?;
    hub.merge_digests(batches).await.map_err(|e| e.to_string())
}

/// A channel to `url` with this region's hub certificate.
fn channel(
    url: &str,
    certs_dir: &Path,
    region: &str,
    timeout: Duration,
) -> Result<Channel, String> {
    let paths = CertPaths::for_name(certs_dir, region);
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            format!(
                "cannot read {} ({e}): this region's hub certificate comes from \
                 `learning-hub certs issue --hub {region}`",
                path.display()
            )
        })
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&paths.ca)?))
        .identity(Identity::from_pem(read(&paths.cert)?, read(&paths.key)?));
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("federation.peers: {url:?} is not a URL: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS for {url}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy())
}
