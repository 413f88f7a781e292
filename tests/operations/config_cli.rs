//! The configuration of `learning-hub serve` as an operator meets it: the
//! layers as `config print` shows them, errors that name the key, the
//! sample `config/hub.toml`, and JSON logs carrying the call's span.

use crate::common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use learning_hub::{auth::Identity, pb};

/// The binary with no configuration in its environment but `env`.
fn hub_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_learning-hub"));
    for (name, _) in std::env::vars() {
        if name.starts_with("LEARNING_HUB_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    hub_command(env)
        .args(args)
        .output()
        .expect("run learning-hub")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml")
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The printed line of `key` in `section`.
fn line_of<'a>(printed: &'a str, section: &str, key: &str) -> &'a str {
    let mut in_section = false;
    for line in printed.lines() {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section && line.starts_with(&format!("{key} = ")) {
            return line;
        }
    }
    panic!("no {section}.{key} in\n{printed}")
}

#[test]
fn config_print_shows_the_winning_layer_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hub.toml",
        "[server]\nlisten = \"127.0.0.1:1111\"\n\
         [limits]\nmax_in_flight = 11\nmax_connections = 12\n\
         [hub]\nrate_limit_per_hour = 13\n",
    );
    let file_arg = file.to_str().unwrap();
    let env = [
        ("LEARNING_HUB_CONFIG", file_arg),
        // Over the file: the sectioned name and an older one.
        ("LEARNING_HUB_LIMITS_MAX_CONNECTIONS", "22"),
        ("LEARNING_HUB_MAX_IN_FLIGHT", "21"),
        ("LEARNING_HUB_LOG_FORMAT", "json"),
    ];
    let printed = run(&env, &["config", "print", "--max-in-flight", "31"]);
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let printed = text(&printed.stdout);

    let expect = [
        (
            "server",
            "listen",
            format!("\"127.0.0.1:1111\"  # {file_arg}"),
        ),
        ("server", "data_dir", "\"data\"  # default".to_string()),
        (
            "limits",
            "max_in_flight",
            "31  # flag --max-in-flight".to_string(),
        ),
        (
            "limits",
            "max_connections",
            "22  # environment LEARNING_HUB_LIMITS_MAX_CONNECTIONS".to_string(),
        ),
        ("hub", "rate_limit_per_hour", format!("13  # {file_arg}")),
        ("hub", "insight_ttl_days", "7  # default".to_string()),
        (
            "log",
            "format",
            "\"json\"  # environment LEARNING_HUB_LOG_FORMAT".to_string(),
        ),
    ];
    for (section, key, value) in expect {
        assert_eq!(
            line_of(&printed, section, key),
            format!("{key} = {value}"),
            "{section}.{key}"
        );
    }

    // What it prints is a configuration file giving the same values.
    let saved = write(dir.path(), "saved.toml", &printed);
    let again = run(
        &[],
        &[
            "config",
            "print",
            "--no-sources",
            "--config",
            saved.to_str().unwrap(),
        ],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    let again = text(&again.stdout);
    assert!(!again.contains('#'), "{again}");
    assert_eq!(
        line_of(&again, "limits", "max_in_flight"),
        "max_in_flight = 31"
    );
    assert_eq!(line_of(&again, "log", "format"), "format = \"json\"");
}

#[test]
fn invalid_configuration_stops_serve_with_the_key_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        ("[server]\nlisen = \"127.0.0.1:0\"\n", "server.lisen"),
        ("[limits]\nmax_in_flight = 0\n", "limits.max_in_flight = 0"),
        ("[log]\nformat = \"xml\"\n", "log.format = \"xml\""),
        (
            "[hub]\nrate_limit_per_hour = \"x\"\n",
            "hub.rate_limit_per_hour",
        ),
    ];
    for (contents, key) in cases {
        let bad = write(dir.path(), "bad.toml", contents);
        let out = run(
            &[],
            &[
                "serve",
                "--config",
                bad.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "serve accepted {contents:?}");
        assert!(
            stderr.contains("config error: ") && stderr.contains(key),
            "{contents:?}: {stderr}"
        );
        assert!(!data.exists(), "nothing was created for {contents:?}");
    }
    // From the environment and a flag too, naming where the value came from.
    let out = run(
        &[("LEARNING_HUB_REQUEST_ID_WINDOW_HOURS", "0")],
        &["config", "print"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "hub.request_id_window_hours = 0 (from environment \
             LEARNING_HUB_REQUEST_ID_WINDOW_HOURS): must be positive"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[], &["config", "print", "--metrics-listen", "nowhere"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("server.metrics_listen = \"nowhere\" (from flag --metrics-listen)"),
        "{}",
        text(&out.stderr)
    );
}

/// A hub started as an operator would, stdout and stderr read line by line.
struct Served {
    child: Child,
    addr: std::net::SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Served {
    let mut child = hub_command(&[])
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start learning-hub");
    let (tx, stderr) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim().strip_prefix("learning-hub listening on ") else {
        let logs: Vec<String> = stderr.try_iter().collect();
        panic!("serve did not start: {line:?}; stderr: {logs:#?}");
    };
    Served {
        addr: addr.parse().unwrap(),
        child,
        stderr,
    }
}

#[tokio::test]
async fn the_sample_configuration_serves_and_json_logs_carry_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let (data, certs) = (dir.path().join("data"), dir.path().join("certs"));
    let hub = serve(&[
        "--config",
        sample().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        data.to_str().unwrap(),
        "--certs-dir",
        certs.to_str().unwrap(),
        "--init-dev-pki",
        "--log-format",
        "json",
        "--log-level",
        "learning_hub=debug,warn",
    ]);

    let op = connect(hub.addr, &certs, &Identity::operator("operator")).await;
    op.get_status(pb::GetStatusRequest {}).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = hub.stderr.recv_timeout(left) else {
            panic!("no log line inside the GetStatus call's span; lines: {seen:#?}");
        };
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line that is no JSON object ({e}): {line}"));
        let span = &json["span"];
        if span["name"] == "rpc" && span["rpc"] == "/learninghub.v1.Hub/GetStatus" {
            assert_eq!(span["caller"], "operator", "{line}");
            assert_eq!(span["role"], "operator", "{line}");
            if json["fields"]["message"] == "call finished" {
                assert_eq!(json["fields"]["code"], 0, "{line}");
                break;
            }
        }
        seen.push(line);
    }
}
