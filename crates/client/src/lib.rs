//! A Rust client for instances (and operators): connects over mutual TLS,
//! offers a typed call for every RPC, and a subscription to the insight
//! stream that reconnects by itself and resumes from the last sequence it
//! delivered, so a hub restart or a dropped connection costs no insight.
//!
//! Unary calls retry what a retry can fix (UNAVAILABLE, DEADLINE_EXCEEDED,
//! RESOURCE_EXHAUSTED) with exponential backoff and full jitter
//! ([`RetryPolicy`]). Writes are made safe to retry first: each logical
//! call gets a `request_id` (a UUID v4, unless the request has one), the
//! same for all its attempts, so the hub applies it once even when an
//! attempt timed out after the hub had applied it.
//!
//! A replicated hub is reached through several endpoints
//! (`LEARNING_HUB_URL=https://a:3015,https://b:3015`): the client talks to
//! one, and when a call fails with UNAVAILABLE (a replica that is down,
//! lost its database, or has not caught up) or a stream breaks, it moves
//! to the next and retries or resumes there. Every answer says which log
//! position it was computed at (`x-hub-log-pos`); the client sends the
//! highest it has seen (`x-hub-min-pos`), so a replica that has not folded
//! the caller's own writes yet waits for them (or refuses, and the client
//! moves on) instead of answering from older state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use learning_hub_client::{ClientSettings, HubClient, pb};
//!
//! let hub = HubClient::connect(&ClientSettings::from_env()?).await?;
//! hub.register(pb::RegisterRequest {
//!     instance_id: hub.instance_id().unwrap_or_default().to_string(),
//!     region: "us-east".into(),
//!     ..Default::default()
//! })
//! .await?;
//! let mut insights = hub.subscribe_insights(0, pb::InsightCategory::Unspecified);
//! while let Some(insight) = insights.next().await {
//!     println!("{}", insight?.title);
//! }
//! # Ok(())
//! # }
//! ```

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Code, Request, Response, Status,
    metadata::{AsciiMetadataValue, MetadataMap},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

pub use learning_hub_domain::error::{Error, Result};
use learning_hub_domain::rng::Rng;
use learning_hub_proto::INSECURE_IDENTITY_HEADER;
pub use learning_hub_proto::pb;
/// The plateau model's features, labels, training and evaluation: what an
/// instance runs before `share_model_update` and after `get_model`.
pub use learning_hub_proto::plateau;

/// The CA certificate's file name in a certificates directory.
pub const CA_CERT: &str = "ca.pem";
/// The hub's certificate and key file names.
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

/// A certificate, its key, and the CA that verifies the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// The files `certs issue <name>` writes into `dir`.
    pub fn for_name(dir: &Path, name: &str) -> Self {
        CertPaths {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// The server's certificate files in `dir`.
    pub fn server(dir: &Path) -> Self {
        CertPaths {
            ca: dir.join(CA_CERT),
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
        }
    }
}

/// The seed's variable for the hub address.
pub const ENV_URL: &str = "LEARNING_HUB_URL";
/// The seed's variable for the instance id.
pub const ENV_INSTANCE_ID: &str = "INSTANCE_ID";
/// Where `<INSTANCE_ID>.pem`, `<INSTANCE_ID>.key` and `ca.pem` are.
pub const ENV_CERTS_DIR: &str = "LEARNING_HUB_CERTS_DIR";
/// The seed's variable for the instance's API key.
pub const ENV_API_KEY: &str = "HUB_API_KEY";

/// The response header with the log position that answered.
pub const POSITION_HEADER: &str = "x-hub-log-pos";
/// The request header with the lowest log position the caller accepts.
pub const MIN_POSITION_HEADER: &str = "x-hub-min-pos";

/// How to reach the hub and who to be.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// e.g. `https://localhost:3015`; several replicas of one hub
    /// comma-separated (`https://a:3015,https://b:3015`).
    pub url: String,
    /// The hub's CA, this client's certificate and key.
    pub certs: CertPaths,
    /// TLS server name to verify (default: the URL's host).
    pub domain: Option<String>,
    /// The instance id this client acts as (`None` for operators).
    pub instance_id: Option<String>,
    /// The instance's API key, sent as `authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl ClientSettings {
    /// Settings for the identity `name` with certificates from `certs_dir`
    /// (`ca.pem`, `<name>.pem`, `<name>.key`).
    pub fn new(url: impl Into<String>, certs_dir: &Path, name: &str) -> Self {
        ClientSettings {
            url: url.into(),
            certs: CertPaths::for_name(certs_dir, name),
            domain: None,
            instance_id: Some(name.to_string()),
            api_key: None,
        }
    }

    /// The endpoints of `url`, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// From the seed's environment: `LEARNING_HUB_URL` (default
    /// `https://localhost:3015`), `INSTANCE_ID` (required),
    /// `HUB_API_KEY` and `LEARNING_HUB_CERTS_DIR` (default `./certs`).
    pub fn from_env() -> Result<Self> {
        let url = std::env::var(ENV_URL).unwrap_or_else(|_| "https://localhost:3015".into());
        let id = std::env::var(ENV_INSTANCE_ID)
            .map_err(|_| Error::invalid(ENV_INSTANCE_ID, "environment variable is not set"))?;
        learning_hub_domain::validate::name(ENV_INSTANCE_ID, &id)?;
        let dir =
            std::env::var(ENV_CERTS_DIR).map_or_else(|_| PathBuf::from("certs"), PathBuf::from);
        let mut settings = ClientSettings::new(url, &dir, &id);
        settings.api_key = std::env::var(ENV_API_KEY).ok().filter(|k| !k.is_empty());
        Ok(settings)
    }
}

/// PEM-encoded TLS material: the hub's CA, this client's certificate and
/// its key.
#[derive(Debug, Clone)]
pub struct ClientPem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Adds per-call metadata: the API key, and the highest log position the
/// client was answered at.
#[derive(Debug, Clone, Default)]
pub struct CallMetadata {
    headers: Vec<(&'static str, AsciiMetadataValue)>,
    position: Arc<AtomicU64>,
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        for (name, value) in &self.headers {
            request.metadata_mut().insert(*name, value.clone());
        }
        let position = self.position.load(Ordering::SeqCst);
        if position > 0 {
            request
                .metadata_mut()
                .insert(MIN_POSITION_HEADER, AsciiMetadataValue::from(position));
        }
        Ok(request)
    }
}

type Inner = pb::hub_client::HubClient<InterceptedService<Channel, CallMetadata>>;
/// The operators' Admin service over the same connection.
pub type AdminClient = pb::admin_client::AdminClient<InterceptedService<Channel, CallMetadata>>;

/// One endpoint of the hub.
#[derive(Clone)]
struct Replica {
    url: String,
    inner: Inner,
    admin: AdminClient,
}

/// A connected client. Cheap to clone; clones share the connections, the
/// endpoint in use and the log position seen.
#[derive(Clone)]
pub struct HubClient {
    replicas: Arc<Vec<Replica>>,
    /// The endpoint calls go to now.
    current: Arc<AtomicUsize>,
    /// The highest log position an answer came from.
    position: Arc<AtomicU64>,
    instance_id: Option<String>,
    retry: RetryPolicy,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", path.display())))
}

/// How a [`HubClient`] retries a unary call that failed for a reason a
/// retry can fix: UNAVAILABLE (hub restarting, connection lost),
/// DEADLINE_EXCEEDED (an attempt got no answer in time) and
/// RESOURCE_EXHAUSTED (rate limited; the hub's `retry-after` is waited
/// out). Any other error is the answer. The wait before retry `n` (1, 2, …)
/// is drawn uniformly from `[0, min(max_backoff, initial_backoff × 2^(n−1)))`
/// ("full jitter": a fleet that lost the hub at the same moment does not
/// come back in lockstep), and is at least the hub's `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1: never retry, and writes
    /// get no generated request id).
    pub max_attempts: u32,
    /// The cap of the first wait; it doubles with every retry…
    pub initial_backoff: Duration,
    /// …up to this. A `retry-after` longer than this is not waited out:
    /// the call fails with the hub's answer, for the caller to reschedule.
    pub max_backoff: Duration,
    /// Deadline of each attempt (`None`: none). An attempt past it fails
    /// with DEADLINE_EXCEEDED, which is retried.
    pub attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Six attempts, waits capped at 0.2, 0.4, 0.8, 1.6 and 3.2 s (so a
    /// call rides out a hub restart of a few seconds), 10 s per attempt.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no deadline: every error is the answer.
    pub const fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            attempt_timeout: None,
        }
    }

    /// Whether a call may be attempted more than once.
    pub fn retries(&self) -> bool {
        self.max_attempts > 1
    }

    /// The wait before the next attempt after attempt `attempt` (1-based)
    /// failed with `status`, given `uniform`, a random number in [0, 1);
    /// `None` if the call must not be retried.
    pub fn backoff(&self, attempt: u32, status: &Status, uniform: f64) -> Option<Duration> {
        if attempt >= self.max_attempts || !is_transient(status) {
            return None;
        }
        let cap = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        let uniform = if uniform.is_finite() {
            uniform.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // In whole nanoseconds (`as` saturates: no overflow, no panic).
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos((cap_nanos as f64 * uniform) as u64);
        match retry_after(status) {
            Some(after) if after > self.max_backoff => None,
            Some(after) => Some(jittered.max(after)),
            None => Some(jittered),
        }
    }
}

/// Errors a later attempt may not get.
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// The hub's `retry-after` metadata: whole seconds.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let value = status.metadata().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error and its causes in one line, outermost first, without the
/// wrappers that add nothing ("transport error"): what went wrong on the
/// way to the hub — `tcp connect error: Connection refused (os error 111)`,
/// `received fatal alert: UnknownCA` — rather than Rust debug output.
pub fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        // A cause's text is often repeated inside its wrapper's.
        if !text.is_empty() && text != "transport error" && !parts.iter().any(|p| p.contains(&text))
        {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

/// A status in one line: its code, its message and the transport error
/// behind it, if any (a TLS alert the hub sent, a refused connection).
pub fn describe_status(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(cause) = std::error::Error::source(status) {
        let cause = describe_error(cause);
        if !text.contains(&cause) {
            text.push_str(&format!(" ({cause})"));
        }
    }
    text
}

/// A new request id: a UUID v4 (random, so no two instances' or calls'
/// ids meet).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Reads: retried as they are.
macro_rules! unary_calls {
    ($($(#[$doc:meta])* $method:ident($request:ty) -> $response:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $method(&self, request: $request) -> std::result::Result<$response, Status> {
                self.call(request, |mut inner, request| async move {
                    inner.$method(request).await
                })
                .await
            }
        )*
    };
}

/// Writes with a `request_id`: one is generated per logical call (unless
/// the request has one, or the policy never retries), so that its retries
/// are applied once.
macro_rules! write_calls {
    ($($(#[$doc:meta])* $method:ident($request:ty) -> $response:ty;)*) => {
        $(
            $(#[$doc])*
            ///
            /// Retried under the client's [`RetryPolicy`] with one
            /// `request_id` for every attempt (generated if empty).
            pub async fn $method(&self, mut request: $request) -> std::result::Result<$response, Status> {
                if request.request_id.is_empty() && self.retry.retries() {
                    request.request_id = new_request_id();
                }
                self.call(request, |mut inner, request| async move {
                    inner.$method(request).await
                })
                .await
            }
        )*
    };
}

impl HubClient {
    /// Connects over mutual TLS with the certificate files of `settings`.
    pub async fn connect(settings: &ClientSettings) -> Result<Self> {
        let pem = ClientPem {
            ca: read(&settings.certs.ca)?,
            cert: read(&settings.certs.cert)?,
            key: read(&settings.certs.key)?,
        };
        Self::connect_pem(settings, pem).await
    }

    /// Connects over mutual TLS with certificates held in memory
    /// (`settings.certs` is not read). With several endpoints, the first
    /// that answers is used and the others are connected when needed.
    pub async fn connect_pem(settings: &ClientSettings, pem: ClientPem) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem.ca))
            .identity(Identity::from_pem(pem.cert, pem.key));
        if let Some(domain) = &settings.domain {
            tls = tls.domain_name(domain.clone());
        }
        let urls = settings.endpoints();
        if urls.is_empty() {
            return Err(Error::invalid("url", "names no endpoint"));
        }
        let mut metadata = CallMetadata::default();
        if let Some(key) = &settings.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| Error::invalid("api_key", "must be ASCII"))?;
            metadata.headers.push(("authorization", value));
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in &urls {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::invalid("url", format!("{url}: {e}")))?
                .tls_config(tls.clone())
                .map_err(|e| {
                    Error::Unavailable(format!("cannot connect to {url}: {}", describe_error(&e)))
                })?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            endpoints.push(endpoint);
        }
        // The first endpoint that answers; the rest connect when used.
        let mut first = None;
        let mut failures = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    first = Some((i, channel));
                    break;
                }
                Err(e) => failures.push(format!("{}: {}", urls[i], describe_error(&e))),
            }
        }
        let Some((current, channel)) = first else {
            return Err(Error::Unavailable(match failures.as_slice() {
                [one] => format!("cannot connect to {one}"),
                all => format!("cannot connect to any of {}", all.join("; ")),
            }));
        };
        let channels = endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                if i == current {
                    channel.clone()
                } else {
                    endpoint.connect_lazy()
                }
            })
            .collect();
        let client = Self::with_metadata(urls, channels, metadata, settings.instance_id.clone());
        client.current.store(current, Ordering::SeqCst);
        Ok(client)
    }

    /// Wraps a plaintext channel to a hub started with `--insecure-dev`;
    /// `instance_id` travels in the header that mode reads identities from.
    pub fn insecure_dev(channel: Channel, instance_id: Option<String>) -> Self {
        let mut metadata = CallMetadata::default();
        if let Some(id) = instance_id.as_deref().and_then(|id| id.parse().ok()) {
            metadata.headers.push((INSECURE_IDENTITY_HEADER, id));
        }
        Self::with_metadata(vec![String::new()], vec![channel], metadata, instance_id)
    }

    fn with_metadata(
        urls: Vec<String>,
        channels: Vec<Channel>,
        metadata: CallMetadata,
        instance_id: Option<String>,
    ) -> Self {
        let position = metadata.position.clone();
        let replicas = urls
            .into_iter()
            .zip(channels)
            .map(|(url, channel)| Replica {
                url,
                admin: pb::admin_client::AdminClient::with_interceptor(
                    channel.clone(),
                    metadata.clone(),
                ),
                inner: pb::hub_client::HubClient::with_interceptor(channel, metadata.clone())
                    .max_decoding_message_size(16 * 1024 * 1024),
            })
            .collect();
        HubClient {
            replicas: Arc::new(replicas),
            current: Arc::default(),
            position,
            instance_id,
            retry: RetryPolicy::default(),
        }
    }

    fn replica(&self) -> (usize, &Replica) {
        let i = self.current.load(Ordering::SeqCst) % self.replicas.len();
        (i, &self.replicas[i])
    }

    /// The endpoint calls go to now.
    pub fn endpoint(&self) -> &str {
        &self.replica().1.url
    }

    /// The highest log position an answer to this client came from (0:
    /// none said).
    pub fn log_position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }

    /// Notes the log position an answer came from.
    fn observe(&self, metadata: &MetadataMap) {
        if let Some(position) = metadata
            .get(POSITION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.position.fetch_max(position, Ordering::SeqCst);
        }
    }

    /// After `status` from endpoint `from`: moves to the next endpoint if
    /// another might do better (one that is down, not serving or behind
    /// answers UNAVAILABLE). Whether it moved.
    fn fail_over(&self, from: usize, status: &Status) -> bool {
        if self.replicas.len() < 2 || status.code() != Code::Unavailable {
            return false;
        }
        let next = (from + 1) % self.replicas.len();
        let moved = self
            .current
            .compare_exchange(from, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if moved {
            tracing::debug!(
                from = %self.replicas[from].url,
                to = %self.replicas[next].url,
                message = status.message(),
                "moving to another endpoint"
            );
        }
        true
    }

    /// This client with another retry policy (e.g. [`RetryPolicy::none`]
    /// to see every error as it happens, as the bench does).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Sends `request` with `send` until it succeeds, fails for good, or
    /// the policy's attempts are spent.
    async fn call<Req, Resp, Fut>(
        &self,
        request: Req,
        send: impl Fn(Inner, Req) -> Fut,
    ) -> std::result::Result<Resp, Status>
    where
        Req: Clone,
        Fut: std::future::Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let mut jitter: Option<Rng> = None;
        let mut attempt = 1;
        loop {
            let (endpoint, replica) = self.replica();
            let sent = send(replica.inner.clone(), request.clone());
            let result = match self.retry.attempt_timeout {
                Some(limit) => tokio::time::timeout(limit, sent).await.unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "no answer within {} ms",
                        limit.as_millis()
                    )))
                }),
                None => sent.await,
            };
            let status = match result {
                Ok(response) => {
                    self.observe(response.metadata());
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let uniform = jitter.get_or_insert_with(random_rng).uniform();
            let Some(mut wait) = self.retry.backoff(attempt, &status, uniform) else {
                return Err(status);
            };
            // Another replica is tried at once, not after a backoff meant
            // for the same one.
            if self.fail_over(endpoint, &status) && attempt < self.replicas.len() as u32 {
                wait = Duration::ZERO;
            }
            tracing::debug!(
                code = ?status.code(),
                message = status.message(),
                attempt,
                wait_ms = wait.as_millis() as u64,
                "call failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// The instance this client acts as, if it is one.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// The generated client of the endpoint in use, for calls with custom
    /// metadata or deadlines.
    pub fn raw(&self) -> Inner {
        self.replica().1.inner.clone()
    }

    /// `learninghub.v1.Admin` over the same connection (operators only).
    pub fn admin(&self) -> AdminClient {
        self.replica().1.admin.clone()
    }

    unary_calls! {
        /// See `Hub.Register` in the proto (idempotent as it is).
        register(pb::RegisterRequest) -> pb::RegisterResponse;
        /// See `Hub.GetStatus`.
        get_status(pb::GetStatusRequest) -> pb::GetStatusResponse;
        /// See `Hub.ListInstances`.
        list_instances(pb::ListInstancesRequest) -> pb::ListInstancesResponse;
        /// See `Hub.GetPatterns`.
        get_patterns(pb::GetPatternsRequest) -> pb::GetPatternsResponse;
        /// See `Hub.GetStrategies`.
        get_strategies(pb::GetStrategiesRequest) -> pb::GetStrategiesResponse;
        /// See `Hub.GetOptimalCombination`.
        get_optimal_combination(pb::GetOptimalCombinationRequest) -> pb::GetOptimalCombinationResponse;
        /// See `Hub.GetInsights`.
        get_insights(pb::GetInsightsRequest) -> pb::GetInsightsResponse;
        /// See `Hub.GetFailures`.
        get_failures(pb::GetFailuresRequest) -> pb::GetFailuresResponse;
        /// See `Hub.CheckAction`.
        check_action(pb::CheckActionRequest) -> pb::CheckActionResponse;
        /// See `Hub.Bootstrap`.
        bootstrap(pb::BootstrapRequest) -> pb::BootstrapResponse;
        /// See `Hub.Echo`.
        echo(pb::EchoRequest) -> pb::EchoResponse;
        /// See `Hub.GetModel` (features and training: [`plateau`]).
        get_model(pb::GetModelRequest) -> pb::GetModelResponse;
        /// See `Hub.PredictPlateau`.
        predict_plateau(pb::PredictPlateauRequest) -> pb::PredictPlateauResponse;
    }

    write_calls! {
        /// See `Hub.SharePattern` in the proto.
        share_pattern(pb::SharePatternRequest) -> pb::SharePatternResponse;
        /// See `Hub.RecordPatternOutcome`.
        record_pattern_outcome(pb::RecordPatternOutcomeRequest) -> pb::RecordPatternOutcomeResponse;
        /// See `Hub.ShareStrategy`.
        share_strategy(pb::ShareStrategyRequest) -> pb::ShareStrategyResponse;
        /// See `Hub.ShareInsight`.
        share_insight(pb::ShareInsightRequest) -> pb::ShareInsightResponse;
        /// See `Hub.RecordInsightUse`.
        record_insight_use(pb::RecordInsightUseRequest) -> pb::RecordInsightUseResponse;
        /// See `Hub.ShareFailure`.
        share_failure(pb::ShareFailureRequest) -> pb::ShareFailureResponse;
        /// See `Hub.ShareConfiguration`.
        share_configuration(pb::ShareConfigurationRequest) -> pb::ShareConfigurationResponse;
        /// See `Hub.ShareModelUpdate`.
        share_model_update(pb::ShareModelUpdateRequest) -> pb::ShareModelUpdateResponse;
    }

    /// (Operators) issues an API key for `instance_id`, replacing its
    /// previous one, and returns it.
    pub async fn issue_api_key(&self, instance_id: &str) -> std::result::Result<String, Status> {
        let response = self
            .admin()
            .issue_api_key(pb::IssueApiKeyRequest {
                instance_id: instance_id.to_string(),
            })
            .await?;
        self.observe(response.metadata());
        Ok(response.into_inner().api_key)
    }

    /// (Operators) revokes `instance_id`'s API key.
    pub async fn revoke_api_key(&self, instance_id: &str) -> std::result::Result<(), Status> {
        let response = self
            .admin()
            .revoke_api_key(pb::RevokeApiKeyRequest {
                instance_id: instance_id.to_string(),
            })
            .await?;
        self.observe(response.metadata());
        Ok(())
    }

    /// One `SubscribeInsights` call, without resuming: the raw stream.
    pub async fn subscribe_insights_once(
        &self,
        request: pb::SubscribeInsightsRequest,
    ) -> std::result::Result<tonic::Streaming<pb::SubscribeInsightsResponse>, Status> {
        let response = self.raw().subscribe_insights(request).await?;
        self.observe(response.metadata());
        Ok(response.into_inner())
    }

    /// Insights with a sequence greater than `after`, forever: when the
    /// stream breaks (network, hub restart) it resubscribes with the last
    /// sequence delivered — on another endpoint, if there are several —
    /// backing off from 100 ms up to 5 s. Only errors a
    /// retry cannot fix (bad request, refused identity) are yielded, and
    /// they end the subscription.
    pub fn subscribe_insights(
        &self,
        after: u64,
        category: pb::InsightCategory,
    ) -> InsightSubscription {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        let task = tokio::spawn(async move {
            let mut last = after;
            let mut backoff = Duration::from_millis(100);
            let mut failures_in_a_row = 0u32;
            loop {
                let request = pb::SubscribeInsightsRequest {
                    after_sequence: last,
                    category: category as i32,
                };
                let (endpoint, _) = client.replica();
                let error = match client.subscribe_insights_once(request).await {
                    Ok(mut stream) => loop {
                        match stream.next().await {
                            Some(Ok(item)) => {
                                backoff = Duration::from_millis(100);
                                failures_in_a_row = 0;
                                let Some(insight) = item.insight else {
                                    continue;
                                };
                                if insight.sequence <= last {
                                    continue;
                                }
                                last = insight.sequence;
                                if tx.send(Ok(insight)).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(status)) => break status,
                            None => break Status::unavailable("stream ended"),
                        }
                    },
                    Err(status) => status,
                };
                if is_permanent(&error) {
                    let _ = tx.send(Err(error)).await;
                    return;
                }
                // Replicas number insights alike: resume on the next one.
                client.fail_over(endpoint, &Status::unavailable(error.message()));
                failures_in_a_row += 1;
                // A hub restart costs a few attempts; more in a row usually
                // means a configuration problem (a refused certificate shows
                // up as a transport error), which should not go unnoticed.
                if failures_in_a_row >= 5 {
                    tracing::warn!(code = ?error.code(), message = error.message(), failures_in_a_row, resume_after = last, "insight stream keeps failing; still retrying");
                } else {
                    tracing::debug!(code = ?error.code(), message = error.message(), resume_after = last, "insight stream interrupted; resubscribing");
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        InsightSubscription { rx, task }
    }
}

/// A jitter source seeded from the system's randomness (via UUID v4), so
/// clients started together do not draw the same waits.
fn random_rng() -> Rng {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[..8]);
    Rng::new(u64::from_le_bytes(seed))
}

fn is_permanent(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// A resuming insight subscription (see [`HubClient::subscribe_insights`]).
/// Dropping it ends the background task.
pub struct InsightSubscription {
    rx: mpsc::Receiver<std::result::Result<pb::Insight, Status>>,
    task: JoinHandle<()>,
}

impl InsightSubscription {
    /// The next insight; `None` after a permanent error was yielded.
    pub async fn next(&mut self) -> Option<std::result::Result<pb::Insight, Status>> {
        self.rx.recv().await
    }
}

impl Stream for InsightSubscription {
    type Item = std::result::Result<pb::Insight, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for InsightSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: 100 * MS,
            max_backoff: 1000 * MS,
            attempt_timeout: None,
        }
    }

    fn rate_limited(seconds: &str) -> Status {
        let mut status = Status::resource_exhausted("rate limit reached");
        status
            .metadata_mut()
            .insert("retry-after", seconds.parse().unwrap());
        status
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = policy();
        let unavailable = Status::unavailable("restarting");
        // The largest draw gives the cap: 100, 200, 400, 800, then 1000 ms.
        let top: Vec<Duration> = (1..6)
            .map(|attempt| p.backoff(attempt, &unavailable, 1.0).unwrap())
            .collect();
        assert_eq!(top, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS]);
        // Full jitter: anywhere from nothing to the cap.
        assert_eq!(p.backoff(3, &unavailable, 0.0), Some(Duration::ZERO));
        assert_eq!(p.backoff(3, &unavailable, 0.25), Some(100 * MS));
        // Attempts are bounded: after the sixth, the error is the answer.
        assert_eq!(p.backoff(6, &unavailable, 0.5), None);
        // A draw outside [0, 1] cannot make a wait outside the cap (nor a
        // panic).
        assert_eq!(p.backoff(1, &unavailable, f64::NAN), Some(Duration::ZERO));
        assert_eq!(p.backoff(1, &unavailable, 7.0), Some(100 * MS));
        // Large attempt numbers do not overflow.
        let many = RetryPolicy {
            max_attempts: u32::MAX,
            ..p
        };
        assert_eq!(many.backoff(200, &unavailable, 1.0), Some(1000 * MS));
    }

    #[test]
    fn draws_spread_over_the_whole_interval() {
        let p = policy();
        let status = Status::deadline_exceeded("slow");
        let mut rng = Rng::new(7);
        let waits: Vec<f64> = (0..2000)
            .map(|_| p.backoff(3, &status, rng.uniform()).unwrap().as_secs_f64())
            .collect();
        assert!(waits.iter().all(|w| (0.0..0.4).contains(w)));
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        assert!((mean - 0.2).abs() < 0.01, "mean {mean}");
        assert!(waits.iter().any(|w| *w < 0.04) && waits.iter().any(|w| *w > 0.36));
    }

    #[test]
    fn only_what_a_retry_can_fix_is_retried() {
        let p = policy();
        for status in [
            Status::unavailable(""),
            Status::deadline_exceeded(""),
            Status::resource_exhausted(""),
        ] {
            assert!(p.backoff(1, &status, 0.5).is_some(), "{status:?}");
        }
        for status in [
            Status::invalid_argument("request_id: is required"),
            Status::failed_precondition(""),
            Status::already_exists(""),
            Status::permission_denied(""),
            Status::unauthenticated(""),
            Status::not_found(""),
            Status::internal(""),
            Status::cancelled(""),
        ] {
            assert_eq!(p.backoff(1, &status, 0.5), None, "{status:?}");
        }
        assert_eq!(
            RetryPolicy::none().backoff(1, &Status::unavailable(""), 0.5),
            None
        );
        assert!(!RetryPolicy::none().retries() && RetryPolicy::default().retries());
    }

    #[test]
    fn retry_after_is_waited_out_unless_it_is_too_long() {
        let p = policy();
        // At least the hub's retry-after, even with a short draw…
        assert_eq!(p.backoff(1, &rate_limited("1"), 0.0), Some(1000 * MS));
        // …a longer draw stands…
        let longer = RetryPolicy {
            max_backoff: 5000 * MS,
            initial_backoff: 4000 * MS,
            ..p
        };
        assert_eq!(longer.backoff(1, &rate_limited("1"), 0.5), Some(2000 * MS));
        // …and one beyond the longest wait is the caller's to schedule.
        assert_eq!(p.backoff(1, &rate_limited("4"), 0.0), None);
        // Without a readable retry-after, the usual backoff.
        assert_eq!(p.backoff(1, &rate_limited("soon"), 1.0), Some(100 * MS));
    }

    #[test]
    fn request_ids_are_fresh_valid_names() {
        let a = new_request_id();
        assert_ne!(a, new_request_id());
        learning_hub_domain::validate::name("request_id", &a).unwrap();
    }
}
