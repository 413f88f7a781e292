//! Certificate rotation and revocation on a running hub: the server
//! certificate and the CA change under load without a failed call, broken
//! files change nothing, and a revoked client certificate is refused — on
//! new connections at the handshake, on open ones from the next reload —
//! while other clients carry on. The hubs check their files every 100 ms
//! (`Config::cert_check_interval`); the last test drives the binary with
//! its CLI and SIGHUP.

use crate::common;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use learning_hub::{
    auth::Identity,
    client::{ClientPem, ClientSettings, HubClient},
    config::Config,
    pb, pki,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{net::TcpStream, task::JoinHandle};
use tonic::Code;

/// How often the test hubs look at their certificate files.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a connection with a refused certificate stays open.
const GRACE: Duration = Duration::from_millis(500);

fn fast_reload(config: &mut Config) {
    config.cert_check_interval = Some(CHECK_EVERY);
    config.limits.refused_certificate_grace = GRACE;
    // The loops below call far more often than 1000 times an hour.
    config.hub.rate_limit_per_hour = 0;
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.as_ref().display()))
}

/// Replaces `path` the way an operator should: written aside, renamed.
fn replace(path: &Path, contents: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn leaf_der(pem_path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_path).unwrap().to_vec()
}

fn serial(der: &[u8]) -> String {
    pki::certificate_serial(der).unwrap()
}

/// The TLS material of identity `name` in `dir`, trusting `trust`.
fn pem(dir: &Path, name: &str, trust: &[u8]) -> ClientPem {
    ClientPem {
        ca: trust.to_vec(),
        cert: read(dir.join(format!("{name}.pem"))),
        key: read(dir.join(format!("{name}.key"))),
    }
}

fn operator_settings(addr: SocketAddr, dir: &Path) -> ClientSettings {
    let mut settings = ClientSettings::new(format!("https://{addr}"), dir, pki::DEFAULT_OPERATOR);
    settings.instance_id = None;
    settings
}

/// The certificate the hub presents to a new connection (a raw TLS
/// handshake with the client certificate of `client`).
async fn presented_certificate(addr: SocketAddr, client: &ClientPem) -> Result<Vec<u8>, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&client.ca) {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(&client.cert)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&client.key).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())?
}

/// Polls `check` every 20 ms until it yields something; panics with
/// `what` after `within`. Returns what it yielded and how long it took.
async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(found) = check().await {
            return (found, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// Waits until a new connection with `client`'s certificate is served
/// `expected`; returns how long that took.
async fn wait_until_served(addr: SocketAddr, client: &ClientPem, expected: &[u8]) -> Duration {
    let what = format!(
        "new connections are served certificate {}",
        serial(expected)
    );
    wait_for(Duration::from_secs(5), &what, move || async move {
        (presented_certificate(addr, client).await.as_deref() == Ok(expected)).then_some(())
    })
    .await
    .1
}

/// Waits until a call on `client`'s open connection fails; returns the
/// status and how long that took.
async fn wait_until_refused(client: &HubClient, what: &str) -> (tonic::Status, Duration) {
    wait_for(Duration::from_secs(5), what, move || async move {
        client.get_status(pb::GetStatusRequest {}).await.err()
    })
    .await
}

/// Operator calls in a loop while certificates change: two callers on one
/// long-lived connection, and one that opens a new connection (a new
/// handshake) for every call.
struct CallLoad {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct LoadReport {
    calls: u64,
    connections: u64,
    failures: Vec<String>,
}

impl CallLoad {
    async fn start(settings: ClientSettings, client: ClientPem) -> Self {
        let load = CallLoad {
            stop: Arc::default(),
            calls: Arc::default(),
            connections: Arc::default(),
            failures: Arc::default(),
            tasks: Vec::new(),
        };
        let long_lived = HubClient::connect_pem(&settings, client.clone())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (client, stop, calls, failures) = (
                long_lived.clone(),
                load.stop.clone(),
                load.calls.clone(),
                load.failures.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get_status(pb::GetStatusRequest {}).await {
                        Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("long-lived: {e:?}"));
                            0
                        }
                    };
                }
            }));
        }
        let (stop, calls, connections, failures) = (
            load.stop.clone(),
            load.calls.clone(),
            load.connections.clone(),
            load.failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = match HubClient::connect_pem(&settings, client.clone()).await {
                    Ok(fresh) => {
                        connections.fetch_add(1, Ordering::Relaxed);
                        fresh
                            .get_status(pb::GetStatusRequest {})
                            .await
                            .map(drop)
                            .map_err(|e| format!("new connection's call: {e:?}"))
                    }
                    Err(e) => Err(format!("new connection: {e}")),
                };
                match outcome {
                    Ok(()) => {
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
        CallLoad { tasks, ..load }
    }

    async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        LoadReport {
            calls: self.calls.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            failures: self.failures.lock().unwrap().clone(),
        }
    }
}

impl LoadReport {
    #[track_caller]
    fn assert_no_failures(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} calls failed: {:?}",
            self.failures.len(),
            self.calls + self.failures.len() as u64,
            &self.failures[..self.failures.len().min(5)]
        );
        assert!(
            self.calls >= 20 && self.connections >= 5,
            "too little load to prove anything: {self:?}"
        );
    }
}

/// (a) A new server certificate from the same CA: picked up for new
/// connections within the check interval, no call fails, an insight
/// stream opened before keeps delivering.
#[tokio::test]
async fn server_certificate_rotates_without_a_failed_call() {
    let hub = TestHub::start_with(fast_reload).await;
    let dir = hub.certs_dir().to_path_buf();
    let operator = pem(&dir, pki::DEFAULT_OPERATOR, &read(dir.join(pki::CA_CERT)));
    let old = leaf_der(&dir.join(pki::SERVER_CERT));
    assert_eq!(
        presented_certificate(hub.addr, &operator).await.unwrap(),
        old
    );

    let watcher = hub.registered("watcher").await;
    let mut insights = watcher
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    let load = CallLoad::start(operator_settings(hub.addr, &dir), operator.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new_serial = pki::renew_server(&dir).unwrap();
    let new = leaf_der(&dir.join(pki::SERVER_CERT));
    assert_ne!(new, old);
    assert_eq!(serial(&new), new_serial);
    let took = wait_until_served(hub.addr, &operator, &new).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    report.assert_no_failures();

    // The stream opened under the old certificate still delivers.
    watcher
        .share_insight(insight("after rotation"))
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(5), insights.message())
        .await
        .expect("the open stream delivers")
        .unwrap()
        .expect("an insight");
    assert_eq!(delivered.insight.unwrap().title, "after rotation");
    println!(
        "server certificate {} -> {}: new connections got it {took:?} after the files changed; \
         {} calls ({} on new connections) during the rotation, 0 failed",
        serial(&old),
        new_serial,
        report.calls,
        report.connections
    );
}

/// (a) A CA rollover: trust old + new, switch the server certificate to
/// the new CA, clients move to new-CA certificates — no call fails — then
/// retire the old CA: its certificates are refused, on new connections and
/// on open ones.
#[tokio::test]
async fn ca_rollover_without_a_failed_call() {
    let hub = TestHub::start_with(fast_reload).await;
    let dir = hub.certs_dir().to_path_buf();
    let next = tempfile::tempdir().unwrap();
    let next = next.path();
    pki::generate_dev_pki(next).unwrap(); // the new CA, its server and operator certificates
    let old_ca = read(dir.join(pki::CA_CERT));
    let new_ca = read(next.join(pki::CA_CERT));
    let both = [old_ca, new_ca.clone()].concat();
    // Clients were given both CAs to trust before the rollover began.
    let old_operator = pem(&dir, pki::DEFAULT_OPERATOR, &both);
    let new_operator = pem(next, pki::DEFAULT_OPERATOR, &both);
    let settings = operator_settings(hub.addr, &dir);
    let calls = |client: ClientPem| {
        let settings = settings.clone();
        async move {
            let hub = HubClient::connect_pem(&settings, client)
                .await
                .map_err(|e| e.to_string())?;
            hub.get_status(pb::GetStatusRequest {})
                .await
                .map(drop)
                .map_err(|e| format!("{e:?}"))
        }
    };
    assert!(
        calls(new_operator.clone()).await.is_err(),
        "not trusted yet"
    );
    let load = CallLoad::start(settings.clone(), old_operator.clone()).await;

    // 1. Trust the new CA beside the old one.
    replace(&dir.join(pki::CA_CERT), &both);
    let (calls_ref, new_operator_ref) = (&calls, &new_operator);
    let (_, trusted) = wait_for(
        Duration::from_secs(5),
        "the new CA's clients get in",
        move || async move { calls_ref(new_operator_ref.clone()).await.ok() },
    )
    .await;
    // 2. Serve a certificate of the new CA (key first, then certificate: the
    //    hub refuses the mismatched pair in between and keeps the old one).
    replace(
        &dir.join(pki::SERVER_KEY),
        &read(next.join(pki::SERVER_KEY)),
    );
    replace(
        &dir.join(pki::SERVER_CERT),
        &read(next.join(pki::SERVER_CERT)),
    );
    let new_server = leaf_der(&next.join(pki::SERVER_CERT));
    let switched = wait_until_served(hub.addr, &old_operator, &new_server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    report.assert_no_failures();

    // 3. Retire the old CA: first a connection opened with an old-CA
    //    certificate beforehand.
    let open_old = HubClient::connect_pem(&settings, old_operator.clone())
        .await
        .unwrap();
    open_old.get_status(pb::GetStatusRequest {}).await.unwrap();
    replace(&dir.join(pki::CA_CERT), &new_ca);
    let (status, refused) =
        wait_until_refused(&open_old, "the open old-CA connection is refused").await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("no longer a CA in ca.pem"),
        "refused with the reason: {status:?}"
    );
    let fresh = calls(old_operator.clone()).await.unwrap_err();
    assert!(
        fresh.contains("UnknownCA"),
        "refused at the handshake: {fresh}"
    );
    calls(new_operator)
        .await
        .expect("the new CA's clients carry on");
    println!(
        "CA rollover: new CA trusted after {trusted:?}, its server certificate served after \
         {switched:?}; {} calls ({} on new connections), 0 failed; old CA retired: open \
         connection refused after {refused:?}",
        report.calls, report.connections
    );
}

/// (b) Broken or mismatched files are refused by the reload; the hub keeps
/// serving with what it had, and picks up the next good files.
#[tokio::test]
async fn broken_certificate_files_do_not_break_serving() {
    let hub = TestHub::start_with(fast_reload).await;
    let dir = hub.certs_dir().to_path_buf();
    let operator = pem(&dir, pki::DEFAULT_OPERATOR, &read(dir.join(pki::CA_CERT)));
    let served = leaf_der(&dir.join(pki::SERVER_CERT));
    let load = CallLoad::start(operator_settings(hub.addr, &dir), operator.clone()).await;
    let other = tempfile::tempdir().unwrap();
    pki::generate_dev_pki(other.path()).unwrap();
    let foreign_crl = {
        pki::issue(other.path(), &Identity::instance("x"), false).unwrap();
        pki::revoke(other.path(), "x").unwrap();
        read(other.path().join(pki::CRL))
    };
    let breakages: [(&str, Vec<u8>); 7] = [
        (pki::SERVER_CERT, b"not a certificate".to_vec()),
        (pki::SERVER_CERT, Vec::new()),
        (pki::SERVER_KEY, read(other.path().join(pki::SERVER_KEY))),
        (pki::CA_CERT, Vec::new()),
        (
            pki::CA_CERT,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
        ),
        (pki::CRL, b"garbage".to_vec()),
        // A CRL of a CA the hub does not trust: loads, revokes nothing.
        (pki::CRL, foreign_crl),
    ];
    for (file, contents) in breakages {
        let path = dir.join(file);
        let good = std::fs::read(&path).ok();
        // Written in place, as a careless operator might.
        std::fs::write(&path, contents).unwrap();
        tokio::time::sleep(CHECK_EVERY * 3).await;
        assert_eq!(
            presented_certificate(hub.addr, &operator).await,
            Ok(served.clone()),
            "after breaking {file}: new connections are served as before"
        );
        match good {
            Some(good) => std::fs::write(&path, good).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    let report = load.stop().await;
    report.assert_no_failures();

    // The reloader survived all of it.
    pki::renew_server(&dir).unwrap();
    let renewed = leaf_der(&dir.join(pki::SERVER_CERT));
    wait_until_served(hub.addr, &operator, &renewed).await;
    println!(
        "7 broken files: {} calls ({} on new connections), 0 failed",
        report.calls, report.connections
    );
}

/// (c) Revoking an instance's certificate: its open connection's calls are
/// refused with the reason within the check interval, its stream ends
/// after the grace, new connections fail the handshake; another instance
/// and a re-issued certificate for the same instance are unaffected.
#[tokio::test]
async fn revoked_instance_certificate_is_refused_on_open_and_new_connections() {
    let hub = TestHub::start_with(fast_reload).await;
    let dir = hub.certs_dir().to_path_buf();
    let bad = hub.registered("bad").await;
    let good = hub.registered("good").await;
    let mut bad_stream = bad
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    bad.get_status(pb::GetStatusRequest {}).await.unwrap();

    let started = Instant::now();
    let revocation = pki::revoke(&dir, "bad").unwrap();
    assert_eq!(revocation.serial, serial(&leaf_der(&dir.join("bad.pem"))));
    let (status, refused) =
        wait_until_refused(&bad, "the open connection's calls are refused").await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("revoked") && status.message().contains(&revocation.serial),
        "says the certificate is revoked and which: {status:?}"
    );
    assert!(
        refused < Duration::from_secs(2),
        "refused after {refused:?}"
    );

    // The other instance carries on, on its open connection and new ones.
    good.get_status(pb::GetStatusRequest {}).await.unwrap();
    hub.client("good")
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();

    // After the grace the connection closes, which ends the stream.
    let ended = tokio::time::timeout(Duration::from_secs(5), bad_stream.message())
        .await
        .expect("the revoked instance's stream ends");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "no insight for it: {ended:?}"
    );
    let closed = started.elapsed();

    // New connections with the revoked certificate fail the handshake.
    let settings = hub.instance_settings("bad").await;
    let fresh = match HubClient::connect(&settings).await {
        Err(e) => e.to_string(),
        Ok(client) => format!(
            "{:?}",
            client
                .get_status(pb::GetStatusRequest {})
                .await
                .expect_err("a revoked certificate gets no call through")
        ),
    };
    assert!(
        fresh.contains("CertificateRevoked"),
        "the TLS alert: {fresh}"
    );

    // Revocation is per certificate: a new one for the same instance works.
    pki::issue(&dir, &Identity::instance("bad"), true).unwrap();
    hub.client("bad")
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    println!(
        "revoked serial {}: open connection refused after {refused:?} (check every \
         {CHECK_EVERY:?}), closed and its stream ended after {closed:?} (grace {GRACE:?})",
        revocation.serial
    );
}

fn hub_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_learning-hub"));
    command.env("RUST_LOG", "warn");
    command
}

/// Runs `learning-hub certs ARGS --certs-dir DIR`.
fn certs(dir: &Path, args: &[&str]) -> Output {
    hub_binary()
        .arg("certs")
        .args(args)
        .arg("--certs-dir")
        .arg(dir)
        .output()
        .expect("run learning-hub")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sighup(hub: &HubProcess) {
    let sent = Command::new("kill")
        .arg("-HUP")
        .arg(hub.child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
}

/// (d) The operator's commands against the binary: `certs revoke` (by
/// instance id and by file, twice), `certs revoked`, `certs renew-server`,
/// each taken up by `serve` on SIGHUP (the periodic check is 10 s).
#[tokio::test]
async fn cli_revoke_and_renew_take_effect_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let data = tempfile::tempdir().unwrap();
    for args in [
        &["init"][..],
        &["issue", "w1"],
        &["issue", "w2"],
        &["issue", "w3"],
    ] {
        let done = certs(dir, args);
        assert!(done.status.success(), "{args:?}: {}", text(&done.stderr));
    }
    let hub_started = Instant::now();
    let hub = HubProcess::spawn(data.path(), dir, 0);
    let w1 = connect(hub.addr, dir, &Identity::instance("w1")).await;
    let w2 = connect(hub.addr, dir, &Identity::instance("w2")).await;
    w1.get_status(pb::GetStatusRequest {}).await.unwrap();

    let w1_serial = serial(&leaf_der(&dir.join("w1.pem")));
    let revoked = certs(dir, &["revoke", "w1"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert_eq!(
        text(&revoked.stdout).trim(),
        format!("revoked instance w1 serial {w1_serial}")
    );
    assert!(
        text(&revoked.stderr).contains("SIGHUP"),
        "says how it takes effect"
    );
    let again = certs(dir, &["revoke", "w1"]);
    assert!(again.status.success());
    assert!(
        text(&again.stdout).starts_with("already revoked"),
        "{}",
        text(&again.stdout)
    );
    let by_file = certs(dir, &["revoke", dir.join("w3.pem").to_str().unwrap()]);
    assert!(by_file.status.success(), "{}", text(&by_file.stderr));
    let unknown = certs(dir, &["revoke", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("nobody.pem"),
        "{}",
        text(&unknown.stderr)
    );
    let listed = certs(dir, &["revoked"]);
    let listed = text(&listed.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.lines().next().unwrap().starts_with(&w1_serial),
        "{listed}"
    );

    // The hub checks its files every 10 s; SIGHUP makes it look now.
    sighup(&hub);
    let (status, refused) = wait_until_refused(&w1, "w1 is refused after SIGHUP").await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(
        hub_started.elapsed() < Duration::from_secs(10),
        "before the first periodic check: SIGHUP did it"
    );
    w2.get_status(pb::GetStatusRequest {}).await.unwrap();

    // A new server certificate, also on SIGHUP.
    let renewed = certs(dir, &["renew-server"]);
    assert!(renewed.status.success(), "{}", text(&renewed.stderr));
    let new_server = leaf_der(&dir.join(pki::SERVER_CERT));
    sighup(&hub);
    let w2_pem = pem(dir, "w2", &read(dir.join(pki::CA_CERT)));
    let switched = wait_until_served(hub.addr, &w2_pem, &new_server).await;
    w2.get_status(pb::GetStatusRequest {})
        .await
        .expect("the open connection is unaffected");
    println!(
        "CLI: w1 refused {refused:?} after SIGHUP; renewed server certificate served {switched:?} after SIGHUP"
    );
}
