//! Who a caller is and what it may call: identities parsed from certificate
//! URI SANs (and whole DER certificates), the role policy on arbitrary
//! identities and method paths, and the bearer header.
//!
//! Must hold: no panic; a parsed identity prints back to the URI it came
//! from and has a valid name; the policy refuses exactly what the
//! documented role matrix refuses on every routable method path
//! (instances: their own writes and the reads; operators: the reads and
//! Admin) and answers nothing but OK or PERMISSION_DENIED.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

use learning_hub::Error;
use learning_hub::api::inbound::METHODS;
use learning_hub::auth::identity::SPIFFE_PREFIX;
use learning_hub::auth::{Identity, Role, keys, policy};

/// The Hub RPCs only instances may call (README, "Roles").
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

#[derive(Debug, Arbitrary)]
enum Path {
    /// A method of the Hub or Admin service, as the router sees it.
    Method(u8),
    /// Health, reflection.
    Other(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    uri: String,
    /// Built from `uri`'s tail when set, so parsing gets past the prefix.
    spiffe: Option<bool>,
    certificate: Vec<u8>,
    role: bool,
    name: String,
    path: Path,
    header: String,
}

fn check_uri(uri: &str) {
    let Some(identity) = Identity::from_uri(uri) else {
        return;
    };
    assert_eq!(identity.uri(), uri, "{identity:?} does not print back");
    assert!(
        learning_hub::validate::name("identity", &identity.name).is_ok(),
        "{identity:?} has an invalid name"
    );
}

fn expected_refusal(path: &str, role: Role) -> Option<bool> {
    let (service, method) = path.strip_prefix("/learninghub.v1.")?.split_once('/')?;
    // Only exact method paths reach a handler; the router answers
    // UNIMPLEMENTED to anything else.
    METHODS.iter().find(|(p, _)| *p == path)?;
    Some(match service {
        "Admin" => role != Role::Operator,
        "Federation" => role != Role::Hub,
        _ if role == Role::Hub => true,
        _ if WRITES.contains(&method) => role != Role::Instance,
        _ => false,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    check_uri(&input.uri);
    if let Some(instance) = input.spiffe {
        let role = if instance { "instance" } else { "operator" };
        check_uri(&format!("{SPIFFE_PREFIX}{role}/{}", input.uri));
    }
    let _ = Identity::from_certificate(&input.certificate);

    let identity = if input.role {
        Identity::operator(input.name)
    } else {
        Identity::instance(input.name)
    };
    let path = match input.path {
        Path::Method(i) => METHODS[usize::from(i) % METHODS.len()].0.to_string(),
        Path::Other(i) => [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ][usize::from(i) % 4]
            .to_string(),
        Path::Any(path) => path,
    };
    let answer = policy::authorize(&path, &identity);
    assert!(
        matches!(answer, Ok(()) | Err(Error::PermissionDenied(_))),
        "{path}: {answer:?}"
    );
    if let Some(refused) = expected_refusal(&path, identity.role) {
        assert_eq!(
            answer.is_err(),
            refused,
            "{path} as {identity}: policy says {answer:?}"
        );
    }
    if path.starts_with("/grpc.") {
        assert!(answer.is_ok(), "{path} is open to {identity}: {answer:?}");
    }

    if let Some(key) = keys::bearer(&input.header) {
        assert_eq!(key, key.trim());
        assert!(
            input.header.len() > 6 && input.header[..6].eq_ignore_ascii_case("bearer"),
            "{:?}",
            input.header
        );
    }
});
