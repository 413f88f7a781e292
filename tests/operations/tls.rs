//! TLS refusals, end to end: who the transport lets in, and how the auth
//! layer treats what the handshake established.

use crate::common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use learning_hub::{auth::Identity, pb, pki};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType, date_time_ymd,
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

/// What became of one `GetStatus` attempt over a hand-built channel.
#[derive(Debug)]
enum Attempt {
    /// The channel could not be established (TCP, TLS or HTTP/2).
    ConnectFailed(String),
    /// The channel came up but the call failed.
    CallFailed(tonic::Status),
    /// The call succeeded.
    Succeeded,
}

impl Attempt {
    /// Panics unless the attempt was refused at the transport: no channel,
    /// or a call that died with the connection. With TLS 1.3 the client
    /// considers its side of the handshake done before the server has
    /// checked its certificate, so the refusal (the server's alert) usually
    /// surfaces on the first call, as a transport error carrying the alert.
    /// `expected`: the alert (or I/O error) the failure must mention, any
    /// of them; empty for any.
    #[track_caller]
    fn assert_refused_by_transport(&self, expected: &[&str]) {
        let detail = match self {
            Attempt::ConnectFailed(why) => why.clone(),
            Attempt::CallFailed(status) => {
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::Unknown),
                    "expected the connection to be refused, got {status:?}"
                );
                format!("{status:?}")
            }
            Attempt::Succeeded => panic!("the call must never succeed"),
        };
        assert!(
            expected.is_empty() || expected.iter().any(|e| detail.contains(e)),
            "expected a failure mentioning one of {expected:?}, got {detail}"
        );
    }
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.as_ref().display()))
}

/// A `GetStatus` call to `url` over a fresh channel, bounded in time so a
/// hung handshake fails the test instead of stalling it.
async fn attempt(url: String, tls: Option<ClientTlsConfig>) -> Attempt {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut endpoint = Endpoint::from_shared(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        endpoint = match endpoint.tls_config(tls) {
            Ok(endpoint) => endpoint,
            Err(e) => return Attempt::ConnectFailed(format!("{e:?}")),
        };
    }
    let attempt = async {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return Attempt::ConnectFailed(format!("{e} ({e:?})")),
        };
        match pb::hub_client::HubClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
        {
            Ok(_) => Attempt::Succeeded,
            Err(status) => Attempt::CallFailed(status),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("attempt neither succeeded nor failed within 10 s")
}

/// TLS trusting the hub's CA, with the client certificate `cert`/`key` if
/// given.
fn tls_config(ca: &Path, identity: Option<(&Path, &Path)>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert), read(key)));
    }
    tls
}

async fn tls_attempt(hub: &TestHub, identity: Option<(&Path, &Path)>) -> Attempt {
    let ca = hub.certs_dir().join(pki::CA_CERT);
    attempt(hub.url(), Some(tls_config(&ca, identity))).await
}

async fn instance_total(hub: &TestHub) -> u64 {
    hub.operator()
        .await
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .total
}

/// 1. Without a client certificate no call gets through.
#[tokio::test]
async fn client_without_certificate_is_refused() {
    let hub = TestHub::start().await;
    let outcome = tls_attempt(&hub, None).await;
    outcome.assert_refused_by_transport(&["CertificateRequired"]);
    // The hub is unaffected.
    assert_eq!(instance_total(&hub).await, 0);
}

/// 2. A certificate from another CA is refused, even with a valid-looking
/// hub identity in it.
#[tokio::test]
async fn certificate_from_a_foreign_ca_is_refused() {
    let hub = TestHub::start().await;
    let other = tempfile::tempdir().unwrap();
    pki::generate_dev_pki(other.path()).unwrap();
    let foreign = pki::issue(other.path(), &Identity::instance("a"), false).unwrap();

    // Every dev CA has its own name, so no chain to the hub's CA exists.
    let refusals = ["UnknownCA"];
    let outcome = tls_attempt(&hub, Some((&foreign.cert, &foreign.key))).await;
    outcome.assert_refused_by_transport(&refusals);

    // The foreign CA's operator certificate fares no better.
    let foreign_operator = pki::CertPaths::for_name(other.path(), pki::DEFAULT_OPERATOR);
    tls_attempt(&hub, Some((&foreign_operator.cert, &foreign_operator.key)))
        .await
        .assert_refused_by_transport(&refusals);
}

/// 3. An instance cannot register under another instance's id.
#[tokio::test]
async fn register_under_another_identity_is_denied() {
    let hub = TestHub::start().await;
    let a = hub.client("inst-a").await;
    let status = a
        .register(pb::RegisterRequest {
            instance_id: "inst-b".into(),
            region: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("inst-b") && status.message().contains("inst-a"),
        "the refusal names both ids: {status:?}"
    );
    assert_eq!(instance_total(&hub).await, 0, "nothing was registered");

    // And it cannot share as anyone, not being registered under its own id.
    let status = a
        .share_strategy(strategy_outcome("warmup", "accuracy", true, 0.1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(instance_total(&hub).await, 0);
}

/// Writes `name.pem`/`name.key` into `dir`: a client certificate signed by
/// the hub's CA with only a DNS SAN, i.e. no hub identity.
fn issue_without_identity(certs_dir: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let san = SanType::DnsName(format!("{name}.example.com").try_into().unwrap());
    issue_with_san(certs_dir, dir, name, san)
}

/// Like [`issue_without_identity`], with the subject alternative name `san`.
fn issue_with_san(certs_dir: &Path, dir: &Path, name: &str, san: SanType) -> (PathBuf, PathBuf) {
    let ca_key =
        KeyPair::from_pem(&String::from_utf8(read(certs_dir.join(pki::CA_KEY))).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(
        &String::from_utf8(read(certs_dir.join(pki::CA_CERT))).unwrap(),
        ca_key,
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![san];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// 4. A certificate the CA signed but that names no hub identity gets
/// through the handshake and is then refused on every call, with the
/// reason.
#[tokio::test]
async fn certificate_without_hub_identity_is_denied() {
    let hub = TestHub::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let (cert, key) = issue_without_identity(hub.certs_dir(), scratch.path(), "rogue");

    let ca = hub.certs_dir().join(pki::CA_CERT);
    let channel = Endpoint::from_shared(hub.url())
        .unwrap()
        .tls_config(tls_config(&ca, Some((&cert, &key))))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("the handshake itself succeeds: the chain is valid");
    let mut client = pb::hub_client::HubClient::new(channel);

    let read_status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap_err();
    let write_status = client
        .register(pb::RegisterRequest {
            instance_id: "rogue".into(),
            region: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    for status in [read_status, write_status] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status
                .message()
                .contains("spiffe://learning-hub/instance/<id>"),
            "the refusal names the missing identity: {status:?}"
        );
    }
    assert_eq!(instance_total(&hub).await, 0);

    // The server's own certificate (a hub-CA certificate without the
    // ClientAuth usage) is no client certificate at all.
    let server = pki::CertPaths::server(hub.certs_dir());
    // webpki refuses it for its extended key usage (serverAuth only).
    tls_attempt(&hub, Some((&server.cert, &server.key)))
        .await
        .assert_refused_by_transport(&["UnsupportedCertificate"]);
}

/// 4b. A certificate the CA signed for a name no instance may have — `.`,
/// `..`, or one reserved for the hub's files and the operator — carries no
/// hub identity either (`certs issue` refuses these names; another CA
/// tool might not).
#[tokio::test]
async fn certificates_naming_reserved_or_dot_instances_are_denied() {
    let hub = TestHub::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let ca = hub.certs_dir().join(pki::CA_CERT);
    for (file, id) in [
        ("dot", "."),
        ("dotdot", ".."),
        ("op", "operator"),
        ("crl", "crl"),
    ] {
        let uri = format!("spiffe://learning-hub/instance/{id}");
        let (cert, key) = issue_with_san(
            hub.certs_dir(),
            scratch.path(),
            file,
            SanType::URI(uri.clone().try_into().unwrap()),
        );
        let channel = Endpoint::from_shared(hub.url())
            .unwrap()
            .tls_config(tls_config(&ca, Some((&cert, &key))))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let status = pb::hub_client::HubClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{uri}: {status:?}");
    }
}

/// 5. Operators read everything and share nothing.
#[tokio::test]
async fn operator_reads_but_cannot_share() {
    let hub = TestHub::start().await;
    hub.registered("inst-a").await;
    let op = hub.operator().await;

    let denied = |what: &str, result: Result<(), tonic::Status>| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(
            status.message().contains("operator operator"),
            "{what}: names the caller: {status:?}"
        );
    };
    denied(
        "Register",
        op.register(pb::RegisterRequest {
            instance_id: "operator".into(),
            region: "test".into(),
            ..Default::default()
        })
        .await
        .map(drop),
    );
    denied(
        "ShareStrategy",
        op.share_strategy(strategy_outcome("warmup", "accuracy", true, 0.1))
            .await
            .map(drop),
    );
    denied(
        "ShareInsight",
        op.share_insight(insight("from an operator"))
            .await
            .map(drop),
    );
    denied(
        "SharePattern",
        op.share_pattern(pb::SharePatternRequest {
            metrics: [("accuracy".to_string(), metric(0.5, true))].into(),
            cycles_until_plateau: 3,
            ..Default::default()
        })
        .await
        .map(drop),
    );
    denied(
        "RecordPatternOutcome",
        op.record_pattern_outcome(pb::RecordPatternOutcomeRequest {
            pattern_id: "p".into(),
            success: true,
            ..Default::default()
        })
        .await
        .map(drop),
    );
    denied(
        "ShareFailure",
        op.share_failure(pb::ShareFailureRequest {
            failure_type: pb::FailureType::Deadlock as i32,
            trigger: "t".into(),
            ..Default::default()
        })
        .await
        .map(drop),
    );
    denied(
        "ShareConfiguration",
        op.share_configuration(pb::ShareConfigurationRequest::default())
            .await
            .map(drop),
    );

    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.instances, 1);
    assert_eq!(status.strategy_outcomes, 0, "no share got through");
    assert_eq!(status.insights, 0, "no share got through");
    op.get_strategies(pb::GetStrategiesRequest {
        metric: "accuracy".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let listed = op
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.instances[0].instance_id, "inst-a");
}

/// 6. Plaintext HTTP/2 against the TLS port gets nowhere.
#[tokio::test]
async fn plaintext_client_is_refused() {
    let hub = TestHub::start().await;
    // The hub reads the HTTP/2 preface as a malformed ClientHello and
    // closes the connection.
    let outcome = attempt(format!("http://{}", hub.addr), None).await;
    outcome.assert_refused_by_transport(&[]);
    assert_eq!(instance_total(&hub).await, 0);
}

/// Opens `n` TCP connections to `addr` that never say anything.
async fn silent_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    sockets
}

/// 7a. Silent peers do not hold up the peers that do speak.
#[tokio::test]
async fn silent_connections_do_not_block_legitimate_clients() {
    let hub = TestHub::start().await;
    let silent = silent_sockets(hub.addr, 20).await;
    let started = std::time::Instant::now();
    let call = async {
        let client = hub.registered("inst-a").await;
        client.get_status(pb::GetStatusRequest {}).await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("a legitimate client is served while silent peers wait");
    assert_eq!(status.instances, 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    drop(silent);
}

/// 7b. A peer that never completes its handshake is disconnected after the
/// handshake timeout.
#[tokio::test]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let hub = TestHub::start_with(|c| {
        c.limits.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = silent_sockets(hub.addr, 3).await;
    let started = std::time::Instant::now();
    for socket in &mut silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf))
            .await
            .expect("the hub closes a silent connection within 2 s");
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("the hub sent {n} bytes to a silent peer"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // The hub still serves.
    let client = hub.registered("inst-a").await;
    client.get_status(pb::GetStatusRequest {}).await.unwrap();
}

/// 8. Records name the instance the certificate proves, not anything the
/// request could claim.
#[tokio::test]
async fn records_are_attributed_to_the_authenticated_instance() {
    let hub = TestHub::start().await;
    let a = hub.registered("inst-a").await;
    let shared = a
        .share_strategy(strategy_outcome("warmup", "accuracy", true, 0.1))
        .await
        .unwrap();
    let record = shared.record.expect("the updated aggregate");
    assert_eq!(record.applications, 1);
    // The per-instance attribution is kept, and shown to operators only.
    assert!(record.instances.is_empty());
    let plateau = std::collections::BTreeMap::from([("accuracy".to_string(), metric(0.7, true))]);
    a.share_pattern(pb::SharePatternRequest {
        metrics: plateau.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let seen_by_operator = hub
        .operator()
        .await
        .get_patterns(pb::GetPatternsRequest {
            metrics: plateau,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        seen_by_operator.matches[0]
            .pattern
            .as_ref()
            .unwrap()
            .instances,
        ["inst-a"]
    );

    let listed = hub
        .operator()
        .await
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.instances.len(), 1);
    assert_eq!(listed.instances[0].instance_id, "inst-a");
    assert_eq!(listed.instances[0].shared_records, 2);
}

/// 9. A refused client certificate is answered with the TLS alert that
/// says why, at once — not a reset, not a silent timeout — whether the
/// client speaks TLS 1.3 (it learns on its first read) or 1.2 (its
/// handshake fails).
#[tokio::test]
async fn refused_certificates_get_the_alert_that_says_why_at_once() {
    let hub = TestHub::start_with(|c| {
        c.cert_check_interval = Some(Duration::from_millis(100));
    })
    .await;
    let certs = hub.certs_dir().to_path_buf();
    let ca = certs.join(pki::CA_CERT);
    let revoked = pki::issue(&certs, &Identity::instance("revoked-1"), false).unwrap();
    pki::revoke(&certs, "revoked-1").unwrap();
    let other = tempfile::tempdir().unwrap();
    pki::generate_dev_pki(other.path()).unwrap();
    let foreign = pki::issue(other.path(), &Identity::instance("a"), false).unwrap();
    let server = pki::CertPaths::for_name(&certs, "server");
    // Until the reload has picked up crl.pem, the revoked one is accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !matches!(
        tls_attempt(&hub, Some((&revoked.cert, &revoked.key))).await,
        Attempt::CallFailed(status) if format!("{status:?}").contains("CertificateRevoked")
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "crl.pem not loaded: {:?}",
            tls_attempt(&hub, Some((&revoked.cert, &revoked.key))).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    type Case<'a> = (&'a str, Option<(&'a Path, &'a Path)>, &'a str);
    let cases: [Case; 4] = [
        ("no certificate", None, "CertificateRequired"),
        (
            "another CA's certificate",
            Some((&foreign.cert, &foreign.key)),
            "UnknownCA",
        ),
        (
            "a revoked certificate",
            Some((&revoked.cert, &revoked.key)),
            "CertificateRevoked",
        ),
        (
            "the server's certificate as a client's",
            Some((&server.cert, &server.key)),
            "UnsupportedCertificate",
        ),
    ];
    for (case, identity, alert) in cases {
        for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
            let (seen, took) = raw_tls_refusal(hub.addr, &ca, identity, versions).await;
            let version = format!("{:?}", versions[0].version);
            assert!(
                seen.contains(&format!("received fatal alert: {alert}")),
                "{case} over {version}: expected alert {alert}, saw {seen:?}"
            );
            assert!(
                took < Duration::from_millis(900),
                "{case} over {version}: the alert took {took:?}"
            );
        }
    }
}
