//! What every RPC does with its request before the hub core sees it:
//! decode, validate every field, convert to the domain's terms. Each
//! handler calls the same `convert` function its [`Inbound`] impl names
//! here, so this table is the one place that says, per RPC, which request
//! type it takes and how that is checked — and [`validate_encoded`] runs it
//! on raw bytes without a server (the fuzz targets in `fuzz/` and the
//! property tests use it).
//!
//! The caller's identity is not part of this: the auth layer has decided
//! it before a handler runs (see `auth::policy`).

use prost::Message;

use super::convert;
use crate::domain::model::UnixMillis;
use crate::error::{Error, Result};
use crate::pb;

/// A request message of the Hub, Admin or Federation service.
pub trait Inbound: Message + Default + Sized {
    /// The request's contents once validated.
    type Valid;
    /// The gRPC method path, `/learninghub.v1.Hub/Register`.
    const PATH: &'static str;
    /// Validates and converts the request exactly as its handler does.
    /// `now` is the hub's clock (time ranges default to it).
    fn validate(self, now: UnixMillis) -> Result<Self::Valid>;
}

/// Decodes `body` as `T` and validates it as its handler would. A body
/// that is not a `T` fails with INVALID_ARGUMENT on `request` (over gRPC
/// tonic refuses it before any handler runs).
pub fn decode_and_validate<T: Inbound>(body: &[u8], now: UnixMillis) -> Result<T::Valid> {
    let request = T::decode(body).map_err(|e| {
        Error::invalid(
            "request",
            format!("is not a valid message for {}: {e}", T::PATH),
        )
    })?;
    request.validate(now)
}

macro_rules! inbound {
    ($($service:literal / $method:literal: $request:ident => $valid:ty = |$req:ident, $now:pat_param| $body:expr;)*) => {
        $(
            impl Inbound for pb::$request {
                type Valid = $valid;
                const PATH: &'static str = concat!("/learninghub.v1.", $service, "/", $method);
                fn validate(self, at: UnixMillis) -> Result<$valid> {
                    let $req = self;
                    let $now = at;
                    $body
                }
            }
        )*

        /// Every method of the Hub, Admin and Federation services, with the name of its
        /// request message (`learninghub.v1.<name>`).
        pub const METHODS: &[(&str, &str)] = &[
            $((concat!("/learninghub.v1.", $service, "/", $method), stringify!($request)),)*
        ];

        /// Decodes `body` as the request of the method at `path` and
        /// validates it as the handler does. An unknown `path` is NOT_FOUND.
        pub fn validate_encoded(path: &str, body: &[u8], now: UnixMillis) -> Result<()> {
            $(
                if path == <pb::$request as Inbound>::PATH {
                    return decode_and_validate::<pb::$request>(body, now).map(drop);
                }
            )*
            Err(Error::not_found("method", path.chars().take(100).collect::<String>()))
        }
    };
}

inbound! {
    "Hub" / "Register": RegisterRequest => crate::domain::model::Registration =
        |r, _| convert::registration(r);
    "Hub" / "GetStatus": GetStatusRequest => () = |_r, _| Ok(());
    "Hub" / "ListInstances": ListInstancesRequest => convert::InstancesQuery =
        |r, _| convert::instances_query(r);
    "Hub" / "SharePattern": SharePatternRequest => crate::domain::model::PatternShare =
        |r, _| convert::pattern_share(r);
    "Hub" / "GetPatterns": GetPatternsRequest => convert::PatternsQuery =
        |r, _| convert::pattern_query(r);
    "Hub" / "RecordPatternOutcome": RecordPatternOutcomeRequest => convert::PatternOutcome =
        |r, _| convert::pattern_outcome(r);
    "Hub" / "ShareStrategy": ShareStrategyRequest => crate::domain::model::StrategyShare =
        |r, _| convert::strategy_share(r);
    "Hub" / "GetStrategies": GetStrategiesRequest => crate::hub::StrategyAsk =
        |r, _| convert::strategies_query(r);
    "Hub" / "GetOptimalCombination": GetOptimalCombinationRequest => convert::CombinationQuery =
        |r, _| convert::combination_query(&r);
    "Hub" / "ShareInsight": ShareInsightRequest => crate::domain::model::InsightDraft =
        |r, _| convert::insight_draft(r.insight);
    "Hub" / "GetInsights": GetInsightsRequest => convert::InsightsQuery =
        |r, _| convert::insights_query(r);
    "Hub" / "RecordInsightUse": RecordInsightUseRequest => String =
        |r, _| convert::required_name("insight_id", r.insight_id);
    "Hub" / "SubscribeInsights": SubscribeInsightsRequest => convert::SubscriptionQuery =
        |r, _| convert::subscription(&r);
    "Hub" / "ShareFailure": ShareFailureRequest => crate::domain::model::FailureReport =
        |r, _| convert::failure_report(r);
    "Hub" / "GetFailures": GetFailuresRequest => convert::FailuresQuery =
        |r, _| convert::failures_query(r);
    "Hub" / "CheckAction": CheckActionRequest => convert::ActionQuery =
        |r, _| convert::action_check(&r);
    "Hub" / "ShareConfiguration": ShareConfigurationRequest => crate::domain::model::ConfigShare =
        |r, _| convert::config_share(r);
    "Hub" / "Bootstrap": BootstrapRequest => crate::domain::model::Attributes =
        |r, _| convert::bootstrap_context(&r);
    "Hub" / "Echo": EchoRequest => Vec<u8> = |r, _| convert::echo_payload(r);
    "Hub" / "ShareModelUpdate": ShareModelUpdateRequest => crate::domain::federated::ModelUpdate =
        |r, _| super::models::model_update(r);
    "Hub" / "GetModel": GetModelRequest => super::models::ModelQuery =
        |r, _| super::models::model_query(r);
    "Hub" / "PredictPlateau": PredictPlateauRequest => super::models::PredictQuery =
        |r, _| super::models::predict_query(r);
    "Admin" / "GenerateInsights": GenerateInsightsRequest => () = |_r, _| Ok(());
    "Admin" / "IssueApiKey": IssueApiKeyRequest => String =
        |r, _| convert::required_name("instance_id", r.instance_id);
    "Admin" / "RevokeApiKey": RevokeApiKeyRequest => String =
        |r, _| convert::required_name("instance_id", r.instance_id);
    "Admin" / "QueryAudit": QueryAuditRequest => crate::hub::AuditQuery =
        |r, now| convert::audit_query(r, now);
    "Admin" / "ResolveFailure": ResolveFailureRequest => String =
        |r, _| convert::required_name("failure_id", r.failure_id);
    "Admin" / "InvalidateInsight": InvalidateInsightRequest => String =
        |r, _| convert::required_name("insight_id", r.insight_id);
    "Admin" / "GetReplicaStatus": GetReplicaStatusRequest => () = |_r, _| Ok(());
    "Admin" / "GetFleetKnowledge": GetFleetKnowledgeRequest => String =
        |r, _| convert::metric_filter(r.metric);
    "Admin" / "QuarantineInstance": QuarantineInstanceRequest => (String, String) =
        |r, _| convert::quarantine_request(r);
    "Admin" / "ReleaseInstance": ReleaseInstanceRequest => String =
        |r, _| convert::required_name("instance_id", r.instance_id);
    "Admin" / "ListQuarantined": ListQuarantinedRequest => () = |_r, _| Ok(());
    "Admin" / "ListAnomalies": ListAnomaliesRequest => () = |_r, _| Ok(());
    "Federation" / "Pull": PullRequest => super::federation::Held =
        |r, _| super::federation::held(r);
    "Federation" / "Wake": WakeRequest => () = |_r, _| Ok(());
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::FileDescriptorSet;

    /// The table above names every method the proto defines, each with the
    /// request type the proto gives it, and nothing else.
    #[test]
    fn every_method_of_the_proto_is_in_the_table() {
        let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut declared = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "learninghub.v1") {
            for service in &file.service {
                for method in &service.method {
                    declared.push((
                        format!("/learninghub.v1.{}/{}", service.name(), method.name()),
                        method.input_type().to_string(),
                    ));
                }
            }
        }
        let mut tabled: Vec<_> = METHODS
            .iter()
            .map(|(path, request)| (path.to_string(), format!(".learninghub.v1.{request}")))
            .collect();
        declared.sort();
        tabled.sort();
        assert_eq!(declared, tabled);
    }

    #[test]
    fn validates_from_bytes_naming_the_field() {
        let body = pb::RegisterRequest {
            instance_id: "a".into(),
            region: "no spaces".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let err = validate_encoded("/learninghub.v1.Hub/Register", &body, 0).unwrap_err();
        assert!(err.to_string().starts_with("region: "), "{err}");
        assert!(validate_encoded("/learninghub.v1.Hub/GetStatus", &[], 0).is_ok());
        let garbage = validate_encoded("/learninghub.v1.Hub/Register", &[0xff], 0).unwrap_err();
        assert!(garbage.to_string().starts_with("request: "), "{garbage}");
        assert!(matches!(
            validate_encoded("/learninghub.v1.Hub/Nope", &[], 0),
            Err(Error::NotFound { .. })
        ));
    }
}
