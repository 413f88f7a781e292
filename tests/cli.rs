//! The `learning-hub` binary: the certificate commands, `serve` on a fresh
//! directory, and the hub as an operator sees it through grpcurl.

mod common;

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
    Identity::from_certificate(&der).unwrap()
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
    for bad in ["a b", "server", "ca"] {
        let refused = certs(dir, &["issue", bad]);
        assert!(!refused.status.success(), "{bad:?} must be refused");
        assert!(
            stderr(&refused).contains("name"),
            "{bad:?}: names the problem: {}",
            stderr(&refused)
        );
    }
    assert!(!dir.join("a b.pem").exists());

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
    for file in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "operator.pem",
        "operator.key",
    ] {
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

// ---------------------------------------------------------------------------
// grpcurl
// ---------------------------------------------------------------------------

const GRPCURL: &str = "grpcurl";

/// Whether grpcurl can be run; with `LEARNING_HUB_REQUIRE_GRPCURL=1` its
/// absence fails the test instead of skipping it.
fn grpcurl_available() -> bool {
    let found = Command::new(GRPCURL)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("LEARNING_HUB_REQUIRE_GRPCURL").as_deref() != Ok("1"),
            "LEARNING_HUB_REQUIRE_GRPCURL=1 but grpcurl is not on PATH"
        );
        eprintln!("note: grpcurl is not on PATH; skipping the grpcurl test");
    }
    found
}

/// grpcurl with TLS to the hub at `addr`, as `who` (`None`: no client
/// certificate).
struct Grpcurl<'a> {
    certs_dir: &'a Path,
    addr: SocketAddr,
}

impl Grpcurl<'_> {
    fn command(&self, who: Option<&str>) -> Command {
        let mut command = Command::new(GRPCURL);
        command.arg("-cacert").arg(self.certs_dir.join("ca.pem"));
        if let Some(who) = who {
            command
                .arg("-cert")
                .arg(self.certs_dir.join(format!("{who}.pem")))
                .arg("-key")
                .arg(self.certs_dir.join(format!("{who}.key")));
        }
        command.args(["-max-time", "10"]);
        command
    }

    fn run(&self, who: Option<&str>, args: &[&str]) -> Output {
        self.command(who)
            .args(args)
            .arg(self.addr.to_string())
            .output()
            .expect("run grpcurl")
    }

    /// Runs a call that must succeed; returns its stdout.
    fn ok(&self, who: Option<&str>, args: &[&str]) -> String {
        let output = self.run(who, args);
        assert!(
            output.status.success(),
            "grpcurl {args:?} failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    }

    /// Invokes `learninghub.v1.Hub/METHOD` with the JSON `data`; returns the
    /// parsed response.
    fn call(&self, who: &str, method: &str, data: &str) -> serde_json::Value {
        let output = self
            .command(Some(who))
            .args(["-d", data])
            .arg(self.addr.to_string())
            .arg(format!("learninghub.v1.Hub/{method}"))
            .output()
            .expect("run grpcurl");
        assert!(
            output.status.success(),
            "grpcurl {method} failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {}", stdout(&output)))
    }
}

#[test]
fn grpcurl_as_an_operator_would_use_it() {
    if !grpcurl_available() {
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
    };

    // Reflection: the services and their methods.
    let services = grpcurl.ok(Some("operator"), &[]);
    // (the address goes last, so `list` is appended after it)
    let _ = services;
    let listed = stdout(
        &grpcurl
            .command(Some("operator"))
            .arg(hub.addr.to_string())
            .arg("list")
            .output()
            .unwrap(),
    );
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for service in ["learninghub.v1.Hub", "grpc.health.v1.Health"] {
        assert!(
            services.contains(&service),
            "list shows {service}: {listed}"
        );
    }
    let described = stdout(
        &grpcurl
            .command(Some("operator"))
            .arg(hub.addr.to_string())
            .args(["describe", "learninghub.v1.Hub"])
            .output()
            .unwrap(),
    );
    assert!(
        described.contains("SubscribeInsights"),
        "describe shows the stream: {described}"
    );
}
