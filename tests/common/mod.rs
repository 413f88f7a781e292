//! Test harness: a real hub on 127.0.0.1:0 with a temp sled dir and a PKI
//! generated for the test, and real clients talking to it over mutual TLS.
#![allow(dead_code)]

pub mod cluster;
pub mod commands;
pub mod hooked;
pub mod pg;
pub mod proxy;

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use learning_hub::{
    auth::Identity,
    client::{ClientSettings, HubClient},
    clock::Clock,
    config::Config,
    pb, pki,
    store::Store,
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Opens the hub's store in its data directory (each start and restart).
pub type StoreOpener = Arc<dyn Fn(&Path) -> learning_hub::Result<Store> + Send + Sync>;

/// What the development PKI consists of (`pki::generate_dev_pki`).
pub const DEV_PKI_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "operator.pem",
    "operator.key",
];

/// A hub running in this process.
pub struct TestHub {
    pub addr: SocketAddr,
    pub config: Config,
    dirs: Arc<(TempDir, TempDir)>,
    clock: Option<Arc<dyn Clock>>,
    /// `None`: sled in the data directory, as in production.
    store: Option<StoreOpener>,
    /// API keys issued so far, by instance (they survive restarts).
    keys: Arc<Mutex<HashMap<String, String>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<learning_hub::Result<()>>>,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a hub after letting `adjust` change the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_full(None, None, adjust).await
    }

    /// Starts a hub whose clock the test controls.
    pub async fn start_with_clock(clock: Arc<dyn Clock>, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_full(Some(clock), None, adjust).await
    }

    /// Starts a hub on a store `open` makes (e.g. sled under a fault
    /// injector); restarts open it the same way.
    pub async fn start_with_store(
        clock: Arc<dyn Clock>,
        open: StoreOpener,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start_full(Some(clock), Some(open), adjust).await
    }

    /// Starts a hub whose PKI is `other`'s (the same CA, server and
    /// operator certificates): hubs of several regions that trust each
    /// other.
    pub async fn start_sharing_pki(other: &TestHub, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_pki(None, None, Some(other.certs_dir()), adjust).await
    }

    async fn start_full(
        clock: Option<Arc<dyn Clock>>,
        store: Option<StoreOpener>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start_pki(clock, store, None, adjust).await
    }

    async fn start_pki(
        clock: Option<Arc<dyn Clock>>,
        store: Option<StoreOpener>,
        pki_from: Option<&Path>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let dirs = Arc::new((tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()));
        match pki_from {
            Some(from) => {
                for file in DEV_PKI_FILES {
                    std::fs::copy(from.join(file), dirs.1.path().join(file)).unwrap();
                }
            }
            None => pki::generate_dev_pki(dirs.1.path()).unwrap(),
        }
        let mut config = Config::new(dirs.0.path().join("data"), dirs.1.path());
        config.generate_dev_pki = false;
        config.limits.drain_timeout = Duration::from_secs(3);
        adjust(&mut config);
        Self::launch(
            config,
            dirs,
            clock,
            store,
            Arc::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
    }

    async fn launch(
        config: Config,
        dirs: Arc<(TempDir, TempDir)>,
        clock: Option<Arc<dyn Clock>>,
        store: Option<StoreOpener>,
        keys: Arc<Mutex<HashMap<String, String>>>,
        bind: SocketAddr,
    ) -> Self {
        // sled lets go of its directory lock from a background thread, a
        // moment after the previous hub in this process dropped the store:
        // an in-process restart can find it still held (a real restart is
        // a new process, whose lock the old one's exit released).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let listener = bind_retrying(bind).await;
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = rx.await;
            };
            let task = match (clock.clone(), store.clone()) {
                (clock, Some(open)) => tokio::spawn(learning_hub::server::run_with_store(
                    listener,
                    config.clone(),
                    clock.unwrap_or_else(|| Arc::new(learning_hub::clock::SystemClock)),
                    move |dir: &Path| open(dir),
                    shutdown,
                )),
                (Some(clock), None) => tokio::spawn(learning_hub::server::run_with_clock(
                    listener,
                    config.clone(),
                    clock,
                    shutdown,
                )),
                (None, None) => tokio::spawn(learning_hub::server::run(
                    listener,
                    config.clone(),
                    shutdown,
                )),
            };
            let mut hub = TestHub {
                addr,
                config: config.clone(),
                dirs: dirs.clone(),
                clock: clock.clone(),
                store: store.clone(),
                keys: keys.clone(),
                shutdown: Some(tx),
                task: Some(task),
            };
            match hub.wait_ready().await {
                Ok(()) => return hub,
                Err(e)
                    if e.contains("is in use by another hub")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        // Generous: under a loaded test run, a restarted hub can take a
        // few seconds to load and answer.
        for _ in 0..1000 {
            if let Ok(op) = self.try_operator().await {
                if op.get_status(pb::GetStatusRequest {}).await.is_ok() {
                    return Ok(());
                }
            }
            // A hub that failed to start says why instead of timing out.
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = self.task.take().unwrap().await;
                return Err(format!("hub stopped before it became ready: {result:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("hub did not become ready".into())
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn certs_dir(&self) -> &Path {
        self.dirs.1.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Settings for `name`, issuing its certificate on first use.
    pub fn settings(&self, identity: &Identity) -> ClientSettings {
        let paths = pki::CertPaths::for_name(self.certs_dir(), &identity.name);
        if !paths.cert.exists() {
            pki::issue(self.certs_dir(), identity, false).unwrap();
        }
        let mut settings = ClientSettings::new(self.url(), self.certs_dir(), &identity.name);
        settings.instance_id = identity.instance_id().map(str::to_string);
        settings
    }

    /// Settings for instance `id` with its API key (issued by the operator
    /// on first use, as an operator would provision an instance).
    pub async fn instance_settings(&self, id: &str) -> ClientSettings {
        let mut settings = self.settings(&Identity::instance(id));
        settings.api_key = Some(self.api_key(id).await);
        settings
    }

    /// Instance `id`'s API key, issued on first use.
    pub async fn api_key(&self, id: &str) -> String {
        if let Some(key) = self.keys.lock().unwrap().get(id) {
            return key.clone();
        }
        let key = self.operator().await.issue_api_key(id).await.unwrap();
        self.keys
            .lock()
            .unwrap()
            .insert(id.to_string(), key.clone());
        key
    }

    /// Forgets a key the test revoked or replaced.
    pub fn forget_key(&self, id: &str) {
        self.keys.lock().unwrap().remove(id);
    }

    /// A client with the certificate and API key of instance `id` (not
    /// registered). In insecure dev mode, a plaintext client.
    pub async fn client(&self, id: &str) -> HubClient {
        if self.config.insecure_dev {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
            return HubClient::insecure_dev(channel, Some(id.to_string()));
        }
        HubClient::connect(&self.instance_settings(id).await)
            .await
            .unwrap()
    }

    /// A client for instance `id`, registered in region "test".
    pub async fn registered(&self, id: &str) -> HubClient {
        let client = self.client(id).await;
        client
            .register(pb::RegisterRequest {
                instance_id: id.into(),
                region: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        client
    }

    pub async fn try_operator(&self) -> learning_hub::Result<HubClient> {
        if self.config.insecure_dev {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .map_err(|e| learning_hub::Error::Unavailable(e.to_string()))?;
            return Ok(HubClient::insecure_dev(channel, None));
        }
        HubClient::connect(&self.settings(&Identity::operator("operator"))).await
    }

    /// A raw mTLS channel with the operator certificate, for services other
    /// than the hub's (health, reflection).
    pub async fn operator_channel(&self) -> tonic::transport::Channel {
        self.channel_as(&Identity::operator("operator")).await
    }

    /// A raw mTLS channel with `identity`'s certificate (issued on first
    /// use): a peer region's hub, or anyone calling a service directly.
    pub async fn channel_as(&self, identity: &Identity) -> tonic::transport::Channel {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
        let settings = self.settings(identity);
        let read = |path: &Path| std::fs::read(path).unwrap();
        Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&settings.certs.ca)))
                    .identity(TlsIdentity::from_pem(
                        read(&settings.certs.cert),
                        read(&settings.certs.key),
                    )),
            )
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A client with the operator certificate generated with the PKI.
    pub async fn operator(&self) -> HubClient {
        self.try_operator().await.unwrap()
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(&mut self) -> learning_hub::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Stops the hub and starts it again on the same address and data.
    pub async fn restart(&mut self) {
        self.stop().await.unwrap();
        let restarted = Self::launch(
            self.config.clone(),
            self.dirs.clone(),
            self.clock.clone(),
            self.store.clone(),
            self.keys.clone(),
            self.addr,
        )
        .await;
        *self = restarted;
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Rebinding a port just released can race with the old socket's close.
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("cannot bind {addr}");
}

/// The `learning-hub` binary running as a child process.
pub struct HubProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl HubProcess {
    /// Starts `learning-hub serve` on 127.0.0.1:`port` (0: any) and waits
    /// for it to print its address; a development PKI is generated in
    /// `certs_dir` if it has none.
    pub fn spawn(data_dir: &Path, certs_dir: &Path, port: u16) -> Self {
        Self::spawn_with(data_dir, certs_dir, port, &[], &[])
    }

    /// [`HubProcess::spawn`] with more arguments and environment variables
    /// (a replica's `--postgres URL`, say).
    pub fn spawn_with(
        data_dir: &Path,
        certs_dir: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_learning-hub"))
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--certs-dir")
            .arg(certs_dir)
            // The harnesses' directories are not the default `certs`.
            .arg("--init-dev-pki")
            // Harnesses write far more than an instance's hourly budget.
            .args([
                "--rate-limit-per-hour",
                "0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start learning-hub");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("learning-hub listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        HubProcess { child, addr }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects a client to a hub process with certificates in `certs_dir`;
/// an instance gets an API key issued by the operator first.
pub async fn connect(addr: SocketAddr, certs_dir: &Path, identity: &Identity) -> HubClient {
    let paths = pki::CertPaths::for_name(certs_dir, &identity.name);
    if !paths.cert.exists() {
        pki::issue(certs_dir, identity, false).unwrap();
    }
    let mut settings = ClientSettings::new(format!("https://{addr}"), certs_dir, &identity.name);
    settings.instance_id = identity.instance_id().map(str::to_string);
    if let Some(id) = identity.instance_id() {
        let operator = Box::pin(connect(addr, certs_dir, &Identity::operator("operator"))).await;
        settings.api_key = Some(operator.issue_api_key(id).await.unwrap());
    }
    for _ in 0..200 {
        if let Ok(client) = HubClient::connect(&settings).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("cannot connect to {addr}");
}

/// Every stored insight (sequence → title), read by a full replay of the
/// stream until `count` have arrived; a sequence replayed twice fails.
pub async fn replay_insights(client: &HubClient, count: u64) -> BTreeMap<u64, String> {
    let mut replay = client
        .subscribe_insights_once(pb::SubscribeInsightsRequest::default())
        .await
        .unwrap();
    let mut stored = BTreeMap::new();
    while stored.len() < count as usize {
        let insight = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_stream::StreamExt::next(&mut replay),
        )
        .await
        .unwrap_or_else(|_| panic!("replay stopped after {} insights", stored.len()))
        .unwrap()
        .unwrap()
        .insight
        .unwrap();
        assert!(
            stored.insert(insight.sequence, insight.title).is_none(),
            "sequence {} replayed twice",
            insight.sequence
        );
    }
    stored
}

/// [`connect`] as instance `id`, then registers it in `region`.
pub async fn connect_registered(
    addr: SocketAddr,
    certs_dir: &Path,
    id: &str,
    region: &str,
) -> HubClient {
    let client = connect(addr, certs_dir, &Identity::instance(id)).await;
    client
        .register(pb::RegisterRequest {
            instance_id: id.to_string(),
            region: region.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
}

// ---------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------

/// Registers `id` on an in-process hub (no server, no certificate).
pub async fn register_in_process(hub: &learning_hub::hub::Hub, id: &str) {
    hub.register(
        id,
        learning_hub::domain::model::Registration {
            instance_id: id.into(),
            region: "test".into(),
            context: Default::default(),
            capabilities: vec![],
        },
    )
    .await
    .unwrap();
}

pub fn metric(value: f64, stuck: bool) -> pb::MetricState {
    pb::MetricState { value, stuck }
}

pub fn strategy_outcome(
    strategy: &str,
    metric: &str,
    successful: bool,
    delta: f64,
) -> pb::ShareStrategyRequest {
    pb::ShareStrategyRequest {
        strategy: strategy.into(),
        metric: metric.into(),
        value_before: 0.5,
        successful,
        delta,
        ..Default::default()
    }
}

/// The titles of the insights `client` is served, in the order served
/// (`limit` 0: the hub's default).
/// The plateau model as GetModel returns it.
pub async fn plateau_model(client: &HubClient) -> pb::GetModelResponse {
    client
        .get_model(pb::GetModelRequest {
            model: "plateau".into(),
            known_version: 0,
            ..Default::default()
        })
        .await
        .unwrap()
}

pub async fn insight_titles(client: &HubClient, limit: u32) -> Vec<String> {
    client
        .get_insights(pb::GetInsightsRequest {
            limit,
            ..Default::default()
        })
        .await
        .unwrap()
        .insights
        .into_iter()
        .map(|i| i.title)
        .collect()
}

pub fn insight(title: &str) -> pb::ShareInsightRequest {
    pb::ShareInsightRequest {
        insight: Some(pb::Insight {
            category: pb::InsightCategory::Timing as i32,
            title: title.into(),
            insight: format!("{title}: details"),
            effectiveness: 0.8,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A hub served from `config` with its metrics listener (and the
/// dashboard) on 127.0.0.1:0, and its gRPC listener on another.
pub struct MetricsHub {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<learning_hub::Result<()>>,
}

impl MetricsHub {
    pub async fn start(mut config: learning_hub::config::Config) -> MetricsHub {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        let prepared = learning_hub::server::PreparedHub::prepare(
            config,
            std::sync::Arc::new(learning_hub::clock::SystemClock),
        )
        .await
        .unwrap();
        let metrics = prepared.metrics_addr().expect("metrics listener bound");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(prepared.serve(listener, async {
            let _ = stopped.await;
        }));
        MetricsHub {
            addr,
            metrics,
            stop,
            server,
        }
    }

    /// Stops the hub and waits for it to end cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

/// Connects to `addr` with a bare TLS client (trusting `ca`, with the
/// client certificate `identity` if given, speaking `versions`), sends
/// what a gRPC client sends first and reads: what it saw — the alert the
/// hub sent, or another error — and how long that took.
pub async fn raw_tls_refusal(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (String, Duration) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&std::fs::read(ca).unwrap()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&std::fs::read(cert).unwrap())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).unwrap()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tls = connector.connect(name, tcp).await?;
        // As gRPC clients do: the HTTP/2 preface right after the handshake
        // (with TLS 1.3 the client's side is done before the server has
        // seen its certificate), then read the server's answer.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        tls.flush().await?;
        // …and more frames a moment later, before reading (grpc-go does):
        // a hub that closed at once would have reset the connection by
        // now, failing this write with "broken pipe" instead of showing
        // the alert.
        tokio::time::sleep(Duration::from_millis(100)).await;
        tls.write_all(&[0u8; 9]).await?;
        tls.flush().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        tls.write_all(&[0u8; 9]).await?;
        tls.flush().await?;
        let mut buf = [0u8; 256];
        loop {
            if tls.read(&mut buf).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    })
    .await
    .expect("the hub answered within 5 s");
    let seen = match outcome {
        Ok(()) => "closed without an alert".to_string(),
        Err(e) => format!("{e}"),
    };
    (seen, started.elapsed())
}

// ---------------------------------------------------------------------------
// Outside dependencies
// ---------------------------------------------------------------------------

/// The command that installs every outside dependency of the tests and
/// runs them all (the README's test command; `.ci/run` calls it).
pub const FULL_SUITE: &str = "scripts/test";

/// Whether every test must run: under `scripts/test` (which installs what
/// they need) and under CI (`CI=true`), a missing dependency fails.
pub fn strict() -> bool {
    std::env::var("HUB_TESTS_REQUIRE_ALL").as_deref() == Ok("1")
        || matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Whether a test that needs `what` (e.g. "grpcurl", "the Python packages
/// of examples/python") can run: `found` says why not. When it cannot, a
/// plain `cargo test` skips it with one line on the terminal — written past
/// the test harness's capture, so a passing run still shows it — naming
/// the test and the command that runs it; under [`strict`] it fails.
pub fn outside_dependency(test: &str, what: &str, found: Result<(), String>) -> bool {
    let why = match found {
        Ok(()) => return true,
        Err(why) => why,
    };
    let line = format!(
        "SKIPPED {test}: {what} missing ({why}); `{FULL_SUITE}` installs it and runs every test"
    );
    assert!(!strict(), "{line} — and this run must not skip any test");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
    false
}

/// Runs `program args` in `dir`: `Ok` if it exits successfully, otherwise
/// the line of its error output that names the problem.
pub fn probe(program: &str, args: &[&str], dir: &Path) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => {
            // The line naming the error (Python's ends its traceback with
            // it; Node prints it first and its version last).
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let error = lines.iter().find(|l| l.contains("Error:")).or(lines.last());
            Err(error.map_or("failed", |l| l.trim()).to_string())
        }
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}
