//! The gRPC face of the hub: one thin handler per RPC. Each handler takes
//! the caller's identity (put there by the auth layer), validates and
//! converts the request ([`convert`]; a write's `request_id` is taken out
//! and the rest fingerprinted, see [`convert::request_tag`]), calls the hub
//! core, and converts the answer back. Errors become a `tonic::Status` through the crate's single
//! `From<Error> for Status`.

mod admin;
mod exchanged;
pub mod federation;
pub use learning_hub_proto::codec;
pub mod convert;
pub mod inbound;
pub mod models;
pub mod quota;
pub mod visibility;

pub use admin::AdminService;
pub use federation::FederationService;

use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Identity;
use crate::compute::ComputePool;
use crate::error::{Error, Result};
use crate::hub::{Hub, StrategyAsk};
use crate::pb;

/// Implements `learninghub.v1.Hub` over a [`Hub`].
#[derive(Clone)]
pub struct HubService {
    hub: Arc<Hub>,
    compute: Arc<ComputePool>,
    streams: Arc<quota::StreamQuota>,
}

impl HubService {
    /// Queries run on `compute`; everything else on the caller's task.
    /// Each identity may hold the default number of insight streams
    /// ([`crate::config::Limits::max_streams_per_identity`]).
    pub fn new(hub: Arc<Hub>, compute: Arc<ComputePool>) -> Self {
        let streams =
            quota::StreamQuota::new(crate::config::Limits::default().max_streams_per_identity);
        HubService {
            hub,
            compute,
            streams,
        }
    }

    /// At most `max` open insight streams per identity.
    pub fn with_stream_limit(mut self, max: usize) -> Self {
        self.streams = quota::StreamQuota::new(max);
        self
    }

    /// Runs a query's CPU-bound part on the compute pool, off the threads
    /// that read and refuse requests (see [`crate::compute`]).
    async fn query<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Hub) -> T + Send + 'static,
    {
        let hub = self.hub.clone();
        self.compute.run(move || work(&hub)).await
    }

    /// The generated tonic server, with the hub's message size limit.
    pub fn into_server(self, max_message_bytes: usize) -> pb::hub_server::HubServer<Self> {
        pb::hub_server::HubServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

/// The authenticated caller.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<&Identity> {
    request
        .extensions()
        .get::<Identity>()
        .ok_or_else(|| Error::Unauthenticated("no authenticated identity".into()))
}

/// The calling instance's id (the policy already refused non-instances).
fn calling_instance<T>(request: &Request<T>) -> Result<String> {
    let identity = caller(request)?;
    identity
        .instance_id()
        .map(str::to_string)
        .ok_or_else(|| Error::PermissionDenied(format!("{identity} is not an instance")))
}

pub(crate) type Reply<T> = std::result::Result<Response<T>, Status>;

pub(crate) fn reply<T>(message: T) -> Reply<T> {
    Ok(Response::new(message))
}

/// The API key a call presented (to tie an insight stream to it).
fn presented_key<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::keys::bearer)
        .map(str::to_string)
}

#[tonic::async_trait]
impl pb::hub_server::Hub for HubService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let caller = calling_instance(&request)?;
        let registration = convert::registration(request.into_inner())?;
        let (instance, newly_registered, bootstrap) =
            self.hub.register(&caller, registration).await?;
        reply(pb::RegisterResponse {
            instance: Some(convert::instance(&instance)),
            bootstrap: Some(convert::bootstrap(&bootstrap)),
            newly_registered,
        })
    }

    async fn echo(&self, request: Request<pb::EchoRequest>) -> Reply<pb::EchoResponse> {
        let payload = convert::echo_payload(request.into_inner())?;
        reply(pb::EchoResponse { payload })
    }

    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Reply<pb::GetStatusResponse> {
        reply(convert::status(&self.hub.status()))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Reply<pb::ListInstancesResponse> {
        let viewer = caller(&request)?.clone();
        let q = convert::instances_query(request.into_inner())?;
        let page = match viewer.instance_id() {
            // An instance sees the fleet's counts and only its own record.
            Some(own) => self.hub.own_listing(own),
            None => self
                .hub
                .list_instances(q.region.as_deref(), q.after.as_deref(), q.limit),
        };
        reply(visibility::instance_listing(
            &viewer,
            convert::instance_page(page),
        ))
    }

    async fn share_pattern(
        &self,
        request: Request<pb::SharePatternRequest>,
    ) -> Reply<pb::SharePatternResponse> {
        let viewer = caller(&request)?.clone();
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let share = convert::pattern_share(req)?;
        let (pattern, new_pattern) = self.hub.share_pattern(&caller, share, once).await?;
        let message = pb::SharePatternResponse {
            pattern: Some(convert::pattern(&pattern)),
            new_pattern,
        };
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn get_patterns(
        &self,
        request: Request<pb::GetPatternsRequest>,
    ) -> Reply<pb::GetPatternsResponse> {
        let viewer = caller(&request)?.clone();
        let q = convert::pattern_query(request.into_inner())?;
        let asker = viewer.clone();
        let message = self
            .query(move |hub| {
                let matches = hub.get_patterns(
                    Some(&asker),
                    &q.metrics,
                    &q.environment,
                    q.target_metric.as_deref(),
                    &q.recent,
                    q.limit,
                );
                pb::GetPatternsResponse {
                    matches: matches.iter().map(convert::pattern_match).collect(),
                }
            })
            .await?;
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn record_pattern_outcome(
        &self,
        request: Request<pb::RecordPatternOutcomeRequest>,
    ) -> Reply<pb::RecordPatternOutcomeResponse> {
        let viewer = caller(&request)?.clone();
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let o = convert::pattern_outcome(req)?;
        let pattern = self
            .hub
            .record_pattern_outcome(
                &caller,
                o.pattern_id,
                o.success,
                o.metric,
                o.strategy,
                o.similarity,
                once,
            )
            .await?;
        let message = pb::RecordPatternOutcomeResponse {
            pattern: Some(convert::pattern(&pattern)),
        };
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn share_strategy(
        &self,
        request: Request<pb::ShareStrategyRequest>,
    ) -> Reply<pb::ShareStrategyResponse> {
        let viewer = caller(&request)?.clone();
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        // Not part of the write (nor of its fingerprint): checked first, so
        // a bad trajectory writes nothing.
        let trajectory = std::mem::take(&mut req.trajectory);
        let trajectory = (!trajectory.is_empty())
            .then(|| models::trajectory("trajectory", req.metric.clone(), trajectory))
            .transpose()?;
        let once = convert::request_tag(&mut req)?;
        let share = convert::strategy_share(req)?;
        let context = share.context.clone();
        let (outcome_sequence, record) = self.hub.share_strategy(&caller, share, once).await?;
        let plateau = match trajectory {
            Some(trajectory) => {
                let me = caller.clone();
                self.query(move |hub| {
                    hub.predict_plateau(Some(&me), &[trajectory], context)
                        .map(|p| p.predictions.first().map(models::prediction))
                })
                .await??
            }
            None => None,
        };
        let message = pb::ShareStrategyResponse {
            outcome_sequence,
            record: Some(convert::strategy_record(&record)),
            plateau,
        };
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn get_strategies(
        &self,
        request: Request<pb::GetStrategiesRequest>,
    ) -> Reply<pb::GetStrategiesResponse> {
        let viewer = caller(&request)?.clone();
        let ask = StrategyAsk {
            caller: Some(viewer),
            ..convert::strategies_query(request.into_inner())?
        };
        let message = self
            .query(move |hub| pb::GetStrategiesResponse {
                recommendations: hub
                    .get_strategies(&ask)
                    .iter()
                    .map(convert::recommendation)
                    .collect(),
            })
            .await?;
        reply(message)
    }

    async fn get_optimal_combination(
        &self,
        request: Request<pb::GetOptimalCombinationRequest>,
    ) -> Reply<pb::GetOptimalCombinationResponse> {
        let viewer = caller(&request)?.clone();
        let q = convert::combination_query(request.get_ref())?;
        let message = self
            .query(move |hub| {
                let (combination, conflicts) = hub.optimal_combination(
                    Some(&viewer),
                    &q.metrics,
                    &q.context,
                    q.budget,
                    q.costs,
                    &q.recent,
                );
                convert::combination(&combination, &conflicts)
            })
            .await?;
        reply(message)
    }

    async fn share_insight(
        &self,
        request: Request<pb::ShareInsightRequest>,
    ) -> Reply<pb::ShareInsightResponse> {
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let draft = convert::insight_draft(req.insight)?;
        let (insight, duplicate) = self.hub.share_insight(&caller, draft, once).await?;
        reply(pb::ShareInsightResponse {
            insight: Some(convert::insight(&insight)),
            duplicate,
        })
    }

    async fn get_insights(
        &self,
        request: Request<pb::GetInsightsRequest>,
    ) -> Reply<pb::GetInsightsResponse> {
        let q = convert::insights_query(request.into_inner())?;
        let insights = self
            .hub
            .get_insights(q.category, q.context.as_deref(), q.limit);
        reply(pb::GetInsightsResponse {
            insights: insights.iter().map(|i| convert::insight(i)).collect(),
        })
    }

    async fn record_insight_use(
        &self,
        request: Request<pb::RecordInsightUseRequest>,
    ) -> Reply<pb::RecordInsightUseResponse> {
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let id = convert::required_name("insight_id", req.insight_id)?;
        let insight = self.hub.record_insight_use(&caller, id, once).await?;
        reply(pb::RecordInsightUseResponse {
            insight: Some(convert::insight(&insight)),
        })
    }

    type SubscribeInsightsStream = Pin<
        Box<dyn Stream<Item = std::result::Result<pb::SubscribeInsightsResponse, Status>> + Send>,
    >;

    async fn subscribe_insights(
        &self,
        request: Request<pb::SubscribeInsightsRequest>,
    ) -> Reply<Self::SubscribeInsightsStream> {
        // An instance's stream lives only as long as the key it was opened
        // with stays valid.
        let subscriber = caller(&request)?;
        let holder = subscriber
            .instance_id()
            .map(|id| (id.to_string(), presented_key(&request)));
        let q = convert::subscription(request.get_ref())?;
        let slot = self.streams.open(subscriber)?;
        let insights = self
            .hub
            .subscribe_insights(q.after_sequence, q.category, holder)?;
        let stream = insights.map(move |item| {
            // The stream's place is held as long as the stream.
            let _open = &slot;
            match item {
                Ok(insight) => Ok(pb::SubscribeInsightsResponse {
                    insight: Some(convert::insight(&insight)),
                }),
                Err(e) => Err(Status::from(e)),
            }
        });
        reply(Box::pin(stream))
    }

    async fn share_failure(
        &self,
        request: Request<pb::ShareFailureRequest>,
    ) -> Reply<pb::ShareFailureResponse> {
        let viewer = caller(&request)?.clone();
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let report = convert::failure_report(req)?;
        let failure = self.hub.share_failure(&caller, report, once).await?;
        let plan = self
            .hub
            .recovery_plan(Some(&viewer), failure.failure_type, &failure.metric);
        let message = pb::ShareFailureResponse {
            failure: Some(convert::failure(&failure)),
            plan: Some(convert::recovery_plan(&plan)),
        };
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn get_failures(
        &self,
        request: Request<pb::GetFailuresRequest>,
    ) -> Reply<pb::GetFailuresResponse> {
        let viewer = caller(&request)?.clone();
        let asker = viewer.clone();
        let q = convert::failures_query(request.into_inner())?;
        let message = self
            .query(move |hub| {
                let failures = hub.get_failures(
                    Some(&asker),
                    q.failure_type,
                    q.metric.as_deref(),
                    q.strategy.as_deref(),
                    q.include_resolved,
                    q.limit,
                );
                pb::GetFailuresResponse {
                    failures: failures.iter().map(|f| convert::failure(f)).collect(),
                }
            })
            .await?;
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn check_action(
        &self,
        request: Request<pb::CheckActionRequest>,
    ) -> Reply<pb::CheckActionResponse> {
        let viewer = caller(&request)?.clone();
        let q = convert::action_check(request.get_ref())?;
        let pb::CheckActionRequest {
            strategy, metric, ..
        } = request.into_inner();
        let asker = viewer.clone();
        let message = self
            .query(move |hub| {
                let check = hub.check_action(
                    Some(&asker),
                    &strategy,
                    &metric,
                    &q.metrics,
                    &q.recent,
                    &q.context,
                );
                convert::action_check_reply(&check)
            })
            .await?;
        reply(visibility::for_viewer(&viewer, message))
    }

    async fn share_configuration(
        &self,
        request: Request<pb::ShareConfigurationRequest>,
    ) -> Reply<pb::ShareConfigurationResponse> {
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let share = convert::config_share(req)?;
        let configuration = self.hub.share_configuration(&caller, share, once).await?;
        reply(pb::ShareConfigurationResponse {
            configuration: Some(convert::configuration(&configuration)),
        })
    }

    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Reply<pb::BootstrapResponse> {
        let caller = caller(&request)?.instance_id().map(str::to_string);
        let context = convert::bootstrap_context(request.get_ref())?;
        let message = self
            .query(move |hub| pb::BootstrapResponse {
                config: Some(convert::bootstrap(
                    &hub.bootstrap(caller.as_deref(), context),
                )),
            })
            .await?;
        reply(message)
    }

    async fn share_model_update(
        &self,
        request: Request<pb::ShareModelUpdateRequest>,
    ) -> Reply<pb::ShareModelUpdateResponse> {
        let caller = calling_instance(&request)?;
        let mut req = request.into_inner();
        let once = convert::request_tag(&mut req)?;
        let update = models::model_update(req)?;
        let receipt = self.hub.share_model_update(&caller, update, once).await?;
        reply(models::update_receipt(&receipt))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Reply<pb::GetModelResponse> {
        let caller = caller(&request)?.instance_id().map(str::to_string);
        let q = models::model_query(request.into_inner())?;
        let message = self
            .query(move |hub| {
                hub.model(caller.as_deref(), &q.model, q.context_model)
                    .map(|view| models::model_reply(&view, q.known_version))
            })
            .await??;
        reply(message)
    }

    async fn predict_plateau(
        &self,
        request: Request<pb::PredictPlateauRequest>,
    ) -> Reply<pb::PredictPlateauResponse> {
        let caller = caller(&request)?.instance_id().map(str::to_string);
        let q = models::predict_query(request.into_inner())?;
        let message = self
            .query(move |hub| {
                hub.predict_plateau(caller.as_deref(), &q.trajectories, q.context)
                    .map(|p| models::predictions(&p))
            })
            .await??;
        reply(message)
    }
}
