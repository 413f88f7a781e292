//! The operator's configuration of `learning-hub serve`, in layers:
//! built-in defaults, then a TOML file (`--config` or `LEARNING_HUB_CONFIG`),
//! then the environment, then command-line flags — each later layer wins
//! key by key. The result is checked key by key (an error names the key,
//! the offending value and the layer it came from) and turned into a
//! [`Config`] for the server and a [`LogSettings`] for the binary.
//!
//! Every key is described once, in [`KEYS`]: its section and name in the
//! file, its environment names (`LEARNING_HUB_<SECTION>_<KEY>`, and for
//! the keys that had one before the file existed their older short name,
//! e.g. `LEARNING_HUB_LISTEN`), its kind and its default. [`Settings`]
//! prints as TOML in the file's shape (`learning-hub config print`), so
//! the effective configuration can be saved and loaded again.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::config::{Config, StorageBackend};
use crate::domain::federated::Aggregation;
use crate::error::{Error, Result};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// What values a key takes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A socket address such as `0.0.0.0:3015`.
    Addr,
    /// A socket address or `off`.
    AddrOrOff,
    /// A non-empty path.
    Path,
    Bool,
    /// An integer within `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A `tracing` filter such as `info` or `learning_hub=debug,warn`.
    LogFilter,
    /// Any text, empty included.
    Text,
    /// A PostgreSQL connection URL or nothing; shown without its password.
    ConnectionUrl,
}

/// One configuration key.
#[derive(Debug)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    /// The name the key had in the environment before sections existed.
    pub legacy_env: Option<&'static str>,
    pub kind: Kind,
    /// The default, in TOML syntax.
    pub default: &'static str,
}

impl Key {
    /// `section.name`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// `LEARNING_HUB_<SECTION>_<NAME>`.
    pub fn env(&self) -> String {
        format!("LEARNING_HUB_{}_{}", self.section, self.name).to_ascii_uppercase()
    }
}

const fn key(section: &'static str, name: &'static str, kind: Kind, default: &'static str) -> Key {
    Key {
        section,
        name,
        legacy_env: None,
        kind,
        default,
    }
}

const fn legacy(mut key: Key, env: &'static str) -> Key {
    key.legacy_env = Some(env);
    key
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

const DAY_MINUTES: i64 = 24 * 60;
const HUNDRED_YEARS_DAYS: i64 = 36_500;

/// Every key, in the order `config print` and `config/hub.toml` show them.
pub const KEYS: &[Key] = &[
    legacy(
        key("server", "listen", Kind::Addr, "\"0.0.0.0:3015\""),
        "LEARNING_HUB_LISTEN",
    ),
    legacy(
        key("server", "data_dir", Kind::Path, "\"data\""),
        "LEARNING_HUB_DATA_DIR",
    ),
    legacy(
        key("server", "certs_dir", Kind::Path, "\"certs\""),
        "LEARNING_HUB_CERTS_DIR",
    ),
    legacy(
        key(
            "server",
            "metrics_listen",
            Kind::AddrOrOff,
            "\"127.0.0.1:9015\"",
        ),
        "LEARNING_HUB_METRICS_LISTEN",
    ),
    key("server", "init_dev_pki", Kind::Bool, "false"),
    key("server", "insecure_dev", Kind::Bool, "false"),
    key("limits", "max_message_bytes", int(1024, 1 << 30), "4194304"),
    key(
        "limits",
        "max_concurrent_streams",
        int(1, u32::MAX as i64),
        "1024",
    ),
    key("limits", "max_connections", int(1, 10_000_000), "10000"),
    key(
        "limits",
        "max_connections_per_identity",
        int(1, 10_000_000),
        "64",
    ),
    key("limits", "max_handshakes", int(1, 10_000_000), "16384"),
    key(
        "limits",
        "max_handshakes_per_source",
        int(1, 10_000_000),
        "4096",
    ),
    key(
        "limits",
        "max_streams_per_identity",
        int(1, 10_000_000),
        "32",
    ),
    key("limits", "idle_timeout_seconds", int(1, 86_400 * 7), "600"),
    legacy(
        key("limits", "max_in_flight", int(1, 10_000_000), "4096"),
        "LEARNING_HUB_MAX_IN_FLIGHT",
    ),
    key("limits", "refusal_pause_ms", int(0, 10_000), "20"),
    key(
        "limits",
        "tls_handshake_timeout_seconds",
        int(1, 3600),
        "10",
    ),
    key(
        "limits",
        "tls_handshake_timeout_under_pressure_ms",
        int(10, 3_600_000),
        "1000",
    ),
    key("limits", "keepalive_interval_seconds", int(1, 86_400), "30"),
    key("limits", "keepalive_timeout_seconds", int(1, 3600), "10"),
    key("limits", "drain_timeout_seconds", int(1, 3600), "10"),
    key(
        "limits",
        "refused_certificate_grace_seconds",
        int(1, 3600),
        "5",
    ),
    legacy(
        key(
            "hub",
            "insight_interval_minutes",
            int(0, 365 * DAY_MINUTES),
            "240",
        ),
        "LEARNING_HUB_INSIGHT_INTERVAL_MINUTES",
    ),
    legacy(
        key(
            "hub",
            "rate_limit_per_hour",
            int(0, u32::MAX as i64),
            "1000",
        ),
        "LEARNING_HUB_RATE_LIMIT_PER_HOUR",
    ),
    key(
        "hub",
        "rate_limit_max_tracked",
        int(1, 100_000_000),
        "100000",
    ),
    legacy(
        key("hub", "request_id_window_hours", int(1, 24 * 365), "24"),
        "LEARNING_HUB_REQUEST_ID_WINDOW_HOURS",
    ),
    key("hub", "insight_ttl_days", int(1, 3650), "7"),
    key("hub", "max_insight_ttl_days", int(1, 3650), "30"),
    key("hub", "insight_kib_per_instance", int(256, 1 << 30), "4096"),
    key("hub", "broadcast_capacity", int(1, 1 << 20), "1024"),
    key("hub", "writer_queue", int(1, 1 << 24), "4096"),
    key("hub", "max_batch", int(1, 1 << 20), "512"),
    key("hub", "write_timeout_seconds", int(1, 3600), "10"),
    key("hub", "audit_sample_window_seconds", int(1, 86_400), "60"),
    key(
        "retention",
        "interval_minutes",
        int(0, 365 * DAY_MINUTES),
        "60",
    ),
    key(
        "retention",
        "pattern_days",
        int(1, HUNDRED_YEARS_DAYS),
        "30",
    ),
    key(
        "retention",
        "unconfirmed_pattern_days",
        int(1, HUNDRED_YEARS_DAYS),
        "7",
    ),
    key("retention", "low_frequency", int(0, 1_000_000_000), "3"),
    key(
        "retention",
        "outcome_days",
        int(1, HUNDRED_YEARS_DAYS),
        "30",
    ),
    legacy(
        key("retention", "audit_days", int(1, HUNDRED_YEARS_DAYS), "30"),
        "LEARNING_HUB_AUDIT_RETENTION_DAYS",
    ),
    legacy(
        key("tls", "cert_check_seconds", int(0, 86_400), "10"),
        "LEARNING_HUB_CERT_CHECK_SECONDS",
    ),
    key(
        "storage",
        "backend",
        Kind::Choice(&["sled", "postgres"]),
        "\"sled\"",
    ),
    key("storage", "postgres_url", Kind::ConnectionUrl, "\"\""),
    key("storage", "postgres_ca_file", Kind::Text, "\"\""),
    key("storage", "replica_name", Kind::Text, "\"\""),
    key("storage", "postgres_pool_size", int(2, 1000), "8"),
    key("storage", "lease_seconds", int(1, 3600), "10"),
    key("storage", "max_lag_seconds", int(1, 3600), "5"),
    key("model", "buffer_size", int(1, 1000), "5"),
    key(
        "model",
        "aggregation",
        Kind::Choice(&["median", "trimmed-mean", "fedavg"]),
        "\"median\"",
    ),
    key("model", "context_buffer_size", int(1, 1000), "3"),
    key(
        "anomalies",
        "scan_interval_minutes",
        int(0, 365 * DAY_MINUTES),
        "10",
    ),
    key("federation", "region", Kind::Text, "\"\""),
    key("federation", "peers", Kind::Text, "\"\""),
    key(
        "federation",
        "pull_interval_ms",
        int(100, 3_600_000),
        "1000",
    ),
    key("federation", "wake_interval_ms", int(0, 3_600_000), "200"),
    key("log", "format", Kind::Choice(&["text", "json"]), "\"text\""),
    legacy(key("log", "level", Kind::LogFilter, "\"info\""), "RUST_LOG"),
];

/// How the binary logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// The `tracing` filter.
    pub level: String,
}

/// The inputs of [`Settings::resolve`]: everything but the defaults.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// The configuration file, if any.
    pub file: Option<PathBuf>,
    /// The process environment (only `LEARNING_HUB_*` and `RUST_LOG` are
    /// read; other variables are ignored).
    pub env: BTreeMap<String, String>,
    /// Flags given on the command line: (`section.key`, flag as typed, value).
    pub flags: Vec<(String, String, String)>,
}

impl Layers {
    /// The current process's environment.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars()
            .filter(|(name, _)| name.starts_with("LEARNING_HUB_") || name == "RUST_LOG")
            .collect();
        self
    }

    /// Adds a flag's value for `key` (`section.key`) when it was given.
    pub fn flag(&mut self, key: &str, flag: &str, value: Option<impl ToString>) {
        if let Some(value) = value {
            self.flags
                .push((key.to_string(), flag.to_string(), value.to_string()));
        }
    }
}

/// The effective configuration: a value and its source for every key in
/// [`KEYS`], each checked against its kind.
#[derive(Debug, Clone)]
pub struct Settings {
    values: Vec<(toml::Value, Source)>,
}

fn index_of(section: &str, name: &str) -> Option<usize> {
    KEYS.iter()
        .position(|k| k.section == section && k.name == name)
}

fn problem(key: &Key, shown: impl fmt::Display, source: &Source, why: impl fmt::Display) -> Error {
    Error::invalid(format!("{} = {shown} (from {source})", key.path()), why)
}

/// Checks a value against its key's kind; `Ok` is the value as stored.
fn check(key: &Key, value: toml::Value, source: &Source) -> Result<toml::Value> {
    use toml::Value as V;
    let bad = |why: String| problem(key, &value, source, why);
    match (key.kind, &value) {
        (Kind::Addr, V::String(text)) => match text.parse::<SocketAddr>() {
            Ok(_) => Ok(value),
            Err(_) => Err(bad("must be an address like 0.0.0.0:3015".into())),
        },
        (Kind::AddrOrOff, V::String(text)) => {
            if text == "off" || text.parse::<SocketAddr>().is_ok() {
                Ok(value)
            } else {
                Err(bad(
                    "must be an address like 127.0.0.1:9015 or \"off\"".into()
                ))
            }
        }
        (Kind::Path, V::String(text)) => match text.is_empty() {
            true => Err(bad("must not be empty".into())),
            false => Ok(value),
        },
        (Kind::Bool, V::Boolean(_)) => Ok(value),
        (Kind::Int { min, max }, V::Integer(n)) => {
            if (min..=max).contains(n) {
                Ok(value)
            } else if min == 1 && *n < 1 {
                Err(bad("must be positive".into()))
            } else {
                Err(bad(format!("must be within [{min}, {max}]")))
            }
        }
        (Kind::Choice(words), V::String(text)) => match words.contains(&text.as_str()) {
            true => Ok(value),
            false => Err(bad(format!("must be one of {}", words.join(", ")))),
        },
        (Kind::LogFilter, V::String(text)) => {
            match tracing_subscriber::EnvFilter::builder().parse(text) {
                Ok(_) => Ok(value),
                Err(e) => Err(bad(format!("is not a log filter: {e}"))),
            }
        }
        (Kind::Text, V::String(_)) => Ok(value),
        (Kind::ConnectionUrl, V::String(text)) => {
            if text.is_empty() || text.parse::<tokio_postgres::Config>().is_ok() {
                Ok(value)
            } else {
                Err(bad(
                    "must be a PostgreSQL URL like postgres://user@host:5432/database".into(),
                ))
            }
        }
        (kind, _) => Err(bad(format!("must be {}", kind_noun(kind)))),
    }
}

fn kind_noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Addr
        | Kind::AddrOrOff
        | Kind::Path
        | Kind::Choice(_)
        | Kind::LogFilter
        | Kind::Text
        | Kind::ConnectionUrl => "a string",
        Kind::Bool => "true or false",
        Kind::Int { .. } => "an integer",
    }
}

/// Reads text (an environment variable or a flag) as a value of the key's
/// kind.
fn parse_text(key: &Key, text: &str, source: &Source) -> Result<toml::Value> {
    let value = match key.kind {
        Kind::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" | "" => toml::Value::Boolean(false),
            _ => {
                return Err(problem(
                    key,
                    format!("{text:?}"),
                    source,
                    "must be true or false",
                ));
            }
        },
        Kind::Int { .. } => match text.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => {
                return Err(problem(
                    key,
                    format!("{text:?}"),
                    source,
                    "must be an integer",
                ));
            }
        },
        Kind::AddrOrOff if text.eq_ignore_ascii_case("off") => toml::Value::String("off".into()),
        _ => toml::Value::String(text.to_string()),
    };
    check(key, value, source)
}

/// `LEARNING_HUB_*` variables read by the project's other commands and
/// clients (`admin`, `simulate`, `bench`, `HubClient`, the example agents),
/// not by `serve`.
pub const OTHER_ENV: &[&str] = &["LEARNING_HUB_CONFIG", "LEARNING_HUB_URL"];

/// Every `LEARNING_HUB_*` name this project reads.
pub fn known_env_names() -> Vec<String> {
    let mut names: Vec<String> = KEYS
        .iter()
        .flat_map(|key| [Some(key.env()), key.legacy_env.map(String::from)])
        .flatten()
        .filter(|name| name.starts_with("LEARNING_HUB_"))
        .chain(OTHER_ENV.iter().map(|name| name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// An error for the first `LEARNING_HUB_*` variable no part of the hub
/// reads — a typo would otherwise be ignored in silence while the same
/// typo in the file is an error. The prefix is this project's, so a name
/// under it that nothing reads is a mistake, not another tool's variable.
fn check_env_names(env: &BTreeMap<String, String>) -> Result<()> {
    let known = known_env_names();
    for name in env.keys().filter(|name| name.starts_with("LEARNING_HUB_")) {
        if known.contains(name) {
            continue;
        }
        // Compared without the shared prefix, which says nothing.
        let suffix = &name["LEARNING_HUB_".len()..];
        let nearest = known
            .iter()
            .map(|k| (strsim::levenshtein(&k["LEARNING_HUB_".len()..], suffix), k))
            .min()
            .filter(|(distance, _)| *distance <= suffix.len().max(3) / 3)
            .map(|(_, k)| format!("; did you mean {k}?"))
            .unwrap_or_else(|| {
                "; the sectioned names are LEARNING_HUB_<SECTION>_<KEY> for each key of \
                 config/hub.toml"
                    .into()
            });
        return Err(Error::invalid(
            format!("{name} (environment)"),
            format!("unknown variable{nearest}"),
        ));
    }
    Ok(())
}

impl Settings {
    /// Every key at its built-in default.
    pub fn defaults() -> Self {
        let values = KEYS
            .iter()
            .map(|key| {
                let value = toml::from_str::<toml::Table>(&format!("v = {}", key.default))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(key.default.to_string()));
                (value, Source::Default)
            })
            .collect();
        Settings { values }
    }

    /// Defaults, then the file, the environment and the flags of `layers`.
    pub fn resolve(layers: &Layers) -> Result<Self> {
        let mut settings = Settings::defaults();
        if let Some(path) = &layers.file {
            settings.apply_file(path)?;
        }
        settings.apply_env(&layers.env)?;
        for (name, flag, text) in &layers.flags {
            let (section, key_name) = name.split_once('.').unwrap_or(("", name));
            let at = index_of(section, key_name).ok_or_else(|| {
                Error::invalid(flag.as_str(), format!("no configuration key {name}"))
            })?;
            let source = Source::Flag(flag.clone());
            let value = parse_text(&KEYS[at], text, &source)?;
            settings.values[at] = (value, source);
        }
        settings.check_together()?;
        Ok(settings)
    }

    fn apply_file(&mut self, path: &Path) -> Result<()> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!("--config {shown}"), format!("cannot read: {e}"))
        })?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::invalid(shown.clone(), format!("not valid TOML: {e}")))?;
        let source = Source::File(path.to_path_buf());
        for (section, entries) in table {
            let known: Vec<&str> = KEYS
                .iter()
                .filter(|k| k.section == section)
                .map(|k| k.name)
                .collect();
            if known.is_empty() {
                let sections: Vec<&str> =
                    KEYS.iter()
                        .map(|k| k.section)
                        .fold(Vec::new(), |mut all, s| {
                            if !all.contains(&s) {
                                all.push(s);
                            }
                            all
                        });
                return Err(Error::invalid(
                    format!("{section} (in {shown})"),
                    format!("unknown section; the sections are {}", sections.join(", ")),
                ));
            }
            let toml::Value::Table(entries) = entries else {
                return Err(Error::invalid(
                    format!("{section} (in {shown})"),
                    format!("must be a section: [{section}]"),
                ));
            };
            for (name, value) in entries {
                let Some(at) = index_of(&section, &name) else {
                    return Err(Error::invalid(
                        format!("{section}.{name} (in {shown})"),
                        format!("unknown key; [{section}] has {}", known.join(", ")),
                    ));
                };
                let value = check(&KEYS[at], value, &source)?;
                self.values[at] = (value, source.clone());
            }
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<()> {
        check_env_names(env)?;
        for (at, key) in KEYS.iter().enumerate() {
            // The sectioned name wins over the older short one.
            let found = [Some(key.env()), key.legacy_env.map(String::from)]
                .into_iter()
                .flatten()
                .find_map(|name| env.get(&name).map(|text| (name, text)));
            if let Some((name, text)) = found {
                let source = Source::Env(name);
                let value = parse_text(key, text, &source)?;
                self.values[at] = (value, source);
            }
        }
        Ok(())
    }

    /// Rules between keys.
    fn check_together(&self) -> Result<()> {
        let (ttl, ttl_source) = self.entry("hub", "insight_ttl_days");
        let max = self.int("hub", "max_insight_ttl_days");
        if ttl.as_integer().unwrap_or(0) > max {
            return Err(problem(
                &KEYS[index_of("hub", "insight_ttl_days").unwrap_or(0)],
                ttl,
                ttl_source,
                format!("must not exceed hub.max_insight_ttl_days ({max})"),
            ));
        }
        Ok(())
    }

    /// The value of `section.name` and where it came from (`None`: no
    /// such key in [`KEYS`]).
    pub fn get(&self, section: &str, name: &str) -> Option<(&toml::Value, &Source)> {
        let (value, source) = &self.values[index_of(section, name)?];
        Some((value, source))
    }

    /// [`Settings::get`] for the names this module itself reads; that they
    /// all exist is checked by the tests, which read every one.
    fn entry(&self, section: &str, name: &str) -> (&toml::Value, &Source) {
        let at = index_of(section, name)
            .unwrap_or_else(|| panic!("no configuration key {section}.{name}"));
        let (value, source) = &self.values[at];
        (value, source)
    }

    fn int(&self, section: &str, name: &str) -> i64 {
        self.entry(section, name).0.as_integer().unwrap_or(0)
    }

    fn unsigned<T: TryFrom<i64> + Default>(&self, section: &str, name: &str) -> T {
        // `check` kept every integer within a range that fits its field.
        T::try_from(self.int(section, name)).unwrap_or_default()
    }

    fn string(&self, section: &str, name: &str) -> &str {
        self.entry(section, name).0.as_str().unwrap_or("")
    }

    fn seconds(&self, section: &str, name: &str) -> Duration {
        Duration::from_secs(self.unsigned(section, name))
    }

    /// Where `serve` listens.
    pub fn listen(&self) -> SocketAddr {
        self.string("server", "listen").parse().unwrap_or_else(|_| {
            crate::config::DEFAULT_LISTEN
                .parse()
                .expect("valid default")
        })
    }

    /// The server's configuration.
    pub fn config(&self) -> Config {
        let mut config = Config::new(
            self.string("server", "data_dir"),
            self.string("server", "certs_dir"),
        );
        config.listen = self.listen();
        // A development PKI is made only where an operator would expect
        // one: in the default directory, or where they asked. A mistyped
        // --certs-dir is an error naming the missing ca.pem, not a new CA.
        config.generate_dev_pki = self.string("server", "certs_dir") == "certs"
            || matches!(
                self.entry("server", "init_dev_pki").0,
                toml::Value::Boolean(true)
            );
        config.insecure_dev = matches!(
            self.entry("server", "insecure_dev").0,
            toml::Value::Boolean(true)
        );
        config.metrics_listen = self.string("server", "metrics_listen").parse().ok();

        let limits = &mut config.limits;
        limits.max_message_bytes = self.unsigned("limits", "max_message_bytes");
        limits.max_concurrent_streams = self.unsigned("limits", "max_concurrent_streams");
        limits.max_connections = self.unsigned("limits", "max_connections");
        limits.max_connections_per_identity =
            self.unsigned("limits", "max_connections_per_identity");
        limits.max_handshakes = self.unsigned("limits", "max_handshakes");
        limits.max_handshakes_per_source = self.unsigned("limits", "max_handshakes_per_source");
        limits.max_streams_per_identity = self.unsigned("limits", "max_streams_per_identity");
        limits.idle_timeout = self.seconds("limits", "idle_timeout_seconds");
        limits.tls_handshake_timeout_under_pressure = Duration::from_millis(
            self.unsigned("limits", "tls_handshake_timeout_under_pressure_ms"),
        );
        limits.max_in_flight = self.unsigned("limits", "max_in_flight");
        limits.refusal_pause = Duration::from_millis(self.unsigned("limits", "refusal_pause_ms"));
        limits.tls_handshake_timeout = self.seconds("limits", "tls_handshake_timeout_seconds");
        limits.http2_keepalive_interval = self.seconds("limits", "keepalive_interval_seconds");
        limits.http2_keepalive_timeout = self.seconds("limits", "keepalive_timeout_seconds");
        limits.drain_timeout = self.seconds("limits", "drain_timeout_seconds");
        limits.refused_certificate_grace =
            self.seconds("limits", "refused_certificate_grace_seconds");

        let minutes = |n: u64| (n > 0).then(|| Duration::from_secs(60 * n));
        config.insight_interval = minutes(self.unsigned("hub", "insight_interval_minutes"));
        config.retention_interval = minutes(self.unsigned("retention", "interval_minutes"));
        config.anomaly_interval = minutes(self.unsigned("anomalies", "scan_interval_minutes"));
        let cert_check: u64 = self.unsigned("tls", "cert_check_seconds");
        config.cert_check_interval = (cert_check > 0).then(|| Duration::from_secs(cert_check));

        const HOUR_MS: i64 = 60 * 60 * 1000;
        let hub = &mut config.hub;
        hub.rate_limit_per_hour = self.unsigned("hub", "rate_limit_per_hour");
        hub.rate_limit_max_tracked = self.unsigned("hub", "rate_limit_max_tracked");
        hub.request_id_window_ms = self.int("hub", "request_id_window_hours") * HOUR_MS;
        hub.insight_ttl_ms = self.int("hub", "insight_ttl_days") * 24 * HOUR_MS;
        hub.max_insight_ttl_ms = self.int("hub", "max_insight_ttl_days") * 24 * HOUR_MS;
        hub.insight_bytes_per_instance =
            self.unsigned::<u64>("hub", "insight_kib_per_instance") * 1024;
        hub.broadcast_capacity = self.unsigned("hub", "broadcast_capacity");
        hub.writer_queue = self.unsigned("hub", "writer_queue");
        hub.max_batch = self.unsigned("hub", "max_batch");
        hub.write_timeout = self.seconds("hub", "write_timeout_seconds");
        hub.audit_sample_window = self.seconds("hub", "audit_sample_window_seconds");
        let retention = &mut hub.retention;
        retention.pattern_days = self.int("retention", "pattern_days");
        retention.unconfirmed_pattern_days = self.int("retention", "unconfirmed_pattern_days");
        retention.low_frequency = self.unsigned("retention", "low_frequency");
        retention.outcome_days = self.int("retention", "outcome_days");
        retention.audit_days = self.int("retention", "audit_days");
        hub.federation.buffer_size = self.unsigned("model", "buffer_size");
        hub.federation.aggregation =
            Aggregation::parse(self.string("model", "aggregation")).unwrap_or(Aggregation::Median);
        hub.context_buffer_size = self.unsigned("model", "context_buffer_size");
        hub.region = self.string("federation", "region").trim().to_string();
        // "region" lets that region's hub pull from this one;
        // "region=url" also makes this one pull from it.
        for peer in self
            .string("federation", "peers")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (region, url) = match peer.split_once('=') {
                Some((region, url)) => (region.trim(), Some(url.trim())),
                None => (peer, None),
            };
            hub.peers.insert(region.to_string());
            if let Some(url) = url {
                config.pull_from.insert(region.to_string(), url.to_string());
            }
        }
        config.pull_interval =
            Duration::from_millis(self.unsigned::<u64>("federation", "pull_interval_ms"));
        config.wake_interval = match self.unsigned::<u64>("federation", "wake_interval_ms") {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };

        let storage = &mut config.storage;
        storage.backend = match self.string("storage", "backend") {
            "postgres" => StorageBackend::Postgres,
            _ => StorageBackend::Sled,
        };
        storage.postgres_url =
            Some(self.string("storage", "postgres_url").to_string()).filter(|url| !url.is_empty());
        storage.postgres_ca_file = Some(self.string("storage", "postgres_ca_file"))
            .filter(|path| !path.is_empty())
            .map(std::path::PathBuf::from);
        storage.replica_name = Some(self.string("storage", "replica_name").to_string())
            .filter(|name| !name.is_empty());
        storage.postgres_pool_size = self.unsigned("storage", "postgres_pool_size");
        storage.lease = self.seconds("storage", "lease_seconds");
        storage.max_lag = self.seconds("storage", "max_lag_seconds");
        config
    }

    /// How to log.
    pub fn log(&self) -> LogSettings {
        LogSettings {
            json: self.string("log", "format") == "json",
            level: self.string("log", "level").to_string(),
        }
    }

    /// The configuration as a TOML file in the shape `--config` reads;
    /// with `sources`, each value is followed by a comment saying where it
    /// came from.
    pub fn to_toml(&self, sources: bool) -> String {
        let mut out = String::new();
        let mut section = "";
        for (key, (value, source)) in KEYS.iter().zip(&self.values) {
            if key.section != section {
                if !section.is_empty() {
                    out.push('\n');
                }
                section = key.section;
                out.push_str(&format!("[{section}]\n"));
            }
            let shown = match (key.kind, value) {
                (Kind::ConnectionUrl, toml::Value::String(url)) => {
                    toml::Value::String(without_password(url))
                }
                _ => value.clone(),
            };
            out.push_str(&format!("{} = {shown}", key.name));
            if sources {
                out.push_str(&format!("  # {source}"));
            }
            out.push('\n');
        }
        out
    }
}

/// A connection URL with its password replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value form: hide `password=…`.
        return url
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn layers(file: Option<&Path>, env: &[(&str, &str)], flags: &[(&str, &str, &str)]) -> Layers {
        Layers {
            file: file.map(Path::to_path_buf),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: flags
                .iter()
                .map(|(k, f, v)| (k.to_string(), f.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn error(layers: &Layers) -> String {
        Settings::resolve(layers).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let settings = Settings::defaults();
        let config = settings.config();
        let library = Config::new("data", "certs");
        assert_eq!(config.listen, library.listen);
        assert_eq!(
            config.limits.max_message_bytes,
            library.limits.max_message_bytes
        );
        assert_eq!(config.limits.max_in_flight, library.limits.max_in_flight);
        assert_eq!(config.limits.drain_timeout, library.limits.drain_timeout);
        assert_eq!(config.insight_interval, library.insight_interval);
        assert_eq!(config.retention_interval, library.retention_interval);
        assert_eq!(config.cert_check_interval, library.cert_check_interval);
        assert_eq!(config.hub.insight_ttl_ms, library.hub.insight_ttl_ms);
        assert_eq!(
            config.hub.max_insight_ttl_ms,
            library.hub.max_insight_ttl_ms
        );
        assert_eq!(
            config.hub.request_id_window_ms,
            library.hub.request_id_window_ms
        );
        assert_eq!(
            config.hub.rate_limit_per_hour,
            library.hub.rate_limit_per_hour
        );
        assert_eq!(
            config.hub.retention.audit_days,
            library.hub.retention.audit_days
        );
        assert_eq!(config.hub.writer_queue, library.hub.writer_queue);
        // The CLI serves metrics by default; the library opts out.
        assert_eq!(
            config.metrics_listen,
            Some(crate::config::DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
        config.validate().unwrap();
        assert!(settings.get("server", "lisen").is_none());
        assert_eq!(
            settings.get("server", "listen"),
            Some((
                &toml::Value::String("0.0.0.0:3015".into()),
                &Source::Default
            ))
        );
        for (value, source) in &settings.values {
            assert_eq!(source, &Source::Default);
            assert!(!matches!(value, toml::Value::String(s) if s.starts_with('"')));
        }
    }

    #[test]
    fn each_layer_overrides_the_one_before_key_by_key() {
        let f = file(
            "[limits]\nmax_in_flight = 10\n[hub]\nrate_limit_per_hour = 20\n\
             request_id_window_hours = 2\n[retention]\naudit_days = 3\n",
        );
        let env = [
            ("LEARNING_HUB_HUB_RATE_LIMIT_PER_HOUR", "21"),
            ("LEARNING_HUB_REQUEST_ID_WINDOW_HOURS", "5"),
            ("LEARNING_HUB_LOG_FORMAT", "json"),
        ];
        let flags = [
            (
                "hub.request_id_window_hours",
                "--request-id-window-hours",
                "6",
            ),
            ("log.format", "--log-format", "text"),
        ];
        let settings = Settings::resolve(&layers(Some(f.path()), &env, &flags)).unwrap();
        let file_source = Source::File(f.path().to_path_buf());

        // Default only.
        assert_eq!(
            settings.entry("limits", "max_connections").1,
            &Source::Default
        );
        // File over default.
        assert_eq!(settings.entry("limits", "max_in_flight").1, &file_source);
        assert_eq!(settings.entry("retention", "audit_days").1, &file_source);
        // Environment over file.
        assert_eq!(
            settings.entry("hub", "rate_limit_per_hour").1,
            &Source::Env("LEARNING_HUB_HUB_RATE_LIMIT_PER_HOUR".into())
        );
        // Flag over environment over file.
        assert_eq!(
            settings.entry("hub", "request_id_window_hours").1,
            &Source::Flag("--request-id-window-hours".into())
        );
        assert_eq!(
            settings.log(),
            LogSettings {
                json: false,
                level: "info".into()
            }
        );

        let config = settings.config();
        assert_eq!(config.limits.max_in_flight, 10);
        assert_eq!(config.limits.max_connections, 10_000);
        assert_eq!(config.hub.rate_limit_per_hour, 21);
        assert_eq!(config.hub.request_id_window_ms, 6 * 60 * 60 * 1000);
        assert_eq!(config.hub.retention.audit_days, 3);

        // Without the flags, the environment wins; without it, the file.
        let settings = Settings::resolve(&layers(Some(f.path()), &env, &[])).unwrap();
        assert_eq!(
            settings.config().hub.request_id_window_ms,
            5 * 60 * 60 * 1000
        );
        assert!(settings.log().json);
        let settings = Settings::resolve(&layers(Some(f.path()), &[], &[])).unwrap();
        assert_eq!(
            settings.config().hub.request_id_window_ms,
            2 * 60 * 60 * 1000
        );
        assert_eq!(settings.config().hub.rate_limit_per_hour, 20);
    }

    #[test]
    fn the_sectioned_environment_name_wins_over_the_older_one() {
        let env = [
            ("LEARNING_HUB_LISTEN", "127.0.0.1:1"),
            ("LEARNING_HUB_SERVER_LISTEN", "127.0.0.1:2"),
            ("RUST_LOG", "debug"),
        ];
        let settings = Settings::resolve(&layers(None, &env, &[])).unwrap();
        assert_eq!(settings.listen(), "127.0.0.1:2".parse().unwrap());
        assert_eq!(settings.log().level, "debug");
        let only_old = Settings::resolve(&layers(None, &env[..1], &[])).unwrap();
        assert_eq!(only_old.listen(), "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_source() {
        let f = file("[limits]\nmax_in_flight = 0\n");
        let shown = f.path().display().to_string();
        assert_eq!(
            error(&layers(Some(f.path()), &[], &[])),
            format!("limits.max_in_flight = 0 (from {shown}): must be positive")
        );

        let f = file("[server]\nlisen = \"0.0.0.0:1\"\n");
        let message = error(&layers(Some(f.path()), &[], &[]));
        assert!(message.starts_with("server.lisen (in "), "{message}");
        assert!(
            message.contains("unknown key") && message.contains("listen"),
            "{message}"
        );

        let f = file("[sever]\nlisten = \"0.0.0.0:1\"\n");
        let message = error(&layers(Some(f.path()), &[], &[]));
        assert!(message.starts_with("sever (in "), "{message}");

        let f = file("[hub]\nrate_limit_per_hour = \"lots\"\n");
        let message = error(&layers(Some(f.path()), &[], &[]));
        assert_eq!(
            message,
            format!(
                "hub.rate_limit_per_hour = \"lots\" (from {shown_b}): must be an integer",
                shown_b = f.path().display()
            )
        );

        let message = error(&layers(
            None,
            &[("LEARNING_HUB_MAX_IN_FLIGHT", "many")],
            &[],
        ));
        assert_eq!(
            message,
            "limits.max_in_flight = \"many\" (from environment LEARNING_HUB_MAX_IN_FLIGHT): must be an integer"
        );

        let message = error(&layers(
            None,
            &[],
            &[(
                "hub.request_id_window_hours",
                "--request-id-window-hours",
                "9000",
            )],
        ));
        assert_eq!(
            message,
            "hub.request_id_window_hours = 9000 (from flag --request-id-window-hours): \
             must be within [1, 8760]"
        );

        let message = error(&layers(None, &[("LEARNING_HUB_LOG_FORMAT", "xml")], &[]));
        assert!(message.starts_with("log.format = \"xml\""), "{message}");
        let message = error(&layers(
            None,
            &[("LEARNING_HUB_SERVER_LISTEN", "nowhere")],
            &[],
        ));
        assert!(
            message.starts_with("server.listen = \"nowhere\""),
            "{message}"
        );

        let f = file("[hub]\ninsight_ttl_days = 40\n");
        let message = error(&layers(Some(f.path()), &[], &[]));
        assert!(
            message.starts_with("hub.insight_ttl_days = 40"),
            "{message}"
        );
        assert!(message.contains("max_insight_ttl_days"), "{message}");

        let f = file("[hub\n");
        let message = error(&layers(Some(f.path()), &[], &[]));
        assert!(message.contains("not valid TOML"), "{message}");

        let missing = layers(Some(Path::new("/nonexistent/hub.toml")), &[], &[]);
        assert!(error(&missing).contains("/nonexistent/hub.toml"));
    }

    #[test]
    fn printed_settings_load_back_to_the_same_values() {
        let env = [
            ("LEARNING_HUB_METRICS_LISTEN", "off"),
            ("LEARNING_HUB_SERVER_DATA_DIR", "/var/lib/hub \"x\""),
            ("LEARNING_HUB_SERVER_INSECURE_DEV", "true"),
        ];
        let settings = Settings::resolve(&layers(None, &env, &[])).unwrap();
        let printed = settings.to_toml(true);
        assert!(
            printed.contains("# environment LEARNING_HUB_METRICS_LISTEN"),
            "{printed}"
        );
        let f = file(&printed);
        let again = Settings::resolve(&layers(Some(f.path()), &[], &[])).unwrap();
        for (key, (a, b)) in KEYS.iter().zip(settings.values.iter().zip(&again.values)) {
            assert_eq!(a.0, b.0, "{}", key.path());
            assert_eq!(b.1, Source::File(f.path().to_path_buf()));
        }
        let config = again.config();
        assert_eq!(config.metrics_listen, None);
        assert!(config.insecure_dev);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/hub \"x\""));
    }

    #[test]
    fn the_sample_file_sets_every_key_to_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/hub.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        for key in KEYS {
            assert!(
                table
                    .get(key.section)
                    .and_then(|s| s.get(key.name))
                    .is_some(),
                "config/hub.toml sets {}",
                key.path()
            );
        }
        let sample = Settings::resolve(&layers(Some(&path), &[], &[])).unwrap();
        assert_eq!(sample.to_toml(false), Settings::defaults().to_toml(false));
    }
}
