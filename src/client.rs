//! A Rust client for instances (and operators): connects over mutual TLS,
//! offers a typed call for every RPC, and a subscription to the insight
//! stream that reconnects by itself and resumes from the last sequence it
//! delivered, so a hub restart or a dropped connection costs no insight.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use learning_hub::client::{ClientSettings, HubClient};
//! use learning_hub::pb;
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
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Code, Request, Response, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::error::{Error, Result};
use crate::pb;
use crate::pki::CertPaths;

/// The seed's variable for the hub address.
pub const ENV_URL: &str = "LEARNING_HUB_URL";
/// The seed's variable for the instance id.
pub const ENV_INSTANCE_ID: &str = "INSTANCE_ID";
/// Where `<INSTANCE_ID>.pem`, `<INSTANCE_ID>.key` and `ca.pem` are.
pub const ENV_CERTS_DIR: &str = "LEARNING_HUB_CERTS_DIR";
/// The seed's variable for the instance's API key.
pub const ENV_API_KEY: &str = "HUB_API_KEY";

/// How to reach the hub and who to be.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// e.g. `https://localhost:3015`.
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

    /// From the seed's environment: `LEARNING_HUB_URL` (default
    /// `https://localhost:3015`), `INSTANCE_ID` (required),
    /// `HUB_API_KEY` and `LEARNING_HUB_CERTS_DIR` (default `./certs`).
    pub fn from_env() -> Result<Self> {
        let url = std::env::var(ENV_URL).unwrap_or_else(|_| "https://localhost:3015".into());
        let id = std::env::var(ENV_INSTANCE_ID)
            .map_err(|_| Error::invalid(ENV_INSTANCE_ID, "environment variable is not set"))?;
        crate::validate::name(ENV_INSTANCE_ID, &id)?;
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

/// Adds per-call metadata: the API key.
#[derive(Debug, Clone, Default)]
pub struct CallMetadata {
    headers: Vec<(&'static str, AsciiMetadataValue)>,
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        for (name, value) in &self.headers {
            request.metadata_mut().insert(*name, value.clone());
        }
        Ok(request)
    }
}

type Inner = pb::hub_client::HubClient<InterceptedService<Channel, CallMetadata>>;
/// The operators' Admin service over the same connection.
pub type AdminClient = pb::admin_client::AdminClient<InterceptedService<Channel, CallMetadata>>;

/// A connected client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct HubClient {
    inner: Inner,
    admin: AdminClient,
    instance_id: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", path.display())))
}

macro_rules! unary_calls {
    ($($(#[$doc:meta])* $method:ident($request:ty) -> $response:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $method(&self, request: $request) -> std::result::Result<$response, Status> {
                self.inner.clone().$method(request).await.map(Response::into_inner)
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
    /// (`settings.certs` is not read).
    pub async fn connect_pem(settings: &ClientSettings, pem: ClientPem) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem.ca))
            .identity(Identity::from_pem(pem.cert, pem.key));
        if let Some(domain) = &settings.domain {
            tls = tls.domain_name(domain.clone());
        }
        let unavailable = |e: tonic::transport::Error| {
            Error::Unavailable(format!("cannot connect to {}: {e} ({e:?})", settings.url))
        };
        let channel = Endpoint::from_shared(settings.url.clone())
            .map_err(|e| Error::invalid("url", e))?
            .tls_config(tls)
            .map_err(unavailable)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(unavailable)?;
        let mut metadata = CallMetadata::default();
        if let Some(key) = &settings.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| Error::invalid("api_key", "must be ASCII"))?;
            metadata.headers.push(("authorization", value));
        }
        Ok(Self::with_metadata(
            channel,
            metadata,
            settings.instance_id.clone(),
        ))
    }

    /// Wraps a plaintext channel to a hub started with `--insecure-dev`;
    /// `instance_id` travels in the header that mode reads identities from.
    pub fn insecure_dev(channel: Channel, instance_id: Option<String>) -> Self {
        let mut metadata = CallMetadata::default();
        if let Some(id) = instance_id.as_deref().and_then(|id| id.parse().ok()) {
            metadata
                .headers
                .push((crate::auth::INSECURE_IDENTITY_HEADER, id));
        }
        Self::with_metadata(channel, metadata, instance_id)
    }

    fn with_metadata(
        channel: Channel,
        metadata: CallMetadata,
        instance_id: Option<String>,
    ) -> Self {
        HubClient {
            admin: pb::admin_client::AdminClient::with_interceptor(
                channel.clone(),
                metadata.clone(),
            ),
            inner: pb::hub_client::HubClient::with_interceptor(channel, metadata)
                .max_decoding_message_size(16 * 1024 * 1024),
            instance_id,
        }
    }

    /// The instance this client acts as, if it is one.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// The generated client, for calls with custom metadata or deadlines.
    pub fn raw(&self) -> Inner {
        self.inner.clone()
    }

    /// `learninghub.v1.Admin` over the same connection (operators only).
    pub fn admin(&self) -> AdminClient {
        self.admin.clone()
    }

    unary_calls! {
        /// See `Hub.Register` in the proto.
        register(pb::RegisterRequest) -> pb::RegisterResponse;
        /// See `Hub.GetStatus`.
        get_status(pb::GetStatusRequest) -> pb::GetStatusResponse;
        /// See `Hub.ListInstances`.
        list_instances(pb::ListInstancesRequest) -> pb::ListInstancesResponse;
        /// See `Hub.SharePattern`.
        share_pattern(pb::SharePatternRequest) -> pb::SharePatternResponse;
        /// See `Hub.GetPatterns`.
        get_patterns(pb::GetPatternsRequest) -> pb::GetPatternsResponse;
        /// See `Hub.RecordPatternOutcome`.
        record_pattern_outcome(pb::RecordPatternOutcomeRequest) -> pb::RecordPatternOutcomeResponse;
        /// See `Hub.ShareStrategy`.
        share_strategy(pb::ShareStrategyRequest) -> pb::ShareStrategyResponse;
        /// See `Hub.GetStrategies`.
        get_strategies(pb::GetStrategiesRequest) -> pb::GetStrategiesResponse;
        /// See `Hub.GetOptimalCombination`.
        get_optimal_combination(pb::GetOptimalCombinationRequest) -> pb::GetOptimalCombinationResponse;
        /// See `Hub.ShareInsight`.
        share_insight(pb::ShareInsightRequest) -> pb::ShareInsightResponse;
        /// See `Hub.GetInsights`.
        get_insights(pb::GetInsightsRequest) -> pb::GetInsightsResponse;
        /// See `Hub.RecordInsightUse`.
        record_insight_use(pb::RecordInsightUseRequest) -> pb::RecordInsightUseResponse;
        /// See `Hub.ShareFailure`.
        share_failure(pb::ShareFailureRequest) -> pb::ShareFailureResponse;
        /// See `Hub.GetFailures`.
        get_failures(pb::GetFailuresRequest) -> pb::GetFailuresResponse;
        /// See `Hub.CheckAction`.
        check_action(pb::CheckActionRequest) -> pb::CheckActionResponse;
        /// See `Hub.ShareConfiguration`.
        share_configuration(pb::ShareConfigurationRequest) -> pb::ShareConfigurationResponse;
        /// See `Hub.Bootstrap`.
        bootstrap(pb::BootstrapRequest) -> pb::BootstrapResponse;
        /// See `Hub.Echo`.
        echo(pb::EchoRequest) -> pb::EchoResponse;
    }

    /// (Operators) issues an API key for `instance_id`, replacing its
    /// previous one, and returns it.
    pub async fn issue_api_key(&self, instance_id: &str) -> std::result::Result<String, Status> {
        self.admin()
            .issue_api_key(pb::IssueApiKeyRequest {
                instance_id: instance_id.to_string(),
            })
            .await
            .map(|r| r.into_inner().api_key)
    }

    /// (Operators) revokes `instance_id`'s API key.
    pub async fn revoke_api_key(&self, instance_id: &str) -> std::result::Result<(), Status> {
        self.admin()
            .revoke_api_key(pb::RevokeApiKeyRequest {
                instance_id: instance_id.to_string(),
            })
            .await
            .map(drop)
    }

    /// One `SubscribeInsights` call, without resuming: the raw stream.
    pub async fn subscribe_insights_once(
        &self,
        request: pb::SubscribeInsightsRequest,
    ) -> std::result::Result<tonic::Streaming<pb::SubscribeInsightsResponse>, Status> {
        self.inner
            .clone()
            .subscribe_insights(request)
            .await
            .map(Response::into_inner)
    }

    /// Insights with a sequence greater than `after`, forever: when the
    /// stream breaks (network, hub restart) it resubscribes with the last
    /// sequence delivered, backing off from 100 ms up to 5 s. Only errors a
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
