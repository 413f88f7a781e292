//! The hub under test. By default the bench starts its own: this binary's
//! `serve` as a child process with a fresh data directory and development
//! PKI, the rate limit off (a load generator is many times one instance's
//! 1000 requests an hour) and background insight generation off, optionally
//! pinned to CPUs with `taskset`. Being a separate process, its resident
//! memory can be read on its own. Or the bench drives a hub that is already
//! running (`--hub`), given a certs directory holding its CA key (to issue
//! bench identities) and an operator certificate (to issue their API keys).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::error::{Error, Result};

/// Where the hub under test comes from.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// A running hub's URL; `None` starts one.
    pub hub: Option<String>,
    /// The running hub's certs directory (with `ca.key` and the operator's
    /// certificate). Ignored when the bench starts the hub.
    pub certs_dir: Option<PathBuf>,
    /// CPU list for `taskset -c` when the bench starts the hub.
    pub hub_cpus: Option<String>,
    /// Extra `serve` flags for a started hub.
    pub serve_args: Vec<String>,
}

/// A hub the bench can reach.
pub struct Target {
    pub url: String,
    pub certs_dir: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
    /// Keeps the started hub's directories alive.
    _dirs: Option<tempfile::TempDir>,
}

impl Target {
    pub async fn open(options: &TargetOptions) -> Result<Target> {
        match &options.hub {
            Some(url) => {
                let certs_dir = options.certs_dir.clone().ok_or_else(|| {
                    Error::invalid(
                        "certs_dir",
                        "--hub needs --certs-dir with the hub's ca.pem, ca.key and operator certificate",
                    )
                })?;
                Ok(Target {
                    url: url.clone(),
                    certs_dir,
                    child: None,
                    pid: None,
                    _dirs: None,
                })
            }
            None => Self::start(options).await,
        }
    }

    async fn start(options: &TargetOptions) -> Result<Target> {
        Self::spawn(options, "the hub", |command, dirs, certs_dir| {
            command
                .arg("serve")
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(dirs.join("data"))
                .arg("--certs-dir")
                .arg(certs_dir)
                .arg("--rate-limit-per-hour")
                .arg("0")
                .arg("--insight-interval-minutes")
                .arg("0")
                .arg("--metrics-listen")
                .arg("127.0.0.1:0")
                .args(&options.serve_args)
                // The fan-out opens up to 1000 streams on each bench
                // connection, each connection one identity: far past the
                // cap a real instance never meets.
                .env("LEARNING_HUB_LIMITS_MAX_STREAMS_PER_IDENTITY", "100000");
        })
        .await
    }

    /// Starts the bare streaming service ([`crate::bare`]) the way
    /// [`Target::open`] starts a hub: a child process of this binary, with
    /// a development PKI of its own, pinned to `options.hub_cpus`.
    pub async fn start_bare(options: &TargetOptions) -> Result<Target> {
        Self::spawn(
            options,
            "the bare streaming service",
            |command, _, certs_dir| {
                command
                    .arg("bench-bare-stream")
                    .arg("--listen")
                    .arg("127.0.0.1:0")
                    .arg("--certs-dir")
                    .arg(certs_dir);
            },
        )
        .await
    }

    /// Runs this binary with the arguments `args` adds (given the temp dir
    /// and its certs dir), pinned to `options.hub_cpus`, and waits for the
    /// address it announces.
    async fn spawn(
        options: &TargetOptions,
        what: &str,
        args: impl FnOnce(&mut Command, &Path, &Path),
    ) -> Result<Target> {
        let dirs = tempfile::tempdir()
            .map_err(|e| Error::Unavailable(format!("cannot create a temp dir: {e}")))?;
        let certs_dir = dirs.path().join("certs");
        crate::pki::ensure_dev_pki(&certs_dir)?;
        let exe = std::env::current_exe()
            .map_err(|e| Error::Unavailable(format!("cannot find this binary: {e}")))?;
        let mut command = match &options.hub_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        args(&mut command, dirs.path(), &certs_dir);
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| Error::Unavailable(format!("cannot start {what}: {e}")))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("learning-hub listening on ") {
                    return Some(addr.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| Error::Unavailable(format!("{what} did not start (see its log above)")))?;
        // Keep draining its stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = announced.rsplit(':').next().unwrap_or_default().to_string();
        Ok(Target {
            url: format!("https://127.0.0.1:{port}"),
            certs_dir,
            child: Some(child),
            pid,
            _dirs: Some(dirs),
        })
    }

    /// The started hub's resident memory in bytes (`None` for a hub the
    /// bench did not start).
    pub fn rss_bytes(&self) -> Option<u64> {
        self.pid
            .and_then(|pid| read_rss(Path::new(&format!("/proc/{pid}/status"))))
    }

    /// CPU time (user + system, in seconds) the started process has used
    /// so far (`None` for a hub the bench did not start).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid
            .and_then(|pid| process_cpu_seconds(&format!("/proc/{pid}/stat")))
    }

    /// Stops a started hub (SIGKILL: its data directory is thrown away).
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill().await;
        }
    }
}

/// `VmRSS` from a `/proc/<pid>/status` file.
fn read_rss(path: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    parse_vm_rss(&status)
}

/// User + system CPU seconds of a process, from its `/proc/<pid>/stat`
/// (`/proc/self/stat` for this one).
pub fn process_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `USER_HZ`: what Linux reports CPU times in, 100 on every architecture
/// this runs on (the kernel's ABI; `getconf CLK_TCK`).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime (fields 14 and 15) of a stat line; the command name
/// (field 2, in parentheses) may itself hold spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resident_memory_from_proc_status() {
        let status = "Name:\tlearning-hub\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        // Fields after the name: state ppid pgrp session tty tpgid flags
        // minflt cminflt majflt cmajflt utime stime …
        let stat = "4242 (learning (hub)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 17 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(267));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        assert!(process_cpu_seconds("/proc/self/stat").is_some());
    }
}
