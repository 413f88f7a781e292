//! The JSON gateway: the design's REST paths on the hub's own listener,
//! over mutual TLS with HTTP/1.1 (as curl or a shell script would call
//! them), mapped onto the same handlers as gRPC: identity from the client
//! certificate, the API key as `Authorization: Bearer`, the same
//! validation (errors as JSON naming the field, with the HTTP status of
//! the gRPC code), the same audit.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use learning_hub::{auth::Identity, pb, pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS connection to the hub over HTTP/1.1 as `who`.
async fn connect_as(
    addr: SocketAddr,
    certs: &Path,
    who: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let paths = pki::CertPaths::for_name(certs, who);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&std::fs::read(&paths.ca).unwrap()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(&std::fs::read(&paths.cert).unwrap())
        .map(Result::unwrap)
        .collect();
    let private = PrivateKeyDer::from_pem_slice(&std::fs::read(&paths.key).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Opens the insight stream as Server-Sent Events (`GET path`, with
/// `Last-Event-ID: last` if given) and hands back the connection once the
/// response head has come, with what was read so far.
async fn open_events(
    addr: SocketAddr,
    certs: &Path,
    who: &str,
    key: &str,
    path: &str,
    last: Option<u64>,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
) {
    let mut tls = connect_as(addr, certs, who).await;
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {key}\r\n"
    );
    if let Some(last) = last {
        head.push_str(&format!("Last-Event-ID: {last}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let seen = read_until(&mut tls, "\r\n\r\n", Duration::from_secs(5)).await;
    (tls, seen)
}

/// Reads until what was read contains `wanted` (or `within` passes).
async fn read_until(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    wanted: &str,
    within: Duration,
) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(wanted) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// An answer: HTTP status and the JSON body.
struct Answer {
    status: u16,
    json: serde_json::Value,
}

/// One HTTP/1.1 request over mTLS as `who` (certificate in `certs`), with
/// `key` as its bearer token if given.
async fn call(
    addr: SocketAddr,
    certs: &Path,
    who: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    let mut tls = connect_as(addr, certs, who).await;
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .expect("answered within 10 s")
        .ok();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    Answer { status, json }
}

#[tokio::test]
async fn the_design_paths_answer_json_through_the_same_handlers() {
    let hub = TestHub::start().await;
    let certs = hub.certs_dir().to_path_buf();
    for id in ["rest-1", "rest-2"] {
        pki::issue(&certs, &Identity::instance(id), false).unwrap();
    }
    let key1 = hub.api_key("rest-1").await;
    let key2 = hub.api_key("rest-2").await;
    let post = |who: &'static str, key: String, path: &'static str, body: String| {
        let certs = certs.clone();
        let addr = hub.addr;
        async move { call(addr, &certs, who, Some(&key), "POST", path, Some(&body)).await }
    };

    // Register, in JSON (camelCase or the proto's names, as the mapping
    // allows), and get the bootstrap back.
    let registered = post(
        "rest-1",
        key1.clone(),
        "/api/v1/hub/register",
        r#"{"instanceId":"rest-1","region":"us-east","context":{"tier":"gpu"}}"#.into(),
    )
    .await;
    assert_eq!(registered.status, 200, "{}", registered.json);
    assert_eq!(registered.json["instance"]["instanceId"], "rest-1");
    assert_eq!(registered.json["newlyRegistered"], true);
    assert!(registered.json["bootstrap"]["parameters"].is_object());
    let second = post(
        "rest-2",
        key2.clone(),
        "/api/v1/hub/register",
        r#"{"instance_id":"rest-2","region":"us-east"}"#.into(),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.json);

    // Share outcomes; rank them.
    for (who, key) in [("rest-1", &key1), ("rest-2", &key2)] {
        let shared = post(
            who,
            key.clone(),
            "/api/v1/hub/share-strategy",
            r#"{"strategy":"novelty_injection","metric":"learningVelocity",
                "valueBefore":0.5,"successful":true,"delta":0.2}"#
                .into(),
        )
        .await;
        assert_eq!(shared.status, 200, "{}", shared.json);
        assert!(
            shared.json["outcomeSequence"].is_string(),
            "64-bit as strings"
        );
    }
    let ranked = call(
        hub.addr,
        &certs,
        "rest-1",
        Some(&key1),
        "GET",
        "/api/v1/hub/strategies?metric=learningVelocity&current_value=0.5&limit=3",
        None,
    )
    .await;
    assert_eq!(ranked.status, 200, "{}", ranked.json);
    let first = &ranked.json["recommendations"][0];
    assert_eq!(first["strategy"], "novelty_injection");
    assert_eq!(first["applications"], "2");
    // The same answer gRPC gives.
    let grpc = hub
        .client("rest-1")
        .await
        .get_strategies(pb::GetStrategiesRequest {
            metric: "learningVelocity".into(),
            current_value: 0.5,
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .recommendations;
    assert_eq!(first["confidence"].as_f64(), Some(grpc[0].confidence));

    // Errors: JSON naming the field, the HTTP status of the gRPC code.
    let bad = post(
        "rest-1",
        key1.clone(),
        "/api/v1/hub/share-strategy",
        r#"{"strategy":"novelty_injection","metric":"learningVelocity","delta":2}"#.into(),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["code"], "INVALID_ARGUMENT");
    assert!(
        bad.json["message"].as_str().unwrap().starts_with("delta:"),
        "{}",
        bad.json
    );
    let not_json = post(
        "rest-1",
        key1.clone(),
        "/api/v1/hub/share-strategy",
        "{".into(),
    )
    .await;
    assert_eq!(
        (not_json.status, not_json.json["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let unknown_field = call(
        hub.addr,
        &certs,
        "rest-1",
        Some(&key1),
        "GET",
        "/api/v1/hub/strategies?metirc=x",
        None,
    )
    .await;
    assert_eq!(unknown_field.status, 400);
    assert!(
        unknown_field.json["message"]
            .as_str()
            .unwrap()
            .contains("metirc")
    );
    // Without the key: 401; as another instance: 403.
    let keyless = call(
        hub.addr,
        &certs,
        "rest-1",
        None,
        "GET",
        "/api/v1/hub/status",
        None,
    )
    .await;
    assert_eq!(
        (keyless.status, keyless.json["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let impostor = post(
        "rest-2",
        key2.clone(),
        "/api/v1/hub/register",
        r#"{"instanceId":"rest-1","region":"us-east"}"#.into(),
    )
    .await;
    assert_eq!(
        (impostor.status, impostor.json["code"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    // Paths and methods the design does not have.
    let nowhere = call(
        hub.addr,
        &certs,
        "rest-1",
        Some(&key1),
        "GET",
        "/api/v1/hub/nope",
        None,
    )
    .await;
    assert_eq!(nowhere.status, 404);
    let wrong_method = call(
        hub.addr,
        &certs,
        "rest-1",
        Some(&key1),
        "GET",
        "/api/v1/hub/share-strategy",
        None,
    )
    .await;
    assert_eq!(wrong_method.status, 405);

    // Audited as the RPC it is.
    let audit = hub
        .operator()
        .await
        .admin()
        .query_audit(pb::QueryAuditRequest {
            caller: "rest-1".into(),
            rpc: "/learninghub.v1.Hub/ShareStrategy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(audit.entries.len() >= 2, "{audit:?}");
}

/// The insight stream as Server-Sent Events: an insight shared over gRPC
/// arrives as an event within 2 s, with its sequence as the event id; a
/// reconnect with `Last-Event-ID` resumes after it.
#[tokio::test]
async fn insights_stream_as_server_sent_events_and_resume() {
    let hub = TestHub::start().await;
    let certs = hub.certs_dir().to_path_buf();
    pki::issue(&certs, &Identity::instance("sse-1"), false).unwrap();
    let key = hub.api_key("sse-1").await;
    let sharer = hub.registered("sharer").await;
    sharer
        .share_insight(insight("warm restarts help"))
        .await
        .unwrap();

    let (mut tls, head) = open_events(
        hub.addr,
        &certs,
        "sse-1",
        &key,
        "/api/v1/hub/insights?new=true",
        None,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    // The stored insight first, then a new one as it is shared.
    let first = read_until(&mut tls, "warm restarts help", Duration::from_secs(2)).await;
    assert!(
        first.contains("id: 1\n") || head.contains("id: 1\n"),
        "{head}{first}"
    );
    let shared_at = tokio::time::Instant::now();
    sharer
        .share_insight(insight("smaller batches help"))
        .await
        .unwrap();
    let second = read_until(&mut tls, "smaller batches help", Duration::from_secs(2)).await;
    assert!(second.contains("smaller batches help"), "{second}");
    assert!(second.contains("id: 2\n"), "{second}");
    assert!(second.contains("event: insight\ndata: {"), "{second}");
    eprintln!(
        "an insight arrived as an event {:?} after it was shared",
        shared_at.elapsed()
    );
    drop(tls);

    // Resuming after 1: only the second comes.
    let (mut tls, head) = open_events(
        hub.addr,
        &certs,
        "sse-1",
        &key,
        "/api/v1/hub/insights?new=true",
        Some(1),
    )
    .await;
    let resumed =
        head + &read_until(&mut tls, "smaller batches help", Duration::from_secs(2)).await;
    assert!(resumed.contains("smaller batches help"), "{resumed}");
    assert!(!resumed.contains("warm restarts help"), "{resumed}");

    // Refused before it starts: a JSON refusal, not a stream.
    let (_, refused) = open_events(
        hub.addr,
        &certs,
        "sse-1",
        "lhk_not_the_key",
        "/api/v1/hub/insights?new=true",
        None,
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
}

/// The OpenAPI document, generated from the `.proto`: every design path
/// (the stream aside, described in prose), every `$ref` resolvable.
#[tokio::test]
async fn the_openapi_document_describes_every_path() {
    let hub = TestHub::start().await;
    let certs = hub.certs_dir().to_path_buf();
    pki::issue(&certs, &Identity::instance("doc-1"), false).unwrap();
    let doc = call(
        hub.addr,
        &certs,
        "doc-1",
        None,
        "GET",
        "/api/v1/openapi.json",
        None,
    )
    .await;
    assert_eq!(doc.status, 200);
    let doc = doc.json;
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("post", "/api/v1/hub/register"),
        ("get", "/api/v1/hub/strategies"),
        ("post", "/api/v1/hub/share-strategy"),
        ("get", "/api/v1/hub/insights"),
        ("post", "/api/v1/hub/bootstrap"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path}");
        assert!(
            operation["description"].as_str().unwrap().len() > 20,
            "the .proto's comment: {operation}"
        );
    }
    // The stream shares GetInsights' path and is described in prose.
    assert_eq!(
        paths["/api/v1/hub/insights"]["get"]["operationId"],
        "GetInsights"
    );
    // GET parameters are the request's fields.
    let params: Vec<&str> = paths["/api/v1/hub/strategies"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        params.contains(&"metric") && params.contains(&"current_value"),
        "{params:?}"
    );
    // Every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    let mut rest = text.as_str();
    let mut refs = 0;
    while let Some(at) = rest.find("#/components/schemas/") {
        let tail = &rest[at + "#/components/schemas/".len()..];
        let name = &tail[..tail.find('"').unwrap()];
        assert!(schemas.contains_key(name), "{name} is not defined");
        refs += 1;
        rest = tail;
    }
    assert!(refs > 20, "{refs} references");
    let register = &schemas["learninghub.v1.RegisterRequest"]["properties"];
    assert_eq!(register["instanceId"]["type"], "string");
}

/// Every path the design names is annotated in the `.proto` and served.
#[test]
fn every_path_of_the_design_is_routed() {
    let routes = learning_hub::gateway::RouteTable::from_descriptors().unwrap();
    let listed: Vec<(String, String)> = routes
        .list()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    for (method, path) in [
        ("POST", "/api/v1/hub/register"),
        ("GET", "/api/v1/hub/status"),
        ("GET", "/api/v1/hub/instances"),
        ("POST", "/api/v1/hub/share-pattern"),
        ("GET", "/api/v1/hub/patterns"),
        ("POST", "/api/v1/hub/share-strategy"),
        ("GET", "/api/v1/hub/strategies"),
        ("POST", "/api/v1/hub/share-insight"),
        ("GET", "/api/v1/hub/insights"),
        ("POST", "/api/v1/hub/share-failure"),
        ("GET", "/api/v1/hub/failures"),
        ("POST", "/api/v1/hub/bootstrap"),
    ] {
        assert!(
            listed.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not routed: {listed:?}"
        );
    }
}
