//! The bare streaming service: the fan-out's ceiling. It speaks the hub's
//! gRPC service (the same generated server, codec and messages) over the
//! same mutual TLS, but does nothing else: `ShareInsight` numbers the
//! insight and hands it to a broadcast channel, `SubscribeInsights` turns
//! that channel into a response stream, `GetStatus` counts open streams.
//! No store, no durable write, no authentication layer, no API keys,
//! filtering or replay. `bench --fanout N --baseline` runs it as a child
//! process (`learning-hub bench-bare-stream`, pinned like the hub) and
//! measures it with the same connections, streams and receivers as the hub,
//! so the hub's broadcast is reported as a ratio to what tonic, rustls and
//! the receivers can do at all on that machine.

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::pb::{self, hub_server::Hub};
use crate::pki;

/// Insights the broadcast holds for a slow stream before it lags (a lagged
/// stream skips, and the bench counts what it never received as missing).
const BUFFER: usize = 1024;

/// The bare service's state.
pub struct BareHub {
    sender: broadcast::Sender<Arc<pb::Insight>>,
    last_sequence: AtomicU64,
    live: Arc<AtomicU64>,
}

impl Default for BareHub {
    fn default() -> Self {
        BareHub {
            sender: broadcast::channel(BUFFER).0,
            last_sequence: AtomicU64::new(0),
            live: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Counts a stream as live while it exists.
struct Live(Arc<AtomicU64>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type InsightStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::SubscribeInsightsResponse, Status>> + Send>>;

fn not_here(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc}: the bare streaming service only broadcasts"))
}

/// The service: the three RPCs the bench uses, and UNIMPLEMENTED for the
/// rest (listed, as the generated trait asks for all; a macro because
/// `async_trait` must see the methods expanded).
macro_rules! bare_hub {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl Hub for BareHub {
            type SubscribeInsightsStream = InsightStream;

            async fn subscribe_insights(
                &self,
                _: Request<pb::SubscribeInsightsRequest>,
            ) -> std::result::Result<Response<InsightStream>, Status> {
                self.live.fetch_add(1, Ordering::Relaxed);
                let live = Live(self.live.clone());
                let stream = BroadcastStream::new(self.sender.subscribe()).filter_map(move |item| {
                    let _live = &live;
                    item.ok().map(|insight| {
                        Ok(pb::SubscribeInsightsResponse {
                            insight: Some(insight.as_ref().clone()),
                        })
                    })
                });
                Ok(Response::new(Box::pin(stream)))
            }

            async fn share_insight(
                &self,
                request: Request<pb::ShareInsightRequest>,
            ) -> std::result::Result<Response<pb::ShareInsightResponse>, Status> {
                let mut insight = request
                    .into_inner()
                    .insight
                    .ok_or_else(|| Status::invalid_argument("insight: required"))?;
                insight.sequence = self.last_sequence.fetch_add(1, Ordering::Relaxed) + 1;
                // What the hub adds to a published insight, so the bare
                // service broadcasts messages of the same size (the report
                // shows both sizes).
                insight.id = format!("insight_{}", uuid::Uuid::new_v4().simple());
                insight.evidence.get_or_insert_with(Default::default);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let at = |seconds: u64| prost_types::Timestamp {
                    seconds: seconds as i64,
                    nanos: now.subsec_nanos() as i32,
                };
                insight.created_at = Some(at(now.as_secs()));
                insight.valid_until = Some(at(now.as_secs() + 30 * 24 * 3600));
                // No receiver is not an error here: the bench subscribes first.
                let _ = self.sender.send(Arc::new(insight.clone()));
                Ok(Response::new(pb::ShareInsightResponse {
                    insight: Some(insight),
                    ..Default::default()
                }))
            }

            async fn get_status(
                &self,
                _: Request<pb::GetStatusRequest>,
            ) -> std::result::Result<Response<pb::GetStatusResponse>, Status> {
                Ok(Response::new(pb::GetStatusResponse {
                    live_subscribers: self.live.load(Ordering::Relaxed),
                    last_insight_sequence: self.last_sequence.load(Ordering::Relaxed),
                    ..Default::default()
                }))
            }

            $(
                async fn $method(
                    &self,
                    _: Request<pb::$request>,
                ) -> std::result::Result<Response<pb::$response>, Status> {
                    Err(not_here(stringify!($method)))
                }
            )*
        }
    };
}

bare_hub! {
    register(RegisterRequest) -> RegisterResponse;
    list_instances(ListInstancesRequest) -> ListInstancesResponse;
    share_pattern(SharePatternRequest) -> SharePatternResponse;
    get_patterns(GetPatternsRequest) -> GetPatternsResponse;
    record_pattern_outcome(RecordPatternOutcomeRequest) -> RecordPatternOutcomeResponse;
    share_strategy(ShareStrategyRequest) -> ShareStrategyResponse;
    get_strategies(GetStrategiesRequest) -> GetStrategiesResponse;
    get_optimal_combination(GetOptimalCombinationRequest) -> GetOptimalCombinationResponse;
    get_insights(GetInsightsRequest) -> GetInsightsResponse;
    record_insight_use(RecordInsightUseRequest) -> RecordInsightUseResponse;
    share_failure(ShareFailureRequest) -> ShareFailureResponse;
    get_failures(GetFailuresRequest) -> GetFailuresResponse;
    check_action(CheckActionRequest) -> CheckActionResponse;
    share_configuration(ShareConfigurationRequest) -> ShareConfigurationResponse;
    bootstrap(BootstrapRequest) -> BootstrapResponse;
    echo(EchoRequest) -> EchoResponse;
    share_model_update(ShareModelUpdateRequest) -> ShareModelUpdateResponse;
    get_model(GetModelRequest) -> GetModelResponse;
    predict_plateau(PredictPlateauRequest) -> PredictPlateauResponse;
}

/// Serves the bare service on `listen` with the server certificate of
/// `certs_dir`, requiring client certificates from its CA, until
/// `shutdown` completes. Prints `learning-hub listening on <addr>` once
/// bound (what the bench waits for, as with `serve`).
pub async fn serve(
    listen: SocketAddr,
    certs_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let read = |name: &str| {
        std::fs::read(certs_dir.join(name)).map_err(|e| {
            Error::Unavailable(format!(
                "cannot read {}: {e}",
                certs_dir.join(name).display()
            ))
        })
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(pki::SERVER_CERT)?,
            read(pki::SERVER_KEY)?,
        ))
        .client_ca_root(Certificate::from_pem(read(pki::CA_CERT)?));
    let incoming = TcpIncoming::bind(listen)
        .map_err(|e| Error::Unavailable(format!("cannot listen on {listen}: {e}")))?
        // As the hub does: without it small messages wait for Nagle.
        .with_nodelay(Some(true));
    let addr = incoming
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("cannot read the bound address: {e}")))?;
    println!("learning-hub listening on {addr}");
    Server::builder()
        // The hub's default (`limits.max_concurrent_streams`): the bench
        // puts up to 1000 streams on one connection.
        .max_concurrent_streams(1024)
        .tls_config(tls)
        .map_err(|e| Error::Unavailable(format!("TLS: {e}")))?
        .add_service(pb::hub_server::HubServer::new(BareHub::default()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("the bare service stopped: {e}")))
}
