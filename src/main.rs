//! The `learning-hub` command: parses arguments and calls into the library.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use learning_hub::{
    auth::Role,
    client::{ClientSettings, HubClient},
    clock::SystemClock,
    pki,
    server::PreparedHub,
    settings::{Layers, LogSettings, Settings},
};

/// The writer copies and drops many small persistent-map nodes per group
/// commit; glibc's allocator spent about a third of the writer thread on
/// them (profiled). jemalloc and mimalloc both fix that (BENCHMARKS.md,
/// fourth round); mimalloc builds in a tenth of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "learning-hub",
    version,
    about = "A gRPC hub where a fleet of ML/agent instances learns from each other"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Show the configuration `serve` would run with.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Operate a running hub as an operator (over mTLS).
    Admin(AdminArgs),
    /// Measure what the hub is worth: a simulated fleet learning in
    /// isolation, through a real hub, and with an oracle.
    Simulate(SimulateArgs),
    /// Load-test a hub: requests/s and latency per RPC next to the Echo
    /// ceiling, insight fan-out, memory.
    Bench(Box<BenchArgs>),
    /// Copy a hub's whole state from one storage into another, and check
    /// the copy: a sled data directory into PostgreSQL (one hub becoming
    /// replicas), or back. Stop the hubs first; the target must be empty.
    Migrate(MigrateArgs),
    /// Manage the development PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The bare streaming service `bench --fanout N --baseline` measures
    /// the hub against (started by the bench; not for operators).
    #[command(hide = true)]
    BenchBareStream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Directory with ca.pem, server.pem and server.key.
        #[arg(long)]
        certs_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The configuration flags of `serve` and `config print`. Each sets one
/// key of the configuration (see config/hub.toml), over the file and the
/// environment; unset, the key keeps the value they (or the default) give.
#[derive(clap::Args)]
struct SettingsArgs {
    /// TOML configuration file (every key: config/hub.toml).
    #[arg(long, env = "LEARNING_HUB_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [server.listen; default 0.0.0.0:3015].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory of the sled database [server.data_dir; default data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Directory of ca.pem, server.pem and server.key; a development PKI is
    /// generated there if it has no ca.pem [server.certs_dir; default certs].
    #[arg(long, value_name = "DIR")]
    certs_dir: Option<String>,
    /// Generate a development PKI in --certs-dir if it has no ca.pem (done
    /// without asking only for the default `certs`) [server.init_dev_pki].
    #[arg(long)]
    init_dev_pki: bool,
    /// Serve plaintext gRPC without client certificates or API keys.
    /// Development only: anyone who can reach the port can act as any
    /// instance [server.insecure_dev].
    #[arg(long)]
    insecure_dev: bool,
    /// Where Prometheus metrics are served (GET /metrics), or `off`
    /// [server.metrics_listen; default 127.0.0.1:9015].
    #[arg(long, value_name = "ADDR|off")]
    metrics_listen: Option<String>,
    /// Unary calls the hub works on at once; more are refused without any
    /// work with RESOURCE_EXHAUSTED [limits.max_in_flight; default 4096].
    #[arg(long, value_name = "N")]
    max_in_flight: Option<String>,
    /// Minutes between background insight-generation runs (0: never)
    /// [hub.insight_interval_minutes; default 240].
    #[arg(long, value_name = "N")]
    insight_interval_minutes: Option<String>,
    /// Requests each instance may make per hour (0: unlimited)
    /// [hub.rate_limit_per_hour; default 1000].
    #[arg(long, value_name = "N")]
    rate_limit_per_hour: Option<String>,
    /// Hours a write's request_id is remembered (about 200 bytes each)
    /// [hub.request_id_window_hours; default 24].
    #[arg(long, value_name = "N")]
    request_id_window_hours: Option<String>,
    /// Days the audit log is kept [retention.audit_days; default 30].
    #[arg(long, value_name = "N")]
    audit_retention_days: Option<String>,
    /// Seconds between checks of the certificate files; changed files are
    /// reloaded (0: only on SIGHUP) [tls.cert_check_seconds; default 10].
    #[arg(long, value_name = "N")]
    cert_check_seconds: Option<String>,
    /// Keep the state in this PostgreSQL database, shared with the other
    /// replicas of the hub (sets storage.backend = "postgres")
    /// [storage.postgres_url].
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// This replica's name in logs and in the jobs lease
    /// [storage.replica_name; default <host>:<port>].
    #[arg(long, value_name = "NAME")]
    replica_name: Option<String>,
    /// `text` or `json` (one object per line, with the call's span: rpc,
    /// caller, role) [log.format; default text].
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// Log filter, e.g. `info` or `learning_hub=debug,warn`
    /// [log.level; default info; also RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

impl SettingsArgs {
    /// Resolves defaults → file → environment → these flags.
    fn resolve(&self) -> learning_hub::Result<Settings> {
        let mut layers = Layers {
            file: self.config.clone(),
            ..Layers::default()
        }
        .with_process_env();
        let flags: [(&str, &str, &Option<String>); 14] = [
            ("server.listen", "--listen", &self.listen),
            ("server.data_dir", "--data-dir", &self.data_dir),
            ("server.certs_dir", "--certs-dir", &self.certs_dir),
            (
                "server.metrics_listen",
                "--metrics-listen",
                &self.metrics_listen,
            ),
            (
                "limits.max_in_flight",
                "--max-in-flight",
                &self.max_in_flight,
            ),
            (
                "hub.insight_interval_minutes",
                "--insight-interval-minutes",
                &self.insight_interval_minutes,
            ),
            (
                "hub.rate_limit_per_hour",
                "--rate-limit-per-hour",
                &self.rate_limit_per_hour,
            ),
            (
                "hub.request_id_window_hours",
                "--request-id-window-hours",
                &self.request_id_window_hours,
            ),
            (
                "retention.audit_days",
                "--audit-retention-days",
                &self.audit_retention_days,
            ),
            (
                "tls.cert_check_seconds",
                "--cert-check-seconds",
                &self.cert_check_seconds,
            ),
            ("storage.postgres_url", "--postgres", &self.postgres),
            ("storage.replica_name", "--replica-name", &self.replica_name),
            ("log.format", "--log-format", &self.log_format),
            ("log.level", "--log-level", &self.log_level),
        ];
        for (key, flag, value) in flags {
            layers.flag(key, flag, value.as_ref());
        }
        layers.flag(
            "server.init_dev_pki",
            "--init-dev-pki",
            self.init_dev_pki.then_some(true),
        );
        layers.flag(
            "storage.backend",
            "--postgres",
            self.postgres.as_ref().map(|_| "postgres"),
        );
        layers.flag(
            "server.insecure_dev",
            "--insecure-dev",
            self.insecure_dev.then_some(true),
        );
        Settings::resolve(&layers).map_err(|e| match e {
            learning_hub::Error::InvalidArgument { field, reason } => {
                learning_hub::Error::invalid(format!("config error: {field}"), reason)
            }
            other => other,
        })
    }
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// Where the state is now: a sled data directory, or a PostgreSQL URL
    /// (postgres://…).
    #[arg(long, value_name = "DIR|URL")]
    from: String,
    /// Where to copy it: an empty (or new) data directory, or an empty
    /// PostgreSQL database.
    #[arg(long, value_name = "DIR|URL")]
    to: String,
}

/// A sled directory or a PostgreSQL database, as `migrate` names them.
enum Place {
    Sled(PathBuf),
    Postgres(Arc<learning_hub::store::PgBackend>),
}

impl Place {
    fn open(text: &str) -> learning_hub::Result<(Place, learning_hub::store::Store)> {
        use learning_hub::store::{PgBackend, PgSettings, Store};
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let pg = Arc::new(PgBackend::connect(&PgSettings::new(text))?);
            Ok((Place::Postgres(pg.clone()), Store::new(pg)))
        } else {
            let dir = PathBuf::from(text);
            Ok((Place::Sled(dir.clone()), Store::open(&dir)?))
        }
    }

    fn name(&self) -> String {
        use learning_hub::store::SharedLog;
        match self {
            Place::Sled(dir) => format!("sled at {}", dir.display()),
            Place::Postgres(pg) => pg.describe(),
        }
    }
}

fn migrate(args: MigrateArgs) -> learning_hub::Result<()> {
    let (from, source) = Place::open(&args.from)?;
    let (to, target) = Place::open(&args.to)?;
    let settings = learning_hub::hub::HubSettings::default();
    let copied = learning_hub::migrate::migrate(&source, &target, &settings, |position| {
        match &to {
            Place::Postgres(pg) => pg.continue_log_after(position),
            // sled's writer appends after the checkpoint's position.
            Place::Sled(_) => Ok(()),
        }
    })?;
    println!(
        "copied {} to {}: log position {}, {} records, {} outcome rows, {} audit rows; \
         state digest {} on both sides",
        from.name(),
        to.name(),
        copied.position,
        copied.records,
        copied.outcome_rows,
        copied.audit_rows,
        copied.digest
    );
    Ok(())
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, --config file,
    /// LEARNING_HUB_* environment, flags) as TOML that --config accepts,
    /// each value followed by where it came from.
    Print {
        /// Leave out the comments naming each value's source.
        #[arg(long)]
        no_sources: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The hub to operate.
    #[arg(
        long,
        env = "LEARNING_HUB_URL",
        default_value = "https://localhost:3015",
        global = true
    )]
    hub: String,
    /// Directory with ca.pem and the operator's certificate and key.
    #[arg(
        long,
        env = "LEARNING_HUB_CERTS_DIR",
        default_value = "certs",
        global = true
    )]
    certs_dir: PathBuf,
    /// The operator certificate to use (<name>.pem, <name>.key).
    #[arg(long, default_value = pki::DEFAULT_OPERATOR, global = true)]
    operator: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Manage instances' API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print audit log entries, newest first.
    Audit {
        /// Only calls by this instance id or operator name.
        #[arg(long)]
        caller: Option<String>,
        /// Only calls whose method path contains this.
        #[arg(long)]
        rpc: Option<String>,
        /// Only calls to the hub's services: no reflection (grpcurl's
        /// lookups), no health checks.
        #[arg(long)]
        hub_calls_only: bool,
        /// Only calls by this role: instance, operator or unknown.
        #[arg(long)]
        role: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issue a key for an instance (replacing its previous one); prints only
    /// the key.
    Issue { instance_id: String },
    /// Revoke an instance's key at once.
    Revoke { instance_id: String },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Scenario TOML file, or `default` for the built-in one.
    #[arg(long, default_value = "default")]
    scenario: String,
    /// Simulated instances (default: the scenario's, 20 for the built-in).
    #[arg(long)]
    instances: Option<usize>,
    /// Seeds to average over.
    #[arg(long, default_value_t = 5)]
    seeds: usize,
    /// First seed; runs are deterministic for a given seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cycles per instance (default: the scenario's).
    #[arg(long)]
    horizon: Option<u32>,
    /// Cycles between successive instances joining (0: all at once).
    #[arg(long, default_value_t = 0)]
    stagger: u32,
    /// Fleet sizes for the benefit-versus-N measure, comma-separated;
    /// `none` to skip it.
    #[arg(long, default_value = "1,5,20,50,100")]
    scaling: String,
    /// Seeds per fleet size in the benefit-versus-N measure.
    #[arg(long, default_value_t = 3)]
    scaling_seeds: usize,
    /// Drive an external hub at this URL instead of in-process hubs.
    #[arg(long, requires = "certs_dir")]
    hub: Option<String>,
    /// With --hub: directory with the hub's ca.pem and ca.key (instance
    /// certificates are issued there).
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// Write every measure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Runs executed at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Measure the federated plateau model instead (against each instance
    /// alone and a central model), at the --scaling fleet sizes.
    #[arg(long)]
    predict: bool,
    /// Measure regional hubs instead: the fleet split over this many
    /// regions (2 to 16), each region alone and the regions federated,
    /// against one global hub, with the same seeds.
    #[arg(long)]
    regions: Option<usize>,
    /// With --predict: cycles of its own history a training instance has.
    #[arg(long, default_value_t = 40)]
    train_cycles: u32,
    /// With --predict: federated rounds (one update per instance each).
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// With --predict: instances of the held-out test fleet.
    #[arg(long, default_value_t = 50)]
    test_instances: usize,
    /// Faulty instances: without --predict, this many of the fleet report
    /// outcomes as --faulty-mode says (their own performance is left out
    /// of the measures); with --predict, they poison the plateau model.
    #[arg(long, default_value_t = 0)]
    faulty: usize,
    /// What faulty instances report: `inflate` (successes of +0.3 for the
    /// strategy that truly does worst), `random` (random strategy, success
    /// and delta) or `model` (true outcomes, but plateau-model updates ten
    /// times the opposite of what they learned, claiming 1,000,000
    /// examples).
    #[arg(long, default_value = "inflate")]
    faulty_mode: String,
    /// The simulated operator quarantines every instance an anomaly scan
    /// (every 10 cycles) lists.
    #[arg(long)]
    quarantine_flagged: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// What to drive: echo, register, share-strategy, get-strategies,
    /// share-pattern, get-patterns or mixed.
    #[arg(long, default_value = "share-strategy")]
    rpc: learning_hub::bench::Rpc,
    /// Requests in flight (closed loop), or with --rate the most calls
    /// outstanding (beyond it a scheduled call is counted as unsent).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: send this many requests per second on a fixed schedule,
    /// whatever the answers (latency counted from when each was due).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: a caller refused with `retry-after` waits that long
    /// before calling again (as the hub's clients do), instead of at once.
    #[arg(long)]
    honor_retry_after: bool,
    /// Connections, each its own instance (certificate, API key).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Measured window, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before the window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Strategy outcomes stored before the run.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// A sweep instead of --preload: measure after preloading up to each of
    /// these outcome counts in turn, e.g. 0,100000,1000000.
    #[arg(long, value_delimiter = ',')]
    preload_steps: Vec<u64>,
    /// With --preload-steps, or --fanout with several counts: write an SVG
    /// chart of the sweep here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Plateau patterns shared before the run.
    #[arg(long, default_value_t = 0)]
    preload_patterns: u64,
    /// Extra instances registered (each with its certificate, key and
    /// connection) before the run.
    #[arg(long, default_value_t = 0)]
    preload_instances: u64,
    /// Metric names requests draw from.
    #[arg(long, default_value_t = 10)]
    metrics: usize,
    /// Strategy names requests draw from.
    #[arg(long, default_value_t = 50)]
    strategies: usize,
    /// Contexts requests draw from (metrics × strategies × contexts
    /// strategy records at most).
    #[arg(long, default_value_t = 20)]
    contexts: usize,
    /// ShareStrategy callers running alongside the measured load.
    #[arg(long, default_value_t = 0)]
    write_concurrency: usize,
    /// Measure echo with the same settings first and report the ratio;
    /// with --fanout, measure a bare streaming service (same connections,
    /// TLS and receivers; no store, no auth) first.
    #[arg(long)]
    baseline: bool,
    /// Measure insight fan-out to this many subscribers instead of --rpc;
    /// several (e.g. 100,1000,10000) measure each in turn (a sweep, which
    /// --plot draws).
    #[arg(long, value_delimiter = ',')]
    fanout: Vec<usize>,
    /// Insights published in the fan-out measure.
    #[arg(long, default_value_t = 20)]
    publishes: usize,
    /// Pause between fan-out publishes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    publish_interval: Duration,
    /// Fan-out: extra subscriptions opened and never read (stalled consumers).
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Fan-out: bytes of text in each published insight.
    #[arg(long, default_value_t = 60)]
    insight_bytes: usize,
    /// Drive a running hub at this URL instead of starting one.
    #[arg(long, requires = "certs_dir")]
    hub: Option<String>,
    /// With --hub: directory with the hub's ca.pem, ca.key and the
    /// operator's certificate.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// CPUs (taskset -c list) for the hub the bench starts, e.g. 0.
    #[arg(long)]
    hub_cpus: Option<String>,
    /// An extra flag for the hub the bench starts (repeatable), e.g.
    /// --hub-arg=--max-in-flight=64.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    hub_args: Vec<String>,
    /// Seed of the request generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object (and nothing else) on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// `10s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate the development CA, server and operator certificates
    /// (`serve` does this on first start).
    Init {
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
    },
    /// Issue a client certificate (<name>.pem, <name>.key) signed by the CA.
    Issue {
        /// Instance id (or operator name with --operator, region with --hub).
        name: String,
        /// Issue an operator certificate instead of an instance one.
        #[arg(long, conflicts_with = "hub")]
        operator: bool,
        /// Issue a regional hub's federation certificate
        /// (spiffe://learning-hub/hub/<region>): `certs issue --hub eu-west`.
        #[arg(long)]
        hub: bool,
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a client certificate: add its serial to the CA's CRL in
    /// crl.pem (signed with ca.key). A running hub refuses it within
    /// --cert-check-seconds, or at once on SIGHUP.
    Revoke {
        /// An instance id or operator name issued in --certs-dir, or a
        /// certificate file (a path containing `/` or ending in `.pem`).
        target: String,
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
    },
    /// List the certificates crl.pem revokes: serial, date, issuing CA.
    Revoked {
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
    },
    /// Replace server.pem and server.key with a new key and certificate
    /// from the CA (localhost, 127.0.0.1). A running hub switches to it
    /// for new connections within --cert-check-seconds, or at once on
    /// SIGHUP.
    RenewServer {
        #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
        certs_dir: PathBuf,
    },
}

/// Logs to stderr, as text or one JSON object per line; JSON lines carry
/// the current span (`rpc`, `caller`, `role` during a call) and the list
/// of spans they were logged in.
fn init_tracing(log: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a terminal only: not escape codes in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if log.json {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        logs.init();
    }
}

/// Logging of the commands other than `serve`: text, filtered by RUST_LOG
/// (default `default_level`).
fn init_default_tracing(default_level: &str) {
    init_tracing(&LogSettings {
        json: false,
        level: std::env::var("RUST_LOG")
            .ok()
            .filter(|level| tracing_subscriber::EnvFilter::try_new(level).is_ok())
            .unwrap_or_else(|| default_level.to_string()),
    });
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Asks `tls` to reload on every SIGHUP (the reload itself, its checks
/// and its logging are the library's: [`learning_hub::tls`]).
#[cfg(unix)]
fn reload_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    tls: Option<learning_hub::tls::ServerTls>,
) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match &tls {
                Some(tls) => tls.request_reload(),
                None => tracing::warn!("SIGHUP ignored: no certificates in insecure dev mode"),
            }
        }
    });
}

async fn serve(settings: Settings) -> learning_hub::Result<()> {
    // Before anything slow: until a handler is installed, SIGHUP would
    // end the process.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| learning_hub::Error::Unavailable(format!("cannot handle SIGHUP: {e}")))?;
    let config = settings.config();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            learning_hub::Error::Unavailable(format!("cannot listen on {}: {e}", config.listen))
        })?;
    let hub = PreparedHub::prepare(config, Arc::new(SystemClock)).await?;
    #[cfg(unix)]
    reload_on_sighup(hangups, hub.tls());
    if let Ok(addr) = listener.local_addr() {
        // On stdout, for scripts and tests that start the hub on port 0:
        // printed once certificates exist and the store is open.
        println!("learning-hub listening on {addr}");
    }
    hub.serve(listener, shutdown_signal()).await
}

async fn admin(args: AdminArgs) -> learning_hub::Result<()> {
    let url = args.hub.clone();
    let mut settings = ClientSettings::new(args.hub, &args.certs_dir, &args.operator);
    settings.instance_id = None;
    let hub = HubClient::connect(&settings)
        .await
        .map_err(|e| unreachable_hub(&url, &args.certs_dir, e))?;
    let failed = |e: tonic::Status| {
        let detail = learning_hub::client::describe_status(&e);
        match e.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                learning_hub::Error::Unavailable(format!(
                    "the connection to the hub at {url} failed: {detail}{}",
                    tls_hint(&detail)
                ))
            }
            _ => learning_hub::Error::Unavailable(format!("the hub at {url} refused: {detail}")),
        }
    };
    match args.command {
        AdminCommand::Keys { command } => match command {
            KeysCommand::Issue { instance_id } => {
                // Only the key on stdout, so scripts can capture it.
                println!("{}", hub.issue_api_key(&instance_id).await.map_err(failed)?);
            }
            KeysCommand::Revoke { instance_id } => {
                hub.revoke_api_key(&instance_id).await.map_err(failed)?;
                eprintln!("revoked the API key of {instance_id}");
            }
        },
        AdminCommand::Audit {
            caller,
            rpc,
            hub_calls_only,
            role,
            limit,
        } => {
            let entries = hub
                .admin()
                .query_audit(learning_hub::pb::QueryAuditRequest {
                    caller: caller.unwrap_or_default(),
                    rpc: rpc.unwrap_or_default(),
                    hub_calls_only,
                    role: role.unwrap_or_default(),
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(failed)?
                .into_inner()
                .entries;
            for e in entries {
                let at = e.at.map(|t| t.to_string()).unwrap_or_default();
                println!(
                    "{} {at} {} {:?} {} code={} bytes={} count={} peer={} serial={}{}",
                    e.sequence,
                    e.role,
                    e.caller,
                    e.rpc,
                    e.code,
                    e.request_bytes,
                    e.count,
                    e.peer,
                    e.certificate_serial,
                    if e.path.is_empty() {
                        String::new()
                    } else {
                        format!(" path={:?}", e.path)
                    }
                );
            }
        }
    }
    Ok(())
}

/// The one line an operator gets when a command cannot reach the hub:
/// the address tried, what failed, what to check.
fn unreachable_hub(
    url: &str,
    certs_dir: &std::path::Path,
    e: learning_hub::Error,
) -> learning_hub::Error {
    let detail = match &e {
        learning_hub::Error::Unavailable(detail) => detail
            .strip_prefix(&format!("cannot connect to {url}: "))
            .unwrap_or(detail)
            .to_string(),
        other => other.to_string(),
    };
    if detail.starts_with("cannot read") {
        // A certificate file: the message names it.
        return learning_hub::Error::Unavailable(format!(
            "{detail} (--certs-dir {} must hold ca.pem and the operator's certificate and key)",
            certs_dir.display()
        ));
    }
    let hint = if detail.contains("Connection refused") || detail.contains("tcp connect") {
        " — is the hub running there? Start it with `cargo run --release -- serve`; \
         --hub or LEARNING_HUB_URL sets the address"
            .to_string()
    } else {
        tls_hint(&detail)
    };
    learning_hub::Error::Unavailable(format!("cannot reach the hub at {url}: {detail}{hint}"))
}

/// What a TLS failure between this command and the hub means.
fn tls_hint(detail: &str) -> String {
    let hint = if detail.contains("UnknownIssuer") {
        "the hub's certificate is not signed by the ca.pem in --certs-dir (another PKI?)"
    } else if detail.contains("UnknownCA") {
        "the hub does not trust this certificate: it was not issued by the hub's CA"
    } else if detail.contains("CertificateRevoked") {
        "the hub has revoked this certificate (crl.pem)"
    } else if detail.contains("UnsupportedCertificate") {
        "this is not a client certificate (a server certificate used as a client's?)"
    } else if detail.contains("CertificateExpired") {
        "the hub says this certificate has expired or is not valid yet"
    } else if detail.contains("NotValidForName") {
        "the hub's certificate does not name the host in --hub"
    } else {
        return String::new();
    };
    format!(" — {hint}")
}

/// Writes a study's report, encoded as JSON, to `path` (`--json`).
fn write_json(
    path: &std::path::Path,
    json: serde_json::Result<Vec<u8>>,
) -> learning_hub::Result<()> {
    let json = json.map_err(|e| learning_hub::Error::Internal(e.to_string()))?;
    std::fs::write(path, json).map_err(|e| {
        learning_hub::Error::Unavailable(format!("cannot write {}: {e}", path.display()))
    })?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `simulate --predict`: the plateau model's study.
async fn predict(
    args: &SimulateArgs,
    options: learning_hub::sim::SimOptions,
) -> learning_hub::Result<()> {
    use learning_hub::sim::prediction;
    if options.scaling.is_empty() || !(2..=10_000).contains(&args.train_cycles) {
        return Err(learning_hub::Error::invalid(
            "--scaling/--train-cycles",
            "--predict needs fleet sizes (--scaling) and --train-cycles within [2, 10000]",
        ));
    }
    let study = prediction::PredictionOptions {
        fleet_sizes: options.scaling.clone(),
        seeds: options.seeds,
        seed: options.seed,
        train_cycles: args.train_cycles,
        horizon: options.horizon,
        test_instances: args.test_instances.clamp(1, 10_000),
        rounds: args.rounds.clamp(1, 10_000),
        rules: learning_hub::domain::federated::FederationRules::default(),
        scenario: options.scenario.clone(),
    };
    let report = prediction::study(&study).await?;
    print!("{}", prediction::table(&report));
    let personal = prediction::personalization(&study, options.instances).await?;
    print!(
        "{}",
        prediction::personalization_table(options.instances, &personal)
    );
    if args.faulty > 0 {
        let instances = options.instances;
        if args.faulty >= instances {
            return Err(learning_hub::Error::invalid(
                "--faulty",
                format!("must be fewer than the {instances} instances"),
            ));
        }
        let rows = prediction::poisoning(&study, instances, args.faulty).await?;
        print!(
            "{}",
            prediction::poisoning_table(instances, args.faulty, &rows)
        );
    }
    if let Some(path) = &args.json {
        write_json(path, serde_json::to_vec_pretty(&report))?;
    }
    Ok(())
}

/// `simulate --regions N`: regional hubs, alone and federated, against one.
async fn regional(
    args: &SimulateArgs,
    options: learning_hub::sim::SimOptions,
    regions: usize,
) -> learning_hub::Result<()> {
    if !(2..=16).contains(&regions) || options.instances < regions {
        return Err(learning_hub::Error::invalid(
            "--regions",
            format!(
                "must be within [2, 16] and at most the {} instances",
                options.instances
            ),
        ));
    }
    let report = learning_hub::sim::regions_study(&options, regions).await?;
    let row = |name: &str, e: &learning_hub::sim::measures::Estimate| {
        println!("  {name:<34} {:>7.1} ± {:.1} cycles", e.mean, e.ci95);
    };
    println!(
        "time-to-peak, {} instances over {} regions, {} seed(s), mean ± 95% CI:",
        report.instances, report.regions, report.isolated_time_to_peak.n
    );
    row("every instance alone", &report.isolated_time_to_peak);
    row("each region alone", &report.alone_time_to_peak);
    row("regions federated", &report.federated_time_to_peak);
    row("one global hub", &report.global_time_to_peak);
    let e = &report.federated_vs_global_percent;
    println!(
        "  federated vs the global hub: {:+.1}% ± {:.1} (per seed; goal within 5%)",
        e.mean, e.ci95
    );
    let e = &report.federated_vs_alone_percent;
    println!(
        "  federated vs each region alone: {:.1}% ± {:.1} faster (per seed)",
        e.mean, e.ci95
    );
    if let Some(path) = &args.json {
        write_json(path, serde_json::to_vec_pretty(&report))?;
    }
    Ok(())
}

async fn simulate(args: SimulateArgs) -> learning_hub::Result<()> {
    use learning_hub::sim::{self, scenario::Scenario};
    use std::io::IsTerminal;

    let scenario = Scenario::load(&args.scenario)?;
    let scaling = if args.scaling == "none" {
        Vec::new()
    } else {
        args.scaling
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        learning_hub::Error::invalid(
                            "--scaling",
                            format!("{n:?} is not a fleet size in [1, 10000]"),
                        )
                    })
            })
            .collect::<learning_hub::Result<Vec<_>>>()?
    };
    if args.seeds == 0 || args.seeds > 1000 {
        return Err(learning_hub::Error::invalid(
            "--seeds",
            "must be within [1, 1000]",
        ));
    }
    let options = sim::SimOptions {
        instances: args.instances.unwrap_or(scenario.instances),
        horizon: args.horizon.unwrap_or(scenario.horizon),
        scenario,
        seeds: args.seeds,
        seed: args.seed,
        stagger: args.stagger,
        scaling,
        scaling_seeds: args.scaling_seeds,
        external_hub: args.hub.clone().zip(args.certs_dir.clone()),
        parallel: args.parallel,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        faulty: if args.predict { 0 } else { args.faulty },
        quarantine_flagged: args.quarantine_flagged,
        faulty_mode: sim::runner::FaultyMode::parse(&args.faulty_mode).ok_or_else(|| {
            learning_hub::Error::invalid("--faulty-mode", "must be inflate, random or model")
        })?,
    };
    if !args.predict && args.faulty >= options.instances {
        return Err(learning_hub::Error::invalid(
            "--faulty",
            "must leave at least one honest instance",
        ));
    }
    if !(1..=10_000).contains(&options.instances) || !(10..=100_000).contains(&options.horizon) {
        return Err(learning_hub::Error::invalid(
            "--instances/--horizon",
            "instances must be within [1, 10000] and horizon within [10, 100000]",
        ));
    }
    if args.predict {
        return predict(&args, options).await;
    }
    if let Some(regions) = args.regions {
        return regional(&args, options, regions).await;
    }
    let report = sim::simulate(options).await?;
    print!("{}", sim::report::table(&report));
    if let Some(path) = args.json {
        sim::report::write_json(&report, &path)?;
        println!("wrote {}", path.display());
    }
    if let Some(dir) = args.plot {
        for path in sim::plot::write_charts(&report, &dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> learning_hub::Result<()> {
    use learning_hub::bench::{self, BenchOptions, FanoutSpec, Shape, TargetOptions};
    use std::io::IsTerminal;

    let options = BenchOptions {
        rpc: args.rpc,
        concurrency: args.concurrency,
        rate: args.rate,
        honor_retry_after: args.honor_retry_after,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        preload: args.preload,
        preload_steps: args.preload_steps,
        preload_patterns: args.preload_patterns,
        preload_instances: args.preload_instances,
        shape: Shape {
            metrics: args.metrics,
            strategies: args.strategies,
            contexts: args.contexts,
        },
        write_concurrency: args.write_concurrency,
        baseline: args.baseline,
        fanout: (!args.fanout.is_empty()).then(|| FanoutSpec {
            subscribers: args.fanout.clone(),
            publishes: args.publishes,
            interval: args.publish_interval,
            stalled: args.stalled,
            insight_bytes: args.insight_bytes,
        }),
        target: TargetOptions {
            hub: args.hub,
            certs_dir: args.certs_dir,
            hub_cpus: args.hub_cpus,
            serve_args: args.hub_args,
        },
        seed: args.seed,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let report = bench::run(&options).await?;
    if let Some(path) = &args.plot {
        if report.fanout_steps.is_empty() {
            bench::plot::write_sweep_chart(&report, path)?;
        } else {
            bench::plot::write_fanout_chart(&report, path)?;
        }
    }
    if args.json {
        let json = serde_json::to_string(&report)
            .map_err(|e| learning_hub::Error::Internal(format!("cannot encode report: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", report.text());
        if let Some(path) = &args.plot {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn runtime() -> learning_hub::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .map_err(|e| learning_hub::Error::Internal(format!("cannot start runtime: {e}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator starts hubs of its own and the admin commands print
    // results: routine logs would bury both. `serve` logs as configured.
    match &cli.command {
        Command::Serve(_) | Command::Config { .. } => {}
        Command::Certs { .. } => init_default_tracing("info"),
        Command::Migrate(_) => init_default_tracing("warn"),
        Command::Simulate(_)
        | Command::Admin(_)
        | Command::Bench(_)
        | Command::BenchBareStream { .. } => init_default_tracing("warn"),
    }
    let result = match cli.command {
        Command::Serve(args) => args.settings.resolve().and_then(|settings| {
            init_tracing(&settings.log());
            runtime().and_then(|rt| rt.block_on(serve(settings)))
        }),
        Command::Config {
            command:
                ConfigCommand::Print {
                    no_sources,
                    settings,
                },
        } => settings
            .resolve()
            .map(|settings| print!("{}", settings.to_toml(!no_sources))),
        Command::Admin(args) => runtime().and_then(|rt| rt.block_on(admin(args))),
        Command::Simulate(args) => runtime().and_then(|rt| rt.block_on(simulate(args))),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench(*args))),
        Command::Migrate(args) => migrate(args),
        Command::BenchBareStream { listen, certs_dir } => runtime().and_then(|rt| {
            rt.block_on(learning_hub::bench::bare::serve(
                listen,
                &certs_dir,
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            ))
        }),
        Command::Certs { command } => match command {
            CertsCommand::Init { certs_dir } => match pki::ensure_dev_pki(&certs_dir) {
                Ok(true) => {
                    println!("generated a development PKI in {}", certs_dir.display());
                    Ok(())
                }
                Ok(false) => {
                    println!(
                        "{} already holds a CA; nothing generated",
                        certs_dir.display()
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            },
            CertsCommand::Issue {
                name,
                operator,
                hub,
                certs_dir,
                force,
            } => {
                let role = if operator {
                    Role::Operator
                } else if hub {
                    Role::Hub
                } else {
                    Role::Instance
                };
                pki::issue(&certs_dir, &pki::identity_for(&name, role), force).map(|paths| {
                    println!("{}", paths.cert.display());
                    println!("{}", paths.key.display());
                })
            }
            CertsCommand::Revoke { target, certs_dir } => {
                pki::revoke(&certs_dir, &target).map(|revoked| {
                    if revoked.newly_revoked {
                        println!("revoked {} serial {}", revoked.subject, revoked.serial);
                        eprintln!(
                            "{} lists {} certificate(s) of this CA; a running hub refuses it \
                             within --cert-check-seconds (default 10), or at once on SIGHUP",
                            revoked.crl.display(),
                            revoked.listed
                        );
                    } else {
                        println!(
                            "already revoked: {} serial {}",
                            revoked.subject, revoked.serial
                        );
                    }
                })
            }
            CertsCommand::Revoked { certs_dir } => pki::list_revoked(&certs_dir).map(|listed| {
                if listed.is_empty() {
                    eprintln!("{} revokes nothing", certs_dir.join(pki::CRL).display());
                }
                for entry in listed {
                    println!("{} {} {}", entry.serial, entry.revoked_at, entry.issuer);
                }
            }),
            CertsCommand::RenewServer { certs_dir } => {
                pki::renew_server(&certs_dir).map(|serial| {
                    println!("{}", certs_dir.join(pki::SERVER_CERT).display());
                    println!("{}", certs_dir.join(pki::SERVER_KEY).display());
                    eprintln!(
                        "new server certificate serial {serial}; a running hub uses it for new \
                         connections within --cert-check-seconds (default 10), or at once on SIGHUP"
                    );
                })
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("learning-hub: {e}");
            ExitCode::FAILURE
        }
    }
}
