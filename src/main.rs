//! The `learning-hub` command: parses arguments and calls into the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use learning_hub::{
    auth::Role,
    client::{ClientSettings, HubClient},
    clock::SystemClock,
    config::Config,
    pki,
    server::PreparedHub,
};

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
    /// Operate a running hub as an operator (over mTLS).
    Admin(AdminArgs),
    /// Measure what the hub is worth: a simulated fleet learning in
    /// isolation, through a real hub, and with an oracle.
    Simulate(SimulateArgs),
    /// Load-test a hub: requests/s and latency per RPC next to the Echo
    /// ceiling, insight fan-out, memory.
    Bench(Box<BenchArgs>),
    /// Manage the development PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LEARNING_HUB_LISTEN", default_value = learning_hub::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory of the sled database.
    #[arg(long, env = "LEARNING_HUB_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Directory of ca.pem, server.pem and server.key; a development PKI is
    /// generated there if it has no ca.pem.
    #[arg(long, env = "LEARNING_HUB_CERTS_DIR", default_value = "certs")]
    certs_dir: PathBuf,
    /// Serve plaintext gRPC without client certificates or API keys.
    /// Development only: anyone who can reach the port can act as any
    /// instance.
    #[arg(long)]
    insecure_dev: bool,
    /// Minutes between background insight-generation runs (0: never;
    /// Admin/GenerateInsights runs it on demand).
    #[arg(
        long,
        env = "LEARNING_HUB_INSIGHT_INTERVAL_MINUTES",
        default_value_t = 240
    )]
    insight_interval_minutes: u64,
    /// Requests each instance may make per hour (0: unlimited).
    #[arg(long, env = "LEARNING_HUB_RATE_LIMIT_PER_HOUR", default_value_t = 1000)]
    rate_limit_per_hour: u32,
    /// Days the audit log is kept.
    #[arg(long, env = "LEARNING_HUB_AUDIT_RETENTION_DAYS", default_value_t = 30)]
    audit_retention_days: i64,
    /// Hours a write's request_id is remembered: a retry within this window
    /// is not applied again. Each remembered id costs about 200 bytes of
    /// memory.
    #[arg(
        long,
        env = "LEARNING_HUB_REQUEST_ID_WINDOW_HOURS",
        default_value_t = 24,
        value_parser = clap::value_parser!(u32).range(1..=24 * 365)
    )]
    request_id_window_hours: u32,
    /// Seconds between checks of the certificate files (ca.pem, server.pem,
    /// server.key, crl.pem); changed files are reloaded without a restart
    /// (0: only on SIGHUP).
    #[arg(long, env = "LEARNING_HUB_CERT_CHECK_SECONDS", default_value_t = 10)]
    cert_check_seconds: u64,
    /// Unary calls the hub works on at once; more are refused at once with
    /// RESOURCE_EXHAUSTED (load shedding).
    #[arg(long, env = "LEARNING_HUB_MAX_IN_FLIGHT", default_value_t = 4096)]
    max_in_flight: usize,
    /// Where Prometheus metrics are served (GET /metrics), or `off`.
    #[arg(long, env = "LEARNING_HUB_METRICS_LISTEN", default_value = learning_hub::config::DEFAULT_METRICS_LISTEN, value_parser = parse_listen_or_off)]
    metrics_listen: ListenOrOff,
}

#[derive(Clone, Copy, Debug)]
struct ListenOrOff(Option<SocketAddr>);

fn parse_listen_or_off(text: &str) -> Result<ListenOrOff, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(ListenOrOff(None));
    }
    text.parse()
        .map(|addr| ListenOrOff(Some(addr)))
        .map_err(|_| format!("{text:?} is neither an address like 127.0.0.1:9015 nor `off`"))
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
}

#[derive(clap::Args)]
struct BenchArgs {
    /// What to drive: echo, register, share-strategy, get-strategies,
    /// share-pattern, get-patterns or mixed.
    #[arg(long, default_value = "share-strategy")]
    rpc: learning_hub::bench::Rpc,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
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
    /// With --preload-steps: write an SVG chart of the sweep here.
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
    /// Measure echo with the same settings first and report the ratio.
    #[arg(long)]
    baseline: bool,
    /// Measure insight fan-out to this many subscribers instead of --rpc.
    #[arg(long)]
    fanout: Option<usize>,
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
        /// Instance id (or operator name with --operator).
        name: String,
        /// Issue an operator certificate instead of an instance one.
        #[arg(long)]
        operator: bool,
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

/// Logs to stderr, filtered by RUST_LOG (default `default_level`).
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

async fn serve(args: ServeArgs) -> learning_hub::Result<()> {
    // Before anything slow: until a handler is installed, SIGHUP would
    // end the process.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| learning_hub::Error::Unavailable(format!("cannot handle SIGHUP: {e}")))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            learning_hub::Error::Unavailable(format!("cannot listen on {}: {e}", args.listen))
        })?;
    let mut config = Config::new(args.data_dir, args.certs_dir);
    config.listen = args.listen;
    config.insecure_dev = args.insecure_dev;
    config.insight_interval = (args.insight_interval_minutes > 0)
        .then(|| Duration::from_secs(60 * args.insight_interval_minutes));
    config.hub.rate_limit_per_hour = args.rate_limit_per_hour;
    config.hub.retention.audit_days = args.audit_retention_days;
    config.cert_check_interval =
        (args.cert_check_seconds > 0).then(|| Duration::from_secs(args.cert_check_seconds));
    config.limits.max_in_flight = args.max_in_flight;
    config.metrics_listen = args.metrics_listen.0;
    config.hub.request_id_window_ms = i64::from(args.request_id_window_hours) * 60 * 60 * 1000;
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
    let mut settings = ClientSettings::new(args.hub, &args.certs_dir, &args.operator);
    settings.instance_id = None;
    let hub = HubClient::connect(&settings).await?;
    let failed = |e: tonic::Status| {
        learning_hub::Error::Unavailable(format!("{:?}: {}", e.code(), e.message()))
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
        AdminCommand::Audit { caller, rpc, limit } => {
            let entries = hub
                .admin()
                .query_audit(learning_hub::pb::QueryAuditRequest {
                    caller: caller.unwrap_or_default(),
                    rpc: rpc.unwrap_or_default(),
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
                    "{} {at} {} {:?} {} code={} bytes={}",
                    e.sequence, e.role, e.caller, e.rpc, e.code, e.request_bytes
                );
            }
        }
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
        external_hub: args.hub.zip(args.certs_dir),
        parallel: args.parallel,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    if !(1..=10_000).contains(&options.instances) || !(10..=100_000).contains(&options.horizon) {
        return Err(learning_hub::Error::invalid(
            "--instances/--horizon",
            "instances must be within [1, 10000] and horizon within [10, 100000]",
        ));
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
        fanout: args.fanout.map(|subscribers| FanoutSpec {
            subscribers,
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
        bench::plot::write_sweep_chart(&report, path)?;
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
    // results: routine logs would bury both.
    init_tracing(match cli.command {
        Command::Serve(_) | Command::Certs { .. } => "info",
        Command::Simulate(_) | Command::Admin(_) | Command::Bench(_) => "warn",
    });
    let result = match cli.command {
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(args))),
        Command::Admin(args) => runtime().and_then(|rt| rt.block_on(admin(args))),
        Command::Simulate(args) => runtime().and_then(|rt| rt.block_on(simulate(args))),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench(*args))),
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
                certs_dir,
                force,
            } => {
                let role = if operator {
                    Role::Operator
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
