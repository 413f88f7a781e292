//! Server configuration: where data and certificates live, transport
//! limits, and the hub core's tunables. Defaults are what a development
//! hub needs; the CLI (and tests) override fields.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::error::{Error, Result};
use crate::hub::HubSettings;

/// The seed's port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3015";
/// Prometheus metrics, on a private interface by default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9015";
/// The seed's insight generation period: every 4 hours.
pub const DEFAULT_INSIGHT_INTERVAL: Duration = Duration::from_secs(4 * 60 * 60);
/// How often the hub looks for changed certificate files.
pub const DEFAULT_CERT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Limits that protect the server from oversized, idle and hostile peers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request or response message.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Authenticated connections open at most.
    pub max_connections: usize,
    /// Authenticated connections of one identity at most.
    pub max_connections_per_identity: usize,
    /// TLS handshakes in progress at most (within the open files left);
    /// with no room, one is cut for a new one (`transport::admission`)…
    pub max_handshakes: usize,
    /// …first from a source holding more than this many.
    pub max_handshakes_per_source: usize,
    /// Open SubscribeInsights streams of one identity at most.
    pub max_streams_per_identity: usize,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Unary calls in progress at most, hub-wide; more are refused
    /// with RESOURCE_EXHAUSTED (see `overload`)…
    pub max_in_flight: usize,
    /// …after this pause, so that callers retrying at once cannot spin.
    pub refusal_pause: Duration,
    /// Time allowed to complete a TLS handshake…
    pub tls_handshake_timeout: Duration,
    /// …for the rest of a handshake whose hello arrived with more than half
    /// the handshake budget in use.
    pub tls_handshake_timeout_under_pressure: Duration,
    /// HTTP/2 ping interval on idle connections, to find dead peers.
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// How long shutdown waits for in-flight calls before closing anyway.
    pub drain_timeout: Duration,
    /// How long a connection stays open after a certificate reload
    /// refused its client certificate (revoked, or its CA removed): its
    /// calls are refused with the reason meanwhile, then it is closed,
    /// which also ends its streams.
    pub refused_certificate_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 1024,
            max_connections: 10_000,
            max_connections_per_identity: 64,
            max_handshakes: 16_384,
            max_handshakes_per_source: 4096,
            max_streams_per_identity: 32,
            idle_timeout: Duration::from_secs(600),
            max_in_flight: 4096,
            refusal_pause: Duration::from_millis(20),
            tls_handshake_timeout: Duration::from_secs(10),
            tls_handshake_timeout_under_pressure: Duration::from_secs(1),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            refused_certificate_grace: Duration::from_secs(5),
        }
    }
}

/// Everything `server::run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `main` binds (informational for `run`, which takes a listener).
    pub listen: SocketAddr,
    /// The sled database directory.
    pub data_dir: PathBuf,
    /// `ca.pem`, `server.pem`, `server.key` (and the dev CA key).
    pub certs_dir: PathBuf,
    /// Generate a development PKI in `certs_dir` when it has no CA.
    pub generate_dev_pki: bool,
    /// Serve plaintext without client certificates. Development only.
    pub insecure_dev: bool,
    pub limits: Limits,
    pub hub: HubSettings,
    /// How often insight generation runs in the background (`None`: never;
    /// the Admin RPC still runs it on demand).
    pub insight_interval: Option<Duration>,
    /// How often the retention sweep runs (`None`: never).
    pub retention_interval: Option<Duration>,
    /// How often the fleet is scanned for anomalies (`None`: never;
    /// `Admin/ListAnomalies {scan: true}` still scans on demand).
    pub anomaly_interval: Option<Duration>,
    /// Where Prometheus metrics are served over HTTP (`None`: nowhere).
    /// The CLI defaults to [`DEFAULT_METRICS_LISTEN`]; the library to none,
    /// so that tests and embedders opt in.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the certificate files (`ca.pem`, `server.pem`,
    /// `server.key`, `crl.pem`) are checked for changes, and reloaded if
    /// they changed (`None`: only on request, i.e. SIGHUP). A revocation
    /// takes effect within this interval.
    pub cert_check_interval: Option<Duration>,
    /// Where the hub keeps its state: sled in `data_dir`, or a PostgreSQL
    /// database shared with other replicas.
    pub storage: StorageConfig,
    /// The peer regions' hubs this one pulls from, region → URL
    /// (`federation.peers` entries `region=url`; see [`crate::federation`]).
    pub pull_from: std::collections::BTreeMap<String, String>,
    /// How often each of them is asked (`federation.pull_interval_ms`).
    pub pull_interval: Duration,
    /// The least time between two wake-ups sent to one peer
    /// (`federation.wake_interval_ms`; `None`: none are sent).
    pub wake_interval: Option<Duration>,
}

/// The storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageBackend {
    /// sled in the data directory: one hub, nothing else to run.
    #[default]
    Sled,
    /// One PostgreSQL database shared by every replica.
    Postgres,
}

/// Where the hub keeps its state (`[storage]`).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The shared database (with [`StorageBackend::Postgres`]).
    pub postgres_url: Option<String>,
    /// The CA (PEM) of PostgreSQL's certificate: set, connections are TLS.
    pub postgres_ca_file: Option<std::path::PathBuf>,
    /// This replica's name in logs and in the jobs lease (default: the
    /// host's name and the port it serves on).
    pub replica_name: Option<String>,
    /// Connections to PostgreSQL in the pool.
    pub postgres_pool_size: usize,
    /// How long the jobs lease lasts unless renewed.
    pub lease: Duration,
    /// How long a replica may stay behind the log before it reports
    /// NOT_SERVING.
    pub max_lag: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sled,
            postgres_url: None,
            postgres_ca_file: None,
            replica_name: None,
            postgres_pool_size: 8,
            lease: Duration::from_secs(10),
            max_lag: Duration::from_secs(5),
        }
    }
}

/// How often a regional hub asks each peer for news by default: what it
/// holds of a peer is then rarely more than a second or two old.
pub const DEFAULT_PULL_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two wake-ups a hub sends one peer region.
pub const DEFAULT_WAKE_INTERVAL: Duration = Duration::from_millis(200);

impl Config {
    /// Defaults with the given directories.
    pub fn new(data_dir: impl Into<PathBuf>, certs_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: data_dir.into(),
            certs_dir: certs_dir.into(),
            generate_dev_pki: true,
            insecure_dev: false,
            limits: Limits::default(),
            hub: HubSettings::default(),
            insight_interval: Some(DEFAULT_INSIGHT_INTERVAL),
            retention_interval: Some(Duration::from_secs(60 * 60)),
            anomaly_interval: Some(Duration::from_secs(10 * 60)),
            metrics_listen: None,
            cert_check_interval: Some(DEFAULT_CERT_CHECK_INTERVAL),
            storage: StorageConfig::default(),
            pull_from: Default::default(),
            pull_interval: DEFAULT_PULL_INTERVAL,
            wake_interval: Some(DEFAULT_WAKE_INTERVAL),
        }
    }

    /// Checks values no server could run with.
    pub fn validate(&self) -> Result<()> {
        if self.storage.backend == StorageBackend::Postgres && self.storage.postgres_url.is_none() {
            return Err(Error::invalid(
                "storage.postgres_url",
                "must be set when storage.backend is \"postgres\" (or give --postgres URL)",
            ));
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return Err(Error::invalid("max_message_bytes", "must be at least 1024"));
        }
        if [
            l.max_concurrent_streams as usize,
            l.max_connections,
            l.max_in_flight,
            l.max_connections_per_identity,
            l.max_handshakes,
            l.max_handshakes_per_source,
            l.max_streams_per_identity,
        ]
        .contains(&0)
        {
            return Err(Error::invalid(
                "limits",
                "stream, connection, handshake and in-flight limits must be positive",
            ));
        }
        if self
            .cert_check_interval
            .is_some_and(|every| every.is_zero())
        {
            return Err(Error::invalid(
                "cert_check_interval",
                "must be positive (None: only on request)",
            ));
        }
        if self.hub.request_id_window_ms <= 0 {
            return Err(Error::invalid("request_id_window", "must be positive"));
        }
        if self.hub.insight_ttl_ms <= 0 || self.hub.insight_ttl_ms > self.hub.max_insight_ttl_ms {
            return Err(Error::invalid(
                "insight_ttl",
                "must be positive and within the maximum TTL",
            ));
        }
        Ok(())
    }
}

impl Limits {
    /// What the transport enforces of these.
    pub fn connections(&self) -> crate::transport::ConnectionLimits {
        crate::transport::ConnectionLimits {
            handshake_timeout: self.tls_handshake_timeout,
            handshake_timeout_under_pressure: self.tls_handshake_timeout_under_pressure,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_source: self.max_handshakes_per_source,
            max_connections: self.max_connections,
            max_connections_per_identity: self.max_connections_per_identity,
            idle_timeout: self.idle_timeout,
            refused_certificate_grace: self.refused_certificate_grace,
            ..crate::transport::ConnectionLimits::default()
        }
    }
}
