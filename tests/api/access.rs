//! Access control and data governance end to end over mTLS: the
//! authorization matrix (each RPC × role × key state), anonymized views,
//! rate limits exact at the boundary, key revocation ending live streams,
//! the audit log, operator actions, and retention under clock jumps.

use crate::common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use common::*;
use learning_hub::{
    auth::Identity,
    client::{ClientSettings, HubClient, RetryPolicy},
    clock::ManualClock,
    pb,
};
use tokio_stream::StreamExt;
use tonic::Code;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const EPOCH: i64 = 1_762_214_400_000;

/// How a call's access is classified by the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    /// Instances only (they add to the fleet's knowledge).
    Write,
    /// Instances and operators.
    Read,
    /// Operators only.
    Admin,
}

/// Calls one RPC with a valid request; returns the status code.
async fn call(client: &HubClient, rpc: &str, own_id: &str) -> Code {
    let outcome = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let metrics = BTreeMap::from([("lv".to_string(), metric(0.5, true))]);
    match rpc {
        "Register" => outcome(
            client
                .register(pb::RegisterRequest {
                    instance_id: own_id.into(),
                    region: "r".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "GetStatus" => outcome(client.get_status(pb::GetStatusRequest {}).await.map(drop)),
        "ListInstances" => outcome(client.list_instances(Default::default()).await.map(drop)),
        "SharePattern" => outcome(
            client
                .share_pattern(pb::SharePatternRequest {
                    metrics: metrics.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "GetPatterns" => outcome(
            client
                .get_patterns(pb::GetPatternsRequest {
                    metrics: metrics.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "ShareStrategy" => outcome(
            client
                .share_strategy(strategy_outcome("s", "lv", true, 0.1))
                .await
                .map(drop),
        ),
        "GetStrategies" => outcome(
            client
                .get_strategies(pb::GetStrategiesRequest {
                    metric: "lv".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "ShareInsight" => outcome(client.share_insight(insight("matrix")).await.map(drop)),
        "GetInsights" => outcome(client.get_insights(Default::default()).await.map(drop)),
        "SubscribeInsights" => outcome(
            client
                .subscribe_insights_once(Default::default())
                .await
                .map(drop),
        ),
        "ShareFailure" => outcome(
            client
                .share_failure(pb::ShareFailureRequest {
                    failure_type: pb::FailureType::Deadlock as i32,
                    trigger: "stuck".into(),
                    context: Some(pb::FailureContext {
                        metric: "lv".into(),
                        strategy: String::new(),
                    }),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "GetFailures" => outcome(client.get_failures(Default::default()).await.map(drop)),
        "CheckAction" => outcome(
            client
                .check_action(pb::CheckActionRequest {
                    strategy: "s".into(),
                    metric: "lv".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "Bootstrap" => outcome(client.bootstrap(Default::default()).await.map(drop)),
        "QueryAudit" => outcome(
            client
                .admin()
                .query_audit(pb::QueryAuditRequest::default())
                .await
                .map(drop),
        ),
        "GenerateInsights" => outcome(
            client
                .admin()
                .generate_insights(pb::GenerateInsightsRequest {})
                .await
                .map(drop),
        ),
        other => panic!("no call for {other}"),
    }
}

const MATRIX: [(&str, Access); 16] = [
    ("Register", Access::Write),
    ("GetStatus", Access::Read),
    ("ListInstances", Access::Read),
    ("SharePattern", Access::Write),
    ("GetPatterns", Access::Read),
    ("ShareStrategy", Access::Write),
    ("GetStrategies", Access::Read),
    ("ShareInsight", Access::Write),
    ("GetInsights", Access::Read),
    ("SubscribeInsights", Access::Read),
    ("ShareFailure", Access::Write),
    ("GetFailures", Access::Read),
    ("CheckAction", Access::Read),
    ("Bootstrap", Access::Read),
    ("QueryAudit", Access::Admin),
    ("GenerateInsights", Access::Admin),
];

async fn client_with_key(hub: &TestHub, id: &str, key: Option<String>) -> HubClient {
    let mut settings = hub.settings(&Identity::instance(id));
    settings.api_key = key;
    HubClient::connect(&settings).await.unwrap()
}

#[tokio::test]
async fn authorization_matrix() {
    let hub = TestHub::start().await;
    // "a" is registered with a valid key; "b" exists too (its key is used
    // by "a" below); "c"'s key gets revoked.
    let a = hub.registered("a").await;
    hub.registered("b").await;
    hub.registered("c").await;
    let b_key = hub.api_key("b").await;
    let c_key = hub.api_key("c").await;
    let operator = hub.operator().await;
    operator.revoke_api_key("c").await.unwrap();
    hub.forget_key("c");

    let missing = client_with_key(&hub, "a", None).await;
    let foreign = client_with_key(&hub, "a", Some(b_key)).await;
    let wrong = client_with_key(&hub, "a", Some("lhk_0000".into())).await;
    let revoked = client_with_key(&hub, "c", Some(c_key)).await;

    let mut failures = Vec::new();
    for (rpc, access) in MATRIX {
        let expectations = [
            (
                "instance with its key",
                &a,
                "a",
                match access {
                    Access::Admin => Code::PermissionDenied,
                    _ => Code::Ok,
                },
            ),
            (
                "instance without a key",
                &missing,
                "a",
                Code::Unauthenticated,
            ),
            (
                "instance with another instance's key",
                &foreign,
                "a",
                Code::Unauthenticated,
            ),
            (
                "instance with a made-up key",
                &wrong,
                "a",
                Code::Unauthenticated,
            ),
            (
                "instance with a revoked key",
                &revoked,
                "c",
                Code::Unauthenticated,
            ),
            (
                "operator",
                &operator,
                "a",
                match access {
                    Access::Write => Code::PermissionDenied,
                    _ => Code::Ok,
                },
            ),
        ];
        for (who, client, own, expected) in expectations {
            let got = call(client, rpc, own).await;
            if got != expected {
                failures.push(format!(
                    "{rpc} as {who}: expected {expected:?}, got {got:?}"
                ));
            }
        }
    }
    // Another instance's record: registering under another id is refused.
    let other = a
        .register(pb::RegisterRequest {
            instance_id: "b".into(),
            region: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    if other.code() != Code::PermissionDenied {
        failures.push(format!("Register as another instance: {other:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Health and reflection stay open to any authenticated peer, key or not.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(hub.operator_channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn instances_see_aggregates_not_each_other() {
    let hub = TestHub::start().await;
    let a = hub.client("a").await;
    a.register(pb::RegisterRequest {
        instance_id: "a".into(),
        region: "us".into(),
        context: BTreeMap::from([("secret".into(), "a-config".into())]),
        ..Default::default()
    })
    .await
    .unwrap();
    let b = hub.registered("b").await;
    let metrics = BTreeMap::from([("lv".to_string(), metric(0.5, true))]);
    a.share_pattern(pb::SharePatternRequest {
        metrics: metrics.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    a.share_failure(pb::ShareFailureRequest {
        failure_type: pb::FailureType::Deadlock as i32,
        trigger: "stuck".into(),
        context: Some(pb::FailureContext {
            metric: "lv".into(),
            strategy: "s".into(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    let listing = b.list_instances(Default::default()).await.unwrap();
    assert_eq!(listing.total, 2);
    assert_eq!(listing.instances_by_region["us"], 1);
    assert_eq!(listing.instances.len(), 1, "only its own record");
    assert_eq!(listing.instances[0].instance_id, "b");

    let patterns = b
        .get_patterns(pb::GetPatternsRequest {
            metrics,
            ..Default::default()
        })
        .await
        .unwrap();
    let pattern = patterns.matches[0].pattern.as_ref().unwrap();
    assert!(pattern.instances.is_empty());
    assert_eq!(pattern.instance_count, 1);
    let failures = b.get_failures(Default::default()).await.unwrap().failures;
    assert!(failures[0].instances.is_empty());
    assert_eq!(failures[0].instance_count, 1);
    let check = b
        .check_action(pb::CheckActionRequest {
            strategy: "s".into(),
            metric: "lv".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        check.warnings[0]
            .failure
            .as_ref()
            .unwrap()
            .instances
            .is_empty()
    );

    // The operator sees everything.
    let op = hub.operator().await;
    let all = op.list_instances(Default::default()).await.unwrap();
    assert_eq!(all.instances.len(), 2);
    assert_eq!(all.instances[0].context["secret"], "a-config");
    let failures = op.get_failures(Default::default()).await.unwrap().failures;
    assert_eq!(failures[0].instances, ["a"]);
}

#[tokio::test]
async fn the_1001st_call_in_an_hour_is_refused() {
    let clock = ManualClock::new(EPOCH);
    let hub = TestHub::start_with_clock(Arc::new(clock.clone()), |_| {}).await;
    // Register: 1 call. The refusals are the hub's, as they are: the
    // client does not retry them.
    let a = hub
        .registered("a")
        .await
        .with_retry_policy(RetryPolicy::none());
    let b = hub.registered("b").await;
    for i in 1..1000 {
        a.get_status(pb::GetStatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("call {} refused: {e:?}", i + 1));
    }
    let refused = a.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "4");
    // Others are unaffected; streams count once, at open.
    b.get_status(pb::GetStatusRequest {}).await.unwrap();
    // One token refills every 3.6 s.
    clock.advance(3_599);
    assert_eq!(
        a.get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
    clock.advance(1);
    a.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(
        a.get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn revocation_ends_a_live_stream_and_refuses_calls() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let mut stream = a.subscribe_insights_once(Default::default()).await.unwrap();
    let op = hub.operator().await;
    op.revoke_api_key("a").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends within seconds")
        .expect("with a status")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
    assert!(ended.message().contains("revoked"));
    assert_eq!(
        a.get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // A new key works again; revoking twice says there is nothing to revoke.
    hub.forget_key("a");
    hub.client("a")
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    op.revoke_api_key("a").await.unwrap();
    assert_eq!(
        op.revoke_api_key("a").await.unwrap_err().code(),
        Code::NotFound
    );
    // Another instance's stream was never affected by a's revocation.
}

#[tokio::test]
async fn every_call_is_audited_allowed_and_denied() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    a.share_strategy(strategy_outcome("s", "lv", true, 0.1))
        .await
        .unwrap();
    let denied = a
        .admin()
        .query_audit(pb::QueryAuditRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let op = hub.operator().await;
    // Entries are appended without blocking calls; give the group commit a moment.
    let mut entries = Vec::new();
    for _ in 0..50 {
        entries = op
            .admin()
            .query_audit(pb::QueryAuditRequest {
                caller: "a".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        if entries.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let find = |rpc: &str| {
        entries
            .iter()
            .find(|e| e.rpc.ends_with(rpc))
            .unwrap_or_else(|| panic!("{rpc} not audited: {entries:?}"))
    };
    let share = find("/ShareStrategy");
    assert_eq!((share.code, share.role.as_str()), (0, "instance"));
    assert!(share.request_bytes > 0);
    assert!(share.at.is_some());
    let refused = find("/QueryAudit");
    assert_eq!(refused.code, Code::PermissionDenied as i32);
    assert!(
        entries.windows(2).all(|w| w[0].sequence > w[1].sequence),
        "newest first"
    );
    // Filters by method.
    let registers = op
        .admin()
        .query_audit(pb::QueryAuditRequest {
            rpc: "Register".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(registers.len(), 1);
    assert_eq!(registers[0].caller, "a");
    // A call refused before any identity was known is audited too.
    let mut anonymous = hub.settings(&Identity::instance("a"));
    anonymous.api_key = None;
    let no_key = HubClient::connect(&anonymous).await.unwrap();
    let _ = no_key.get_status(pb::GetStatusRequest {}).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let unauthenticated = op
        .admin()
        .query_audit(pb::QueryAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        unauthenticated
            .iter()
            .any(|e| e.code == Code::Unauthenticated as i32 && e.caller == "a")
    );
    // Health checks (and reflection) are audited, and left out on request.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(hub.operator_channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let audited = |hub_calls_only| {
        let op = op.clone();
        async move {
            op.admin()
                .query_audit(pb::QueryAuditRequest {
                    hub_calls_only,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
        }
    };
    let is_health = |e: &pb::AuditEntry| e.rpc.starts_with("/grpc.health.");
    for _ in 0..50 {
        if audited(false).await.iter().any(is_health) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(audited(false).await.iter().any(is_health));
    let hub_calls = audited(true).await;
    assert!(!hub_calls.iter().any(is_health), "{hub_calls:?}");
    assert!(hub_calls.iter().any(|e| e.rpc.ends_with("/ShareStrategy")));
}

#[tokio::test]
async fn operators_resolve_failures_and_invalidate_insights() {
    let hub = TestHub::start().await;
    let a = hub.registered("a").await;
    let failure = a
        .share_failure(pb::ShareFailureRequest {
            failure_type: pb::FailureType::MetricReversal as i32,
            trigger: "lv dropped".into(),
            context: Some(pb::FailureContext {
                metric: "lv".into(),
                strategy: "s".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .failure
        .unwrap();
    let check = || pb::CheckActionRequest {
        strategy: "s".into(),
        metric: "lv".into(),
        ..Default::default()
    };
    assert!(!a.check_action(check()).await.unwrap().safe);
    let op = hub.operator().await;
    let resolved = op
        .admin()
        .resolve_failure(pb::ResolveFailureRequest {
            failure_id: failure.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .failure
        .unwrap();
    assert!(resolved.resolved);
    assert!(a.check_action(check()).await.unwrap().safe);
    assert!(
        a.get_failures(Default::default())
            .await
            .unwrap()
            .failures
            .is_empty()
    );
    let kept = a
        .get_failures(pb::GetFailuresRequest {
            include_resolved: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .failures;
    assert_eq!(kept.len(), 1, "kept indefinitely");

    let shared = a
        .share_insight(insight("soon wrong"))
        .await
        .unwrap()
        .insight
        .unwrap();
    op.admin()
        .invalidate_insight(pb::InvalidateInsightRequest {
            insight_id: shared.id.clone(),
        })
        .await
        .unwrap();
    assert!(
        a.get_insights(Default::default())
            .await
            .unwrap()
            .insights
            .is_empty()
    );
    let mut replay = a.subscribe_insights_once(Default::default()).await.unwrap();
    let another = a
        .share_insight(insight("still right"))
        .await
        .unwrap()
        .insight
        .unwrap();
    let first = replay.next().await.unwrap().unwrap().insight.unwrap();
    assert_eq!(
        first.sequence, another.sequence,
        "the invalidated one is not replayed"
    );
    assert_eq!(
        op.admin()
            .invalidate_insight(pb::InvalidateInsightRequest {
                insight_id: shared.id,
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn retention_under_clock_jumps() {
    let clock = ManualClock::new(EPOCH);
    let hub = TestHub::start_with_clock(Arc::new(clock.clone()), |c| {
        c.retention_interval = Some(Duration::from_millis(50));
        c.insight_interval = None;
    })
    .await;
    let a = hub.registered("a").await;
    let once = BTreeMap::from([("once".to_string(), metric(0.5, true))]);
    let often = BTreeMap::from([("often".to_string(), metric(0.5, true))]);
    for _ in 0..5 {
        a.share_pattern(pb::SharePatternRequest {
            metrics: often.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    a.share_pattern(pb::SharePatternRequest {
        metrics: once.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let used = a
        .share_insight(insight("used"))
        .await
        .unwrap()
        .insight
        .unwrap();
    a.share_insight(insight("unused")).await.unwrap();
    let op = hub.operator().await;
    let patterns = || async {
        op.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .patterns
    };
    let sweep = || tokio::time::sleep(Duration::from_millis(300));
    // What a sweep should remove is waited for (a loaded test run can
    // take longer than one sweep); what it must keep is checked after one.
    let patterns_become = |n: u64| {
        let patterns = &patterns;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while patterns().await != n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            patterns().await
        }
    };

    // The clock jumps back a day: nothing is deleted.
    clock.advance(-DAY_MS);
    sweep().await;
    assert_eq!(patterns().await, 2);
    // Five days on, an insight in use gets extended.
    clock.advance(6 * DAY_MS);
    a.record_insight_use(pb::RecordInsightUseRequest {
        insight_id: used.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    sweep().await;
    assert_eq!(patterns().await, 2, "5 days idle: all kept");
    // Eight days after sharing: the unconfirmed pattern and the unused
    // insight have expired; the confirmed pattern and the used insight stay.
    clock.advance(3 * DAY_MS);
    assert_eq!(patterns_become(1).await, 1);
    assert_eq!(crate::common::insight_titles(&a, 0).await, ["used"]);
    // Thirty-one days idle: the confirmed one goes too.
    clock.advance(23 * DAY_MS);
    assert_eq!(patterns_become(0).await, 0);
    // A clock jumping far back afterwards restores nothing and deletes nothing more.
    clock.advance(-60 * DAY_MS);
    sweep().await;
    assert_eq!(patterns().await, 0);
}

#[tokio::test]
async fn admin_cli_issues_and_revokes_keys_against_a_running_hub() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    learning_hub::pki::generate_dev_pki(certs.path()).unwrap();
    learning_hub::pki::issue(certs.path(), &Identity::instance("cli-1"), false).unwrap();
    let hub = HubProcess::spawn(data.path(), certs.path(), 0);
    let admin = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_learning-hub"))
            .arg("admin")
            .args(args)
            .arg("--hub")
            .arg(format!("https://{}", hub.addr))
            .arg("--certs-dir")
            .arg(certs.path())
            .output()
            .unwrap()
    };
    let issued = admin(&["keys", "issue", "cli-1"]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let stdout = String::from_utf8(issued.stdout).unwrap();
    let key = stdout.trim();
    assert!(
        key.starts_with("lhk_") && !key.contains(char::is_whitespace),
        "only the key: {stdout:?}"
    );

    let mut settings = ClientSettings::new(format!("https://{}", hub.addr), certs.path(), "cli-1");
    settings.api_key = Some(key.to_string());
    let instance = HubClient::connect(&settings).await.unwrap();
    instance.get_status(pb::GetStatusRequest {}).await.unwrap();

    let revoked = admin(&["keys", "revoke", "cli-1"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(
        instance
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let audit = admin(&["audit", "--caller", "cli-1"]);
    let lines = String::from_utf8(audit.stdout).unwrap();
    assert!(
        lines.contains("GetStatus code=0") && lines.contains("GetStatus code=16"),
        "{lines}"
    );
}

/// An operator quarantines an instance: its writes are refused naming the
/// quarantine (nothing of them counts), its pending model update is
/// dropped, the call is audited; released, it writes again.
#[tokio::test]
async fn an_operator_quarantines_an_instance_and_releases_it() {
    let hub = TestHub::start().await;
    let evil = hub.registered("evil").await;
    let op = hub.operator().await;
    let update = pb::ShareModelUpdateRequest {
        model: "plateau".into(),
        delta: vec![-9.0; 8],
        examples: 10,
        ..Default::default()
    };
    assert_eq!(
        evil.share_model_update(update.clone())
            .await
            .unwrap()
            .pending,
        1
    );

    let quarantine = op
        .admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "evil".into(),
            reason: "model updates against the fleet".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .quarantine
        .unwrap();
    assert_eq!(quarantine.instance_id, "evil");
    assert!(!quarantine.by.is_empty() && quarantine.since.is_some());
    let model = plateau_model(&op).await;
    assert_eq!(model.pending, 0, "its pending update was dropped");

    let refused = evil
        .share_strategy(strategy_outcome("s", "accuracy", true, 0.9))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("quarantine")
            && refused
                .message()
                .contains("model updates against the fleet"),
        "{refused:?}"
    );
    let refused = evil.share_model_update(update).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.strategy_outcomes, 0, "nothing of it counted");

    let listed = op
        .admin()
        .list_quarantined(pb::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .quarantined;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance_id, "evil");
    // Instances cannot quarantine each other; a reason is required.
    let other = hub.registered("other").await;
    let denied = other
        .admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "evil".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let invalid = op
        .admin()
        .quarantine_instance(pb::QuarantineInstanceRequest {
            instance_id: "evil".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().contains("reason"), "{invalid:?}");

    op.admin()
        .release_instance(pb::ReleaseInstanceRequest {
            instance_id: "evil".into(),
        })
        .await
        .unwrap();
    evil.share_strategy(strategy_outcome("s", "accuracy", true, 0.1))
        .await
        .unwrap();
    let again = op
        .admin()
        .release_instance(pb::ReleaseInstanceRequest {
            instance_id: "evil".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // The audit log has both operator calls.
    let audited = op
        .admin()
        .query_audit(pb::QueryAuditRequest {
            rpc: "/learninghub.v1.Admin/QuarantineInstance".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        audited
            .entries
            .iter()
            .any(|e| e.role == "operator" && e.code == 0),
        "{audited:?}"
    );
}
