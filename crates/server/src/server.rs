//! Runs the hub: `run(listener, config, shutdown)`.
//!
//! Start-up: install the ring crypto provider, make sure certificates exist
//! (generating a development PKI on first start), open the store and load
//! the state, then serve `learninghub.v1.Hub`, `grpc.health.v1.Health` and
//! gRPC reflection (v1 and v1alpha, which grpcurl 1.8 speaks) behind the
//! auth layer, over connections from [`crate::transport`], plus the
//! operators' `learninghub.v1.Admin`; runs background insight generation.
//!
//! Shutdown, when the `shutdown` future resolves: report NOT_SERVING, stop
//! accepting, end insight streams (clients get UNAVAILABLE with their
//! resume sequence), let in-flight calls finish (up to the drain timeout),
//! then finish queued writes and flush the store.
//!
//! While serving, a reloader task ([`crate::tls::spawn_reloader`]) swaps in
//! new certificates when their files change or a reload is requested
//! ([`PreparedHub::tls`]; the binary does it on SIGHUP).

use std::{future::Future, path::Path, sync::Arc};

use tokio::{net::TcpListener, sync::watch};

use crate::api::{AdminService, FederationService, HubService};
use crate::auth::AuthLayer;
use crate::clock::{Clock, SystemClock};
use crate::compute::ComputePool;
use crate::config::Config;
use crate::config::StorageBackend;
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::hub::replica::ReplicaSettings;
use crate::overload::{LoadShedLayer, Shedder};
use crate::pb::{self, hub_server::HubServer};
use crate::pki;
use crate::store::{PgBackend, PgSettings, Store};
use crate::tls::{ServerTls, TlsFiles};
use crate::transport;

/// Serves until `shutdown` resolves, then drains and flushes.
pub async fn run<F>(listener: TcpListener, config: Config, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    run_with_clock(listener, config, Arc::new(SystemClock), shutdown).await
}

/// [`run`] with an injected clock (tests control TTLs with it).
pub async fn run_with_clock<F>(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    PreparedHub::prepare(config, clock)
        .await?
        .serve(listener, shutdown)
        .await
}

/// [`run_with_clock`] on a store `open_store` opens in the data directory
/// instead of sled there — for tests that put a fault injector (the store
/// crate's `FaultyEngine`) under a real hub. Only with the `test-hooks`
/// feature, which the shipped binary does not enable.
#[cfg(feature = "test-hooks")]
pub async fn run_with_store<F, O>(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    open_store: O,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
    O: FnOnce(&Path) -> Result<Store> + Send + 'static,
{
    PreparedHub::prepare_with_store(config, clock, open_store)
        .await?
        .serve(listener, shutdown)
        .await
}

/// A hub with its certificates in place and its state loaded, not yet
/// serving. Splitting start-up from serving lets a caller announce the hub
/// only once everything that can fail at start has succeeded.
pub struct PreparedHub {
    config: Config,
    hub: Arc<Hub>,
    tls: Option<ServerTls>,
    metrics: Option<TcpListener>,
}

impl PreparedHub {
    /// Validates the configuration, makes sure certificates exist
    /// (generating a development PKI when allowed and there is no CA), opens
    /// the store and loads the state.
    pub async fn prepare(config: Config, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::prepare_with_store(config, clock, Store::open).await
    }

    /// [`PreparedHub::prepare`] with the store opened by `open_store` in
    /// the data directory (the `test-hooks` feature's `run_with_store`).
    async fn prepare_with_store<O>(
        config: Config,
        clock: Arc<dyn Clock>,
        open_store: O,
    ) -> Result<Self>
    where
        O: FnOnce(&Path) -> Result<Store> + Send + 'static,
    {
        // tokio-rustls and tonic's client share one process-wide provider;
        // installing ring explicitly avoids depending on feature unification.
        let _ = rustls::crypto::ring::default_provider().install_default();
        config.validate()?;

        let tls = if config.insecure_dev {
            tracing::warn!(
                "INSECURE DEV MODE: plaintext gRPC, no client certificates, identities taken from \
                 the `{}` header. Never expose this hub beyond your machine.",
                crate::auth::INSECURE_IDENTITY_HEADER
            );
            None
        } else {
            if !pki::has_ca(&config.certs_dir) {
                if !config.generate_dev_pki {
                    let dir = config.certs_dir.display();
                    return Err(Error::Unavailable(format!(
                        "no {} in {dir}: the hub needs {}, {} and {} there (is --certs-dir \
                         mistyped?); to create a development PKI in {dir}, add --init-dev-pki \
                         or run `learning-hub certs init --certs-dir {dir}`",
                        pki::CA_CERT,
                        pki::CA_CERT,
                        pki::SERVER_CERT,
                        pki::SERVER_KEY,
                    )));
                }
                pki::generate_dev_pki(&config.certs_dir)?;
                tracing::info!(
                    dir = %config.certs_dir.display(),
                    "generated a development PKI: ca.pem, ca.key, server.pem, server.key, \
                     operator.pem, operator.key; issue instance certificates with \
                     `learning-hub certs issue <id>`"
                );
            }
            Some(ServerTls::load(TlsFiles::in_dir(&config.certs_dir))?)
        };

        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let dir = config.data_dir.clone();
        let settings = config.hub.clone();
        let storage = config.storage.clone();
        let listen = config.listen;
        // Opening the store and loading the state block: keep them off the
        // async workers.
        let hub = tokio::task::spawn_blocking(move || match storage.backend {
            StorageBackend::Sled => Hub::open(open_store(&dir)?, clock, settings),
            StorageBackend::Postgres => {
                let url = storage.postgres_url.as_deref().unwrap_or_default();
                let mut pg = PgSettings::new(url);
                pg.pool_size = storage.postgres_pool_size;
                pg.ca_file = storage.postgres_ca_file.clone();
                pg.timeout = settings.write_timeout;
                let log = Arc::new(PgBackend::connect(&pg)?);
                let mut replica = ReplicaSettings::new(
                    storage
                        .replica_name
                        .unwrap_or_else(|| default_replica_name(listen)),
                );
                replica.lease = storage.lease;
                replica.max_lag = storage.max_lag;
                Hub::open_replica(log, replica, clock, settings)
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("start-up task failed: {e}")))??;
        // The store is open, so this process holds the directory's lock:
        // the PID written is the holder's (signals name it; a second hub on
        // the directory is told who holds it).
        write_pid_file(&config.data_dir);
        let metrics = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                Error::Unavailable(format!("cannot listen for metrics on {addr}: {e}"))
            })?),
            None => None,
        };
        Ok(PreparedHub {
            config,
            hub,
            tls,
            metrics,
        })
    }

    /// Where `GET /metrics` is served, once bound (`None`: metrics off).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The hub's TLS material (none in insecure dev mode): ask it to
    /// reload with [`ServerTls::request_reload`] — on SIGHUP, say.
    pub fn tls(&self) -> Option<ServerTls> {
        self.tls.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and
    /// flushes the store.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let PreparedHub {
            config,
            hub,
            tls,
            metrics,
        } = self;
        let jobs: Vec<_> = [
            config
                .insight_interval
                .map(|every| crate::jobs::spawn_insight_generation(hub.clone(), every)),
            config
                .retention_interval
                .map(|every| crate::jobs::spawn_retention(hub.clone(), every)),
            config
                .anomaly_interval
                .map(|every| crate::jobs::spawn_anomaly_scan(hub.clone(), every)),
            Some(crate::jobs::spawn_audit_sampling(
                hub.clone(),
                config.hub.audit_sample_window,
            )),
            tls.clone().map(|tls| {
                crate::tls::spawn_reloader(tls, config.cert_check_interval, hub.shutdown_signal())
            }),
            hub.spawn_lease(),
            crate::federation::spawn_pulls(
                hub.clone(),
                crate::federation::PullSettings {
                    peers: config.pull_from.clone(),
                    every: config.pull_interval,
                    wake_spacing: config.wake_interval,
                    certs_dir: config.certs_dir.clone(),
                },
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        let shedder = Shedder::new(config.limits.max_in_flight, config.limits.refusal_pause);
        let fd_limit = transport::admission::raise_fd_limit();
        tracing::debug!(fd_limit, "open files limit");
        let admission = transport::Admission::new(config.limits.connections(), fd_limit);
        let (metrics_stop, metrics_stopped) = watch::channel(false);
        let metrics_task = metrics.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("metrics on http://{addr}/metrics");
            }
            let hub = hub.clone();
            let shedder = shedder.clone();
            let admission = admission.clone();
            let series = crate::dashboard::Series::default();
            let sampler = crate::dashboard::spawn_sampler(hub.clone(), series.clone());
            let pages = move |path: &str| match path {
                "/metrics" => {
                    hub.metrics().set_shed_total(shedder.shed());
                    hub.metrics().set_transport(
                        admission.open(),
                        admission.pending(),
                        admission.cut(),
                    );
                    Some((crate::metrics::EXPOSITION, hub.render_metrics()))
                }
                "/dashboard" | "/dashboard/" => Some((
                    "text/html; charset=utf-8",
                    crate::dashboard::PAGE.to_string(),
                )),
                "/dashboard/state.json" => Some((
                    "application/json",
                    crate::dashboard::state(&hub, &series).to_string(),
                )),
                _ => None,
            };
            let served = crate::metrics::serve(listener, pages, metrics_stopped);
            tokio::spawn(async move {
                served.await;
                sampler.abort();
            })
        });
        let served = serve(
            listener,
            &config,
            hub.clone(),
            tls,
            shedder,
            admission,
            shutdown,
        )
        .await;
        metrics_stop.send_replace(true);
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        for job in jobs {
            // They stop at the hub's shutdown signal; wait so no run races
            // the final flush.
            let _ = job.await;
        }
        let flushed = hub.close().await;
        let _ = std::fs::remove_file(config.data_dir.join(crate::store::PID_FILE));
        tracing::info!("learning hub stopped");
        served.and(flushed)
    }
}

/// A replica's name when none is configured: the host's name and the port
/// it serves on.
fn default_replica_name(listen: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".into());
    format!("{host}:{}", listen.port())
}

/// Writes this process's PID to `hub.pid` in the data directory. A hub
/// that cannot write it still serves (it is a convenience for signals).
fn write_pid_file(data_dir: &Path) {
    let path = data_dir.join(crate::store::PID_FILE);
    if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the PID file");
    }
}

async fn serve<F>(
    listener: TcpListener,
    config: &Config,
    hub: Arc<Hub>,
    tls: Option<ServerTls>,
    shedder: Arc<Shedder>,
    admission: Arc<transport::Admission>,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = &config.limits;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<HubServer<HubService>>().await;
    // A replica that cannot reach the shared log, or lags it, says so.
    let health_task = {
        let health = health.clone();
        let mut problem = hub.health();
        let mut shutdown = hub.shutdown_signal();
        tokio::spawn(async move {
            loop {
                let serving = problem.borrow_and_update().is_none();
                if *shutdown.borrow() {
                    return;
                }
                if serving {
                    health.set_serving::<HubServer<HubService>>().await;
                } else {
                    health.set_not_serving::<HubServer<HubService>>().await;
                }
                tokio::select! {
                    changed = problem.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
        })
    };

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e| Error::Internal(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let local_addr = listener.local_addr().ok();
    let (stop_accepting, stop_rx) = watch::channel(false);
    let incoming = transport::incoming(
        listener,
        tls.as_ref().map(ServerTls::subscribe),
        admission.clone(),
        Some(crate::auth::connection_refusals(&hub)),
        stop_rx,
    );
    tracing::info!(
        addr = ?local_addr,
        tls = tls.is_some(),
        data_dir = %config.data_dir.display(),
        "learning hub serving"
    );

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let hub = hub.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight calls");
            health.set_not_serving::<HubServer<HubService>>().await;
            hub.begin_shutdown();
            stop_accepting.send_replace(true);
            let _ = draining_tx.send(());
        }
    };

    // Queries compute here, off the threads that read and refuse requests.
    let compute = ComputePool::per_core()?;
    let gateway_routes = crate::gateway::RouteTable::from_descriptors().map_err(Error::Internal)?;
    tracing::debug!(threads = compute.threads(), "compute pool started");
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        // HTTP/1.1 for the JSON gateway's callers (gRPC stays on HTTP/2).
        .accept_http1(true)
        // Outermost: an overloaded hub refuses before spending anything.
        .layer(LoadShedLayer::new(shedder))
        // The JSON gateway turns its paths into gRPC calls that meet the
        // auth layer like any other.
        .layer(crate::gateway::GatewayLayer::new(gateway_routes))
        .layer(AuthLayer::new(
            config.insecure_dev,
            crate::auth::access_control(&hub),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            HubService::new(hub.clone(), compute)
                .with_stream_limit(limits.max_streams_per_identity)
                .into_server(limits.max_message_bytes),
        )
        .add_service(AdminService::new(hub.clone()).into_server(limits.max_message_bytes))
        .add_service(FederationService::new(hub).into_server(limits.max_message_bytes))
        .serve_with_incoming_shutdown(incoming, signal);

    let drain_timeout = limits.drain_timeout;
    let _health_task = AbortOnDrop(health_task);
    tokio::select! {
        served = server => served.map_err(|e| Error::Unavailable(format!("server failed: {e}"))),
        () = async {
            if draining_rx.await.is_ok() {
                tokio::time::sleep(drain_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?drain_timeout, "drain timed out; closing remaining connections");
            Ok(())
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
