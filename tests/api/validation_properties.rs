//! Properties of validation and authorization on random input.
//!
//! Validation: each rule in `validate` and the request conversions accept
//! exactly what the documented rules accept (hub.proto's conventions:
//! names are 1 to 128 characters of [A-Za-z0-9._:-], metric values lie in
//! [0, 1] and deltas in [-1, 1], numbers are finite, maps and lists hold at
//! most 32, titles at most 256 characters, free text at most 4096;
//! attribute values and short strings at most 256), and a refusal is
//! INVALID_ARGUMENT naming one of the fields that broke a rule. The rules
//! are written out again below, from the documentation, not from the code.
//!
//! Authorization: the auth layer, driven directly as a tower service, gives
//! every kind of caller (instances with their key, a wrong key or none,
//! operators, certificates without a hub identity, plaintext peers) on
//! every RPC the answer of the documented role matrix, and audits each
//! call once.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::{Ready, ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use proptest::prelude::*;
use prost::Message;
use prost_types::{Value, value::Kind};
use tonic::body::Body;
use tower::{Layer, Service};

use learning_hub::api::{convert, inbound};
use learning_hub::auth::{AccessControl, AuthLayer, Identity, Role};
use learning_hub::domain::model::{AuditEntry, UnixMillis};
use learning_hub::transport::{PeerIdentity, PeerInfo};
use learning_hub::{Error, Result, pb, validate};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The documented rules
// ---------------------------------------------------------------------------

fn doc_name(s: &str) -> bool {
    let len = s.chars().count();
    (1..=128).contains(&len)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

fn doc_text(s: &str, max: usize) -> bool {
    s.chars().count() <= max && !s.contains('\0')
}

fn doc_required_text(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && doc_text(s, max)
}

fn doc_within(v: f64, min: f64, max: f64) -> bool {
    v.is_finite() && min <= v && v <= max
}

/// The fields of a request that break a rule.
#[derive(Default, Debug)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, ok: bool, field: impl Into<String>) {
        if !ok {
            self.0.push(field.into());
        }
    }

    fn name(&mut self, field: &str, value: &str) {
        self.check(doc_name(value), field);
    }

    /// Attributes: at most 32, names as keys, values of at most 256.
    fn attributes(&mut self, field: &str, map: &BTreeMap<String, String>) {
        self.check(map.len() <= 32, field);
        for (k, v) in map {
            self.check(doc_name(k), format!("{field} key"));
            self.check(doc_text(v, 256), format!("{field}[{k}]"));
        }
    }

    fn names(&mut self, field: &str, items: &[String]) {
        self.check(items.len() <= 32, field);
        for (i, item) in items.iter().enumerate() {
            self.name(&format!("{field}[{i}]"), item);
        }
    }

    fn recent(&mut self, field: &str, items: &[pb::RecentApplication]) {
        self.check(items.len() <= 32, field);
        for (i, r) in items.iter().enumerate() {
            self.name(&format!("{field}[{i}].strategy"), &r.strategy);
            self.name(&format!("{field}[{i}].metric"), &r.metric);
            self.check(
                r.cycles_ago <= 1_000_000,
                format!("{field}[{i}].cycles_ago"),
            );
        }
    }

    /// Accepted exactly when nothing was violated; a refusal names one of
    /// the violated fields.
    fn verdict<T>(&self, answer: Result<T>) -> std::result::Result<(), String> {
        match (answer, self.0.is_empty()) {
            (Ok(_), true) => Ok(()),
            (Ok(_), false) => Err(format!("accepted despite {:?}", self.0)),
            (Err(Error::InvalidArgument { field, reason }), false) => {
                if !self.0.contains(&field) {
                    return Err(format!(
                        "refused naming {field:?} ({reason}), but the broken fields are {:?}",
                        self.0
                    ));
                }
                let message = format!("{field}: {reason}");
                if message.len() > 400 {
                    return Err(format!("{}-byte message", message.len()));
                }
                Ok(())
            }
            (Err(e), _) => Err(format!("refused with {e:?}, rules broken: {:?}", self.0)),
        }
    }
}

// ---------------------------------------------------------------------------
// Input close to the boundaries
// ---------------------------------------------------------------------------

/// Mostly valid names, often at the length limit, sometimes with one bad
/// character, sometimes anything at all.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[A-Za-z0-9._:-]{1,12}",
        1 => prop_oneof![Just("."), Just(".."), Just("operator"), Just("crl"), Just("ca")]
            .prop_map(String::from),
        2 => "[a-z]{126,130}",
        1 => Just(String::new()),
        2 => ("[a-z]{0,6}", "[ /é\n\t+*#]", "[a-z]{0,6}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        1 => ("[a-z]{0,4}", "[a-z]{0,4}").prop_map(|(a, b)| format!("{a}\0{b}")),
        // Characters a preview must escape, several bytes each.
        1 => "[\x01-\x08\u{e0001}-\u{e007f}\u{200b}]{20,60}",
        1 => any::<String>(),
    ]
}

/// Text around `max` characters (multi-byte ones too), sometimes with NUL
/// or only whitespace.
fn text_like(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z ]{0,16}",
        2 => (max - 3..=max + 3).prop_map(|n| "x".repeat(n)),
        2 => (max - 3..=max + 3).prop_map(|n| "é".repeat(n)),
        1 => ("[a-z]{0,4}", "[a-z]{0,4}").prop_map(|(a, b)| format!("{a}\0{b}")),
        1 => "[ \t\n]{0,4}",
        1 => any::<String>(),
    ]
}

/// Numbers in and around `[lo, hi]`, and the non-finite ones.
fn number_like(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => lo..=hi,
        2 => (lo - 1.0)..(hi + 1.0),
        2 => prop::sample::select(vec![
            lo,
            hi,
            -0.0,
            lo - f64::EPSILON * lo.abs().max(1.0),
            hi + f64::EPSILON * hi.abs().max(1.0),
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
        ]),
        1 => any::<f64>(),
    ]
}

/// Maps of up to a few entries, or of 30 to 34 valid ones.
fn attributes_like() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        6 => prop::collection::btree_map(name_like(), text_like(256), 0..4),
        1 => prop::collection::btree_map("[a-z]{1,8}", "[a-z]{0,8}", 30..=34),
    ]
}

fn names_like() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        6 => prop::collection::vec(name_like(), 0..4),
        1 => prop::collection::vec("[a-z]{1,8}", 30..=34),
    ]
}

fn recent_like() -> impl Strategy<Value = Vec<pb::RecentApplication>> {
    let one = (
        name_like(),
        name_like(),
        prop_oneof![0..=5u32, 999_999..=1_000_001u32, any::<u32>()],
    )
        .prop_map(|(strategy, metric, cycles_ago)| pb::RecentApplication {
            strategy,
            metric,
            cycles_ago,
        });
    prop_oneof![
        6 => prop::collection::vec(one, 0..3),
        1 => prop::collection::vec(
            ("[a-z]{1,8}", "[a-z]{1,8}").prop_map(|(strategy, metric)| pb::RecentApplication {
                strategy,
                metric,
                cycles_ago: 1,
            }),
            30..=34,
        ),
    ]
}

fn limit_like(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![0..=3u32, max - 2..=max + 2, any::<u32>()]
}

// ---------------------------------------------------------------------------
// The rules in `validate`
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn names_are_what_the_proto_says(s in name_like()) {
        let answer = validate::name("f", &s);
        prop_assert_eq!(answer.is_ok(), doc_name(&s), "{:?}", s);
        if let Err(e) = answer {
            let names_f = matches!(&e, Error::InvalidArgument { field, .. } if field == "f");
            prop_assert!(names_f, "{:?}", e);
            prop_assert!(e.to_string().len() < 200, "echoes the input: {}", e);
        }
        prop_assert_eq!(
            validate::optional_name("f", &s).is_ok(),
            s.is_empty() || doc_name(&s)
        );
    }

    #[test]
    fn texts_count_characters_and_refuse_nul(s in text_like(256), t in text_like(4096)) {
        prop_assert_eq!(validate::text("f", &s, 256).is_ok(), doc_text(&s, 256));
        prop_assert_eq!(
            validate::required_text("f", &s, 256).is_ok(),
            doc_required_text(&s, 256)
        );
        prop_assert_eq!(validate::text("f", &t, 4096).is_ok(), doc_text(&t, 4096));
        for answer in [validate::text("f", &s, 256), validate::required_text("f", &t, 4096)] {
            if let Err(e) = answer {
                prop_assert!(e.to_string().starts_with("f: ") && e.to_string().len() < 200);
            }
        }
    }

    #[test]
    fn numbers_are_finite_and_in_range(v in number_like(0.0, 1.0), d in number_like(-1.0, 1.0)) {
        prop_assert_eq!(validate::unit("v", v).is_ok(), doc_within(v, 0.0, 1.0));
        prop_assert_eq!(validate::within("d", d, -1.0, 1.0).is_ok(), doc_within(d, -1.0, 1.0));
        prop_assert_eq!(validate::finite("v", v).is_ok(), v.is_finite());
        if let Ok(x) = validate::unit("v", v) {
            prop_assert_eq!(x.to_bits(), v.to_bits(), "an accepted value is passed on unchanged");
        }
    }

    #[test]
    fn sizes_and_limits(n in 0usize..40, required in any::<bool>(), raw in limit_like(100)) {
        prop_assert_eq!(validate::list_len("l", n).is_ok(), n <= 32);
        prop_assert_eq!(validate::map_len("m", n, required).is_ok(), n <= 32 && (n > 0 || !required));
        match validate::limit("limit", raw, 10, 100) {
            Ok(got) => prop_assert_eq!(got, if raw == 0 { 10 } else { raw as usize }),
            Err(_) => prop_assert!(raw > 100),
        }
    }
}

// ---------------------------------------------------------------------------
// Whole requests, through the conversions the handlers run
// ---------------------------------------------------------------------------

fn register_like() -> impl Strategy<Value = pb::RegisterRequest> {
    (name_like(), name_like(), attributes_like(), names_like()).prop_map(
        |(instance_id, region, context, capabilities)| pb::RegisterRequest {
            instance_id,
            region,
            context,
            capabilities,
        },
    )
}

fn share_strategy_like() -> impl Strategy<Value = pb::ShareStrategyRequest> {
    (
        (
            name_like(),
            name_like(),
            number_like(0.0, 1.0),
            any::<bool>(),
        ),
        (
            number_like(-1.0, 1.0),
            text_like(256),
            attributes_like(),
            recent_like(),
        ),
    )
        .prop_map(
            |(
                (strategy, metric, value_before, successful),
                (delta, condition, context, recent),
            )| {
                pb::ShareStrategyRequest {
                    request_id: String::new(),
                    strategy,
                    metric,
                    value_before,
                    successful,
                    delta,
                    condition,
                    context,
                    recent,
                    // Checked by the handler (tests/api/federated.rs).
                    trajectory: vec![],
                }
            },
        )
}

fn get_strategies_like() -> impl Strategy<Value = pb::GetStrategiesRequest> {
    (
        (name_like(), number_like(0.0, 1.0), number_like(0.0, 1e6)),
        (
            attributes_like(),
            limit_like(100),
            recent_like(),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((metric, current_value, budget), (context, limit, recent, explore, explore_seed))| {
                pb::GetStrategiesRequest {
                    metric,
                    current_value,
                    budget,
                    context,
                    limit,
                    recent,
                    explore,
                    explore_seed,
                }
            },
        )
}

/// A `google.protobuf.Value`: numbers, strings and booleans are parameter
/// values; null, lists and objects are not.
fn parameter_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => number_like(-10.0, 10.0).prop_map(Kind::NumberValue),
        3 => text_like(256).prop_map(Kind::StringValue),
        2 => any::<bool>().prop_map(Kind::BoolValue),
        1 => Just(Kind::NullValue(0)),
        1 => Just(Kind::ListValue(prost_types::ListValue { values: vec![] })),
        1 => Just(Kind::StructValue(prost_types::Struct::default())),
    ]
    .prop_map(|kind| Value { kind: Some(kind) })
}

fn doc_parameter(v: &Value) -> bool {
    match &v.kind {
        Some(Kind::NumberValue(n)) => n.is_finite(),
        Some(Kind::StringValue(s)) => doc_text(s, 256),
        Some(Kind::BoolValue(_)) => true,
        _ => false,
    }
}

fn share_configuration_like() -> impl Strategy<Value = pb::ShareConfigurationRequest> {
    let alternative = (name_like(), number_like(0.0, 1.0), number_like(0.0, 1.0)).prop_map(
        |(name, effectiveness, risk)| pb::ConfigAlternative {
            name,
            effectiveness,
            risk,
        },
    );
    (
        attributes_like(),
        prop_oneof![
            6 => prop::collection::btree_map(name_like(), parameter_like(), 0..4),
            1 => prop::collection::btree_map(
                "[a-z]{1,8}",
                any::<bool>().prop_map(|b| Value { kind: Some(Kind::BoolValue(b)) }),
                30..=34,
            ),
        ],
        number_like(0.0, 1.0),
        prop_oneof![0..=10u64, 999_999..=1_000_001u64, any::<u64>()],
        text_like(4096),
        prop::collection::vec(alternative, 0..3),
    )
        .prop_map(
            |(context, parameters, effectiveness, data_points, recommendation, alternatives)| {
                pb::ShareConfigurationRequest {
                    request_id: String::new(),
                    context,
                    parameters,
                    effectiveness,
                    data_points,
                    recommendation,
                    alternatives,
                }
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn register(req in register_like()) {
        let mut v = Violations::default();
        v.name("instance_id", &req.instance_id);
        v.name("region", &req.region);
        v.attributes("context", &req.context);
        v.names("capabilities", &req.capabilities);
        let answer = convert::registration(req.clone());
        if let Ok(registration) = &answer {
            prop_assert_eq!(&registration.instance_id, &req.instance_id);
            prop_assert_eq!(&registration.context, &req.context);
        }
        v.verdict(answer).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn share_strategy(req in share_strategy_like()) {
        let mut v = Violations::default();
        v.name("strategy", &req.strategy);
        v.name("metric", &req.metric);
        v.check(doc_text(&req.condition, 256), "condition");
        v.check(doc_within(req.value_before, 0.0, 1.0), "value_before");
        v.check(doc_within(req.delta, -1.0, 1.0), "delta");
        v.attributes("context", &req.context);
        v.recent("recent", &req.recent);
        v.verdict(convert::strategy_share(req)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn get_strategies(req in get_strategies_like()) {
        let mut v = Violations::default();
        v.name("metric", &req.metric);
        v.check(doc_within(req.current_value, 0.0, 1.0), "current_value");
        v.check(doc_within(req.budget, 0.0, 1e6), "budget");
        v.attributes("context", &req.context);
        v.check(req.limit <= 100, "limit");
        v.recent("recent", &req.recent);
        let answer = convert::strategies_query(req.clone());
        if let Ok(ask) = &answer {
            prop_assert_eq!(ask.limit, if req.limit == 0 { 10 } else { req.limit as usize });
            prop_assert_eq!(ask.budget, (req.budget > 0.0).then_some(req.budget));
            prop_assert_eq!(ask.explore_seed, req.explore.then_some(req.explore_seed));
        }
        v.verdict(answer).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn share_configuration(req in share_configuration_like()) {
        let mut v = Violations::default();
        v.check(doc_text(&req.recommendation, 4096), "recommendation");
        v.check(req.data_points <= 1_000_000, "data_points");
        v.check(req.alternatives.len() <= 32, "alternatives");
        for (n, a) in req.alternatives.iter().enumerate() {
            v.name(&format!("alternatives[{n}].name"), &a.name);
            v.check(doc_within(a.effectiveness, 0.0, 1.0), format!("alternatives[{n}].effectiveness"));
            v.check(doc_within(a.risk, 0.0, 1.0), format!("alternatives[{n}].risk"));
        }
        v.attributes("context", &req.context);
        v.check((1..=32).contains(&req.parameters.len()), "parameters");
        for (k, value) in &req.parameters {
            v.check(doc_name(k), "parameters key");
            v.check(doc_parameter(value), format!("parameters[{k}]"));
        }
        v.check(doc_within(req.effectiveness, 0.0, 1.0), "effectiveness");
        v.verdict(convert::config_share(req)).map_err(TestCaseError::fail)?;
    }

    /// Every RPC's validation takes any bytes without panicking and
    /// refuses only with INVALID_ARGUMENT.
    #[test]
    fn every_rpc_takes_any_bytes(pick in any::<prop::sample::Index>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let (path, _) = inbound::METHODS[pick.index(inbound::METHODS.len())];
        match inbound::validate_encoded(path, &body, 0) {
            Ok(()) | Err(Error::InvalidArgument { .. }) => {}
            Err(e) => prop_assert!(false, "{}: {:?}", path, e),
        }
    }

    /// A request that passes validation still passes after a trip over the
    /// wire (what the handler sees is what the client sent).
    #[test]
    fn valid_requests_survive_encoding(req in register_like()) {
        let direct = convert::registration(req.clone()).is_ok();
        let wire = inbound::validate_encoded(
            "/learninghub.v1.Hub/Register",
            &req.encode_to_vec(),
            0,
        );
        prop_assert_eq!(direct, wire.is_ok());
    }
}

// ---------------------------------------------------------------------------
// Authorization through the auth layer
// ---------------------------------------------------------------------------

/// The documented role matrix (README, "Roles"; hub.proto).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    /// Instances only: Register, Share*, RecordPatternOutcome,
    /// RecordInsightUse.
    Write,
    /// Instances and operators.
    Read,
    /// Operators only: the Admin service.
    Admin,
    /// Other regions' hubs only: the Federation service.
    Federation,
    /// Health and reflection: any authenticated peer, no API key.
    Open,
}

fn documented_access(path: &str) -> Access {
    const WRITES: [&str; 9] = [
        "Register",
        "SharePattern",
        "RecordPatternOutcome",
        "ShareStrategy",
        "ShareInsight",
        "RecordInsightUse",
        "ShareFailure",
        "ShareConfiguration",
        "ShareModelUpdate",
    ];
    if let Some(method) = path.strip_prefix("/learninghub.v1.Hub/") {
        if WRITES.contains(&method) {
            Access::Write
        } else {
            Access::Read
        }
    } else if path.starts_with("/learninghub.v1.Admin/") {
        Access::Admin
    } else if path.starts_with("/learninghub.v1.Federation/") {
        Access::Federation
    } else {
        Access::Open
    }
}

/// Every path a caller can reach: the hub's RPCs, health and reflection.
fn every_path() -> Vec<&'static str> {
    let mut paths: Vec<&str> = inbound::METHODS.iter().map(|(p, _)| *p).collect();
    paths.extend([
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]);
    paths
}

#[derive(Debug, Clone)]
enum Caller {
    Instance(String),
    Operator(String),
    /// Another region's hub.
    Hub(String),
    /// A verified certificate without a hub identity.
    Unidentified,
    /// No TLS (refused outside `--insecure-dev`).
    Plaintext,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Key {
    Own,
    Wrong,
    Missing,
}

/// Keys are `key-<instance>`; the rate limit is exhausted or not.
struct FakeAccess {
    exhausted: bool,
    audit: Mutex<Vec<AuditEntry>>,
}

impl AccessControl for FakeAccess {
    fn check_key(&self, instance_id: &str, presented: Option<&str>) -> Result<()> {
        if presented == Some(format!("key-{instance_id}").as_str()) {
            Ok(())
        } else {
            Err(Error::Unauthenticated("bad key".into()))
        }
    }

    fn take_rate_token(&self, _: &Identity) -> std::result::Result<(), u64> {
        if self.exhausted { Err(30) } else { Ok(()) }
    }

    fn audit(&self, entry: AuditEntry, _sampled: bool) {
        self.audit.lock().unwrap().push(entry);
    }

    fn now(&self) -> UnixMillis {
        0
    }
}

/// The service behind the layer: answers OK and remembers the identity
/// the layer handed it.
#[derive(Clone, Default)]
struct Handler {
    seen: Arc<Mutex<Option<Option<Identity>>>>,
}

impl Service<http::Request<Body>> for Handler {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<std::result::Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        *self.seen.lock().unwrap() = Some(request.extensions().get::<Identity>().cloned());
        let mut response = http::Response::new(Body::empty());
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("0"));
        ready(Ok(response))
    }
}

fn caller_like() -> impl Strategy<Value = Caller> {
    prop_oneof![
        4 => "[A-Za-z0-9._:-]{1,24}".prop_map(Caller::Instance),
        3 => "[A-Za-z0-9._:-]{1,24}".prop_map(Caller::Operator),
        2 => "[A-Za-z0-9._:-]{1,24}".prop_map(Caller::Hub),
        1 => Just(Caller::Unidentified),
        1 => Just(Caller::Plaintext),
    ]
}

fn expected(caller: &Caller, key: Key, access: Access, exhausted: bool) -> tonic::Code {
    use tonic::Code;
    match caller {
        Caller::Plaintext => Code::Unauthenticated,
        Caller::Unidentified => Code::PermissionDenied,
        Caller::Operator(_) => match access {
            Access::Write | Access::Federation => Code::PermissionDenied,
            _ => Code::Ok,
        },
        // A peer hub: the Federation service (and health, reflection) only,
        // without a key or a rate limit.
        Caller::Hub(_) => match access {
            Access::Federation | Access::Open => Code::Ok,
            _ => Code::PermissionDenied,
        },
        Caller::Instance(_) => match access {
            Access::Open => Code::Ok,
            _ if key != Key::Own => Code::Unauthenticated,
            Access::Admin | Access::Federation => Code::PermissionDenied,
            _ if exhausted => Code::ResourceExhausted,
            _ => Code::Ok,
        },
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_auth_layer_follows_the_role_matrix(
        caller in caller_like(),
        key in prop::sample::select(vec![Key::Own, Key::Wrong, Key::Missing]),
        exhausted in prop::bool::weighted(0.2),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for path in every_path() {
            let access = Arc::new(FakeAccess { exhausted, audit: Mutex::new(Vec::new()) });
            let handler = Handler::default();
            let mut service = AuthLayer::new(false, access.clone()).layer(handler.clone());

            let identity = match &caller {
                Caller::Instance(id) => PeerIdentity::Verified(Identity::instance(id.clone())),
                Caller::Operator(name) => PeerIdentity::Verified(Identity::operator(name.clone())),
                Caller::Hub(region) => PeerIdentity::Verified(Identity::hub(region.clone())),
                Caller::Unidentified => PeerIdentity::Unidentified("no hub URI SAN".into()),
                Caller::Plaintext => PeerIdentity::Plaintext,
            };
            let mut request = http::Request::builder().uri(path);
            let own = match &caller {
                Caller::Instance(id) | Caller::Operator(id) | Caller::Hub(id) => id.clone(),
                _ => "x".into(),
            };
            match key {
                Key::Own => request = request.header("authorization", format!("Bearer key-{own}")),
                Key::Wrong => request = request.header("authorization", "Bearer key-someone-else"),
                Key::Missing => {}
            }
            let mut request = request.body(Body::empty()).unwrap();
            request.extensions_mut().insert(PeerInfo::new(None, identity.clone()));

            let response = runtime.block_on(service.call(request)).unwrap();
            let code = tonic::Status::from_header_map(response.headers())
                .map_or(tonic::Code::Ok, |s| s.code());
            let want = expected(&caller, key, documented_access(path), exhausted);
            prop_assert_eq!(code, want, "{:?} with key {:?} on {}", caller, key, path);

            // The handler runs exactly for admitted calls, with the caller's identity.
            let seen = handler.seen.lock().unwrap().clone();
            match (&identity, code) {
                (PeerIdentity::Verified(id), tonic::Code::Ok) => {
                    prop_assert_eq!(seen, Some(Some(id.clone())))
                }
                _ => prop_assert_eq!(seen, None, "a refused call reached the handler"),
            }
            if code == tonic::Code::ResourceExhausted {
                prop_assert_eq!(
                    response.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                    Some("30")
                );
            }

            // Audited once, refusals included, with who called and how it ended.
            let audit = access.audit.lock().unwrap();
            prop_assert_eq!(audit.len(), 1, "{:?} on {}: {:?}", caller, path, audit);
            let entry = &audit[0];
            prop_assert_eq!(entry.code, code as i32);
            prop_assert_eq!(&entry.rpc, path);
            let (who, role) = match &identity {
                PeerIdentity::Verified(id) => (id.name.as_str(), id.role.as_str()),
                _ => ("", "unknown"),
            };
            prop_assert_eq!((entry.caller.as_str(), entry.role.as_str()), (who, role));
        }
    }

    #[test]
    fn identities_round_trip_through_their_uri(name in name_like(), operator in any::<bool>()) {
        let identity = if operator { Identity::operator(name.clone()) } else { Identity::instance(name.clone()) };
        let parsed = Identity::from_uri(&identity.uri());
        // The documented rules: a valid name, not `.` or `..`, and not one
        // of the role's reserved names (README, security model).
        let reserved: &[&str] = if operator {
            &["ca", "server", "crl"]
        } else {
            &["ca", "server", "crl", "operator", "hub"]
        };
        if doc_name(&name) && name != "." && name != ".." && !reserved.contains(&name.as_str()) {
            prop_assert_eq!(parsed, Some(identity));
        } else {
            prop_assert_eq!(parsed, None, "an identity with an invalid name was accepted");
        }
    }

    #[test]
    fn only_hub_uris_are_identities(uri in prop_oneof![
        any::<String>(),
        ("(instance|operator|admin|)", "/?", name_like(), "(/.{0,3})?")
            .prop_map(|(r, s, n, t)| format!("spiffe://learning-hub/{r}{s}{n}{t}")),
    ]) {
        if let Some(identity) = Identity::from_uri(&uri) {
            prop_assert_eq!(identity.uri(), uri.clone());
            prop_assert!(doc_name(&identity.name));
            let role = if identity.role == Role::Instance { "instance" } else { "operator" };
            let prefix = format!("spiffe://learning-hub/{role}/");
            prop_assert!(uri.starts_with(&prefix), "{}", uri);
        }
    }
}

// ---------------------------------------------------------------------------
// A valid request of every RPC (and the fuzz target's seeds)
// ---------------------------------------------------------------------------

fn metric_states(entries: &[(&str, f64, bool)]) -> BTreeMap<String, pb::MetricState> {
    entries
        .iter()
        .map(|(k, value, stuck)| {
            (
                k.to_string(),
                pb::MetricState {
                    value: *value,
                    stuck: *stuck,
                },
            )
        })
        .collect()
}

fn attrs(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn recent_one() -> Vec<pb::RecentApplication> {
    vec![pb::RecentApplication {
        strategy: "warm_restart".into(),
        metric: "learningVelocity".into(),
        cycles_ago: 2,
    }]
}

/// One valid request per RPC, every optional field set, encoded.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let metrics = metric_states(&[("learningVelocity", 0.4, true), ("accuracy", 0.8, false)]);
    let context = attrs(&[("provider", "claude"), ("latency", "<100ms")]);
    let timestamp = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    let hub = |m: &str| format!("/learninghub.v1.Hub/{m}");
    let admin = |m: &str| format!("/learninghub.v1.Admin/{m}");
    let list: Vec<(String, Vec<u8>)> = vec![
        (
            hub("Register"),
            pb::RegisterRequest {
                instance_id: "us-east-1".into(),
                region: "us-east".into(),
                context: context.clone(),
                capabilities: vec!["strategy:novelty_injection".into()],
            }
            .encode_to_vec(),
        ),
        (hub("GetStatus"), pb::GetStatusRequest {}.encode_to_vec()),
        (
            hub("ListInstances"),
            pb::ListInstancesRequest {
                region: "us-east".into(),
                limit: 10,
                after_instance_id: "a".into(),
            }
            .encode_to_vec(),
        ),
        (
            hub("SharePattern"),
            pb::SharePatternRequest {
                request_id: String::new(),
                metrics: metrics.clone(),
                cycles_until_plateau: 40,
                recovery_strategies: vec!["novelty_injection".into()],
                environment: context.clone(),
                target_metric: "learningVelocity".into(),
            }
            .encode_to_vec(),
        ),
        (
            hub("GetPatterns"),
            pb::GetPatternsRequest {
                metrics: metrics.clone(),
                environment: context.clone(),
                limit: 5,
                target_metric: "learningVelocity".into(),
                recent: recent_one(),
            }
            .encode_to_vec(),
        ),
        (
            hub("RecordPatternOutcome"),
            pb::RecordPatternOutcomeRequest {
                request_id: String::new(),
                pattern_id: "pattern_0011223344556677".into(),
                success: true,
                metric_name: "learningVelocity".into(),
                strategy: "novelty_injection".into(),
                similarity: 0.9,
            }
            .encode_to_vec(),
        ),
        (
            hub("ShareStrategy"),
            pb::ShareStrategyRequest {
                request_id: String::new(),
                strategy: "novelty_injection".into(),
                metric: "learningVelocity".into(),
                value_before: 0.4,
                successful: true,
                delta: 0.12,
                condition: "metric stuck".into(),
                context: context.clone(),
                recent: recent_one(),
                trajectory: vec![0.3, 0.4],
            }
            .encode_to_vec(),
        ),
        (
            hub("GetStrategies"),
            pb::GetStrategiesRequest {
                metric: "learningVelocity".into(),
                current_value: 0.4,
                budget: 3.0,
                context: context.clone(),
                limit: 5,
                recent: recent_one(),
                explore: true,
                explore_seed: 7,
            }
            .encode_to_vec(),
        ),
        (
            hub("GetOptimalCombination"),
            pb::GetOptimalCombinationRequest {
                metrics: metrics.clone(),
                budget: 2.0,
                context: context.clone(),
                costs: [("novelty_injection".to_string(), 1.5)].into(),
                recent: recent_one(),
            }
            .encode_to_vec(),
        ),
        (
            hub("ShareInsight"),
            pb::ShareInsightRequest {
                request_id: String::new(),
                insight: Some(pb::Insight {
                    category: pb::InsightCategory::Sequence as i32,
                    title: "consolidate before novelty".into(),
                    insight: "novelty after consolidation works twice as often".into(),
                    evidence: Some(pb::InsightEvidence {
                        data_points: 120,
                        correlation_strength: 0.6,
                        instances_covered: 4,
                        improvement_observed: 0.15,
                    }),
                    applicable_contexts: vec![pb::ApplicableContext {
                        context: "provider".into(),
                        threshold: "claude".into(),
                    }],
                    effectiveness: 0.7,
                    risk: 0.1,
                    recommendation: "apply consolidation_cycle first".into(),
                    alternatives: vec![pb::InsightAlternative {
                        insight: "warm restart".into(),
                        effectiveness: 0.4,
                    }],
                    valid_until: Some(timestamp(1_900_000_000)),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        ),
        (
            hub("GetInsights"),
            pb::GetInsightsRequest {
                category: pb::InsightCategory::Timing as i32,
                context: "provider".into(),
                limit: 10,
            }
            .encode_to_vec(),
        ),
        (
            hub("RecordInsightUse"),
            pb::RecordInsightUseRequest {
                request_id: String::new(),
                insight_id: "insight_0011223344556677".into(),
            }
            .encode_to_vec(),
        ),
        (
            hub("SubscribeInsights"),
            pb::SubscribeInsightsRequest {
                after_sequence: 3,
                category: pb::InsightCategory::Context as i32,
            }
            .encode_to_vec(),
        ),
        (
            hub("ShareFailure"),
            pb::ShareFailureRequest {
                request_id: String::new(),
                failure_type: pb::FailureType::Cascade as i32,
                trigger: "accuracy fell after speed_optimization".into(),
                context: Some(pb::FailureContext {
                    metric: "accuracy".into(),
                    strategy: "speed_optimization".into(),
                }),
                recovery: vec![pb::RecoveryAttempt {
                    method: "rollback".into(),
                    succeeded: true,
                    cycles_to_recover: 3,
                }],
                prevention: vec!["check accuracy first".into()],
                recent: recent_one(),
                magnitude: 0.2,
                follow_up: true,
            }
            .encode_to_vec(),
        ),
        (
            hub("GetFailures"),
            pb::GetFailuresRequest {
                failure_type: pb::FailureType::Deadlock as i32,
                include_resolved: true,
                metric: "accuracy".into(),
                strategy: "speed_optimization".into(),
                limit: 20,
            }
            .encode_to_vec(),
        ),
        (
            hub("CheckAction"),
            pb::CheckActionRequest {
                strategy: "speed_optimization".into(),
                metric: "accuracy".into(),
                metrics: metrics.clone(),
                recent: recent_one(),
                context: context.clone(),
            }
            .encode_to_vec(),
        ),
        (
            hub("ShareConfiguration"),
            pb::ShareConfigurationRequest {
                request_id: String::new(),
                context: context.clone(),
                parameters: [
                    (
                        "cycle_interval_ms".to_string(),
                        Value {
                            kind: Some(Kind::NumberValue(600_000.0)),
                        },
                    ),
                    (
                        "mode".to_string(),
                        Value {
                            kind: Some(Kind::StringValue("conservative".into())),
                        },
                    ),
                    (
                        "adaptive".to_string(),
                        Value {
                            kind: Some(Kind::BoolValue(true)),
                        },
                    ),
                ]
                .into(),
                effectiveness: 0.8,
                data_points: 150,
                recommendation: "for claude at low latency".into(),
                alternatives: vec![pb::ConfigAlternative {
                    name: "aggressive".into(),
                    effectiveness: 0.7,
                    risk: 0.3,
                }],
            }
            .encode_to_vec(),
        ),
        (
            hub("Bootstrap"),
            pb::BootstrapRequest {
                context: context.clone(),
            }
            .encode_to_vec(),
        ),
        (
            hub("Echo"),
            pb::EchoRequest {
                payload: b"ping".to_vec(),
            }
            .encode_to_vec(),
        ),
        (
            admin("GenerateInsights"),
            pb::GenerateInsightsRequest {}.encode_to_vec(),
        ),
        (
            admin("IssueApiKey"),
            pb::IssueApiKeyRequest {
                instance_id: "us-east-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("RevokeApiKey"),
            pb::RevokeApiKeyRequest {
                instance_id: "us-east-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("QueryAudit"),
            pb::QueryAuditRequest {
                since: Some(timestamp(1_700_000_000)),
                until: Some(timestamp(1_800_000_000)),
                caller: "us-east-1".into(),
                rpc: "ShareStrategy".into(),
                limit: 50,
                hub_calls_only: true,
                role: "instance".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("ResolveFailure"),
            pb::ResolveFailureRequest {
                failure_id: "failure_0011223344556677".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("InvalidateInsight"),
            pb::InvalidateInsightRequest {
                insight_id: "insight_0011223344556677".into(),
            }
            .encode_to_vec(),
        ),
        (
            hub("ShareModelUpdate"),
            pb::ShareModelUpdateRequest {
                model: "plateau".into(),
                base_version: 0,
                delta: vec![0.5, -0.25, 0.0, 1.0, 0.125, -1.0, 0.75, 0.1],
                examples: 120,
                evaluation: Some(pb::ModelEvaluation {
                    examples: 30,
                    correct: 24,
                    log_loss: 12.5,
                    reports: 0,
                }),
                request_id: "update-1".into(),
                context_model: false,
            }
            .encode_to_vec(),
        ),
        (
            hub("GetModel"),
            pb::GetModelRequest {
                model: "plateau".into(),
                known_version: 3,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            hub("PredictPlateau"),
            pb::PredictPlateauRequest {
                metrics: vec![pb::MetricTrajectory {
                    metric: "accuracy".into(),
                    values: vec![0.5, 0.6, 0.65, 0.67],
                }],
                context: context.clone(),
            }
            .encode_to_vec(),
        ),
        (
            admin("GetReplicaStatus"),
            pb::GetReplicaStatusRequest {}.encode_to_vec(),
        ),
        (
            admin("GetFleetKnowledge"),
            pb::GetFleetKnowledgeRequest {
                metric: "accuracy".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("QuarantineInstance"),
            pb::QuarantineInstanceRequest {
                instance_id: "i-1".into(),
                reason: "its model updates oppose the fleet's".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("ReleaseInstance"),
            pb::ReleaseInstanceRequest {
                instance_id: "i-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            admin("ListQuarantined"),
            pb::ListQuarantinedRequest {}.encode_to_vec(),
        ),
        (
            admin("ListAnomalies"),
            pb::ListAnomaliesRequest { scan: true }.encode_to_vec(),
        ),
        (
            "/learninghub.v1.Federation/Pull".to_string(),
            pb::PullRequest {
                held: [("us-east".to_string(), 42), ("eu-west".to_string(), 0)].into(),
                held_insights: [("us-east".to_string(), 7)].into(),
            }
            .encode_to_vec(),
        ),
        (
            "/learninghub.v1.Federation/Wake".to_string(),
            pb::WakeRequest {}.encode_to_vec(),
        ),
    ];
    list.into_iter()
        .map(|(path, body)| {
            let known = inbound::METHODS
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("{path} is not a method"));
            (known.0, body)
        })
        .collect()
}

/// A full, valid request of every RPC passes validation. With
/// `FUZZ_SEEDS_DIR` set, they are also written there as seeds of the
/// `requests` fuzz target (method index byte, then the body).
#[test]
fn a_valid_request_of_every_rpc_is_accepted() {
    let samples = samples();
    let mut missing: Vec<_> = inbound::METHODS.iter().map(|(p, _)| *p).collect();
    missing.retain(|p| !samples.iter().any(|(s, _)| s == p));
    assert!(missing.is_empty(), "no sample for {missing:?}");
    for (path, body) in &samples {
        if let Err(e) = inbound::validate_encoded(path, body, 1_762_214_400_000) {
            panic!("{path}: {e}");
        }
    }
    if let Some(dir) = std::env::var_os("FUZZ_SEEDS_DIR") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        for (path, body) in &samples {
            let index = inbound::METHODS
                .iter()
                .position(|(p, _)| p == path)
                .unwrap();
            let mut seed = vec![index as u8];
            seed.extend_from_slice(body);
            let name = path.rsplit('/').next().unwrap();
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
}

/// Nesting deeper than prost's limit (100 messages) is refused while
/// decoding, without recursing further (and without a stack overflow).
#[test]
fn nesting_past_the_decoder_limit_is_refused() {
    let mut value = Value {
        kind: Some(Kind::NumberValue(1.0)),
    };
    for _ in 0..150 {
        value = Value {
            kind: Some(Kind::ListValue(prost_types::ListValue {
                values: vec![value],
            })),
        };
    }
    let body = pb::ShareConfigurationRequest {
        parameters: [("x".to_string(), value)].into(),
        effectiveness: 0.5,
        ..Default::default()
    }
    .encode_to_vec();
    let err = inbound::validate_encoded("/learninghub.v1.Hub/ShareConfiguration", &body, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("request: ") && err.contains("recursion limit"),
        "{err}"
    );
}
