//! The hub's TLS material — `ca.pem`, `server.pem`, `server.key` and the
//! optional `crl.pem` — loaded, validated, and replaced while the hub
//! serves.
//!
//! Certificates expire and get revoked; restarting the hub for either
//! would cut every instance's connection and insight stream. So the
//! material lives in a [`ServerTls`] holder, a `watch` channel of
//! [`TlsMaterial`]: the transport takes the current one for each new
//! handshake, and a reload (SIGHUP, or a file whose modification time,
//! size or inode changed — checked every `Config::cert_check_interval`)
//! builds a complete new one and swaps it in. Open connections keep the
//! session they negotiated, so calls in flight never notice a rotation.
//!
//! A reload is all or nothing: every file is read and checked (PEM parses,
//! the server certificate is valid now and matches its key, each CRL is
//! signed by the CA in `ca.pem` it names) before anything is swapped, and a
//! file that fails keeps the previous material in use, with an error that
//! names the file. A broken file never takes the hub down, and a CRL with a
//! bad signature never locks out a CA's clients.
//!
//! Revocation: client certificates are verified with rustls' webpki
//! verifier and the CRLs of `crl.pem`. A CA without a CRL there revokes
//! nothing (unknown status is accepted: `crl.pem` is a deny list). New
//! handshakes with a revoked certificate fail with the TLS alert
//! `CertificateRevoked`; connections opened before the revocation are
//! re-checked against every new material by the transport
//! ([`TlsMaterial::refusal`]). A new `ServerConfig` also means a new
//! session cache, so a revoked client cannot resume a session from before.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rustls::{
    CertificateError, RootCertStore,
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime, pem::PemObject,
    },
    server::{VerifierBuilderError, WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use crate::error::{Error, Result};
use crate::pki;

/// The files the hub's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CAs whose client certificates are accepted (one or more PEM
    /// certificates: during a CA rollover, the old and the new).
    pub ca: PathBuf,
    /// The server certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
    /// Revoked client certificates: PEM CRLs. Optional.
    pub crl: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `server.pem`, `server.key` and `crl.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            ca: dir.join(pki::CA_CERT),
            cert: dir.join(pki::SERVER_CERT),
            key: dir.join(pki::SERVER_KEY),
            crl: dir.join(pki::CRL),
        }
    }

    fn all(&self) -> [&Path; 4] {
        [&self.ca, &self.cert, &self.key, &self.crl]
    }
}

/// One complete, validated set of TLS material: what a handshake uses.
pub struct TlsMaterial {
    config: Arc<rustls::ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
    server_serial: String,
    authorities: usize,
    revoked: usize,
    /// Loaded fine, but worth an operator's look (logged at each load).
    warnings: Vec<String>,
    /// Of the files' contents: a reload that reads the same bytes swaps
    /// nothing.
    digest: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("server_serial", &self.server_serial)
            .field("authorities", &self.authorities)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// An error about the contents of `path`, naming it.
fn bad(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("{}: {detail}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", path.display())))
}

/// The file's bytes, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Unavailable(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Every PEM certificate in `pem`; at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn parse_certificate<'a>(
    path: &Path,
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| bad(path, format!("certificate #{}: {e}", index + 1)))
}

impl TlsMaterial {
    /// Reads and validates `files`. Errors name the file at fault.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let ca_pem = read(&files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let crl_pem = read_optional(&files.crl)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for contents in [
            Some(&ca_pem),
            Some(&cert_pem),
            Some(&key_pem),
            crl_pem.as_ref(),
        ] {
            let contents = contents.map(Vec::as_slice).unwrap_or_default();
            digest.update(&(contents.len() as u64).to_be_bytes());
            digest.update(contents);
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let authorities = certificates(&files.ca, &ca_pem)?;
        let mut roots = RootCertStore::empty();
        for (i, ca) in authorities.iter().enumerate() {
            roots
                .add(ca.clone())
                .map_err(|e| bad(&files.ca, format!("certificate #{}: {e}", i + 1)))?;
        }

        let chain = certificates(&files.cert, &cert_pem)?;
        let leaf = parse_certificate(&files.cert, 0, &chain[0])?;
        let validity = leaf.validity();
        if !validity.is_valid() {
            return Err(bad(
                &files.cert,
                format!(
                    "the certificate is not valid now (valid from {} until {})",
                    validity.not_before, validity.not_after
                ),
            ));
        }
        let server_serial = pki::serial_hex(leaf.raw_serial());
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(&files.key, format!("no usable PEM private key: {e}")))?;
        provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| bad(&files.key, e))?;

        let (crls, revoked, warnings) = revocation_lists(files, crl_pem.as_deref(), &authorities)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                // crl.pem is a deny list: a CA it has no CRL for revokes
                // nothing, rather than refusing all of that CA's clients.
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| match e {
                    VerifierBuilderError::InvalidCrl(_) => bad(&files.crl, e),
                    _ => bad(&files.ca, e),
                })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS protocol setup: {e}")))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => bad(
                    &files.key,
                    format!(
                        "does not belong to the certificate in {}",
                        files.cert.display()
                    ),
                ),
                other => bad(&files.cert, other),
            })?;
        // HTTP/2 for gRPC; HTTP/1.1 for the JSON gateway's callers.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsMaterial {
            config: Arc::new(config),
            verifier,
            server_serial,
            authorities: authorities.len(),
            revoked,
            warnings,
            digest: digest.finish().as_ref().to_vec(),
        })
    }

    /// The rustls configuration new handshakes use.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The server certificate's serial number, as OpenSSL prints it.
    pub fn server_serial(&self) -> &str {
        &self.server_serial
    }

    /// How many CAs `ca.pem` holds.
    pub fn authorities(&self) -> usize {
        self.authorities
    }

    /// How many certificates the CRLs list.
    pub fn revoked(&self) -> usize {
        self.revoked
    }

    /// Why this material would refuse the client certificate chain
    /// `chain` (leaf first) now — revoked, issuer no longer trusted,
    /// expired — or `None` if it accepts it. The same verification a
    /// handshake runs, so an open connection is held to what a new one
    /// would be.
    pub fn refusal(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Some("no client certificate".into());
        };
        let verified = self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now());
        match verified {
            Ok(_) => None,
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {
                Some(format!("it is revoked ({} lists its serial)", pki::CRL))
            }
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                Some(format!("its issuer is no longer a CA in {}", pki::CA_CERT))
            }
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Some("it has expired".into()),
            Err(e) => Some(e.to_string()),
        }
    }
}

/// The CRLs of `crl.pem` (none without the file), how many certificates
/// they list, and warnings. Each CRL must parse and, if `ca.pem` holds its
/// issuer, carry that CA's signature: webpki would otherwise refuse every
/// client of the CA at the next handshake.
fn revocation_lists(
    files: &TlsFiles,
    pem: Option<&[u8]>,
    authorities: &[CertificateDer<'static>],
) -> Result<(
    Vec<CertificateRevocationListDer<'static>>,
    usize,
    Vec<String>,
)> {
    let Some(pem) = pem else {
        return Ok((Vec::new(), 0, Vec::new()));
    };
    let path = &files.crl;
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("invalid PEM: {e}")))?;
    if crls.is_empty() && !pem.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(path, "holds no PEM CRL (-----BEGIN X509 CRL-----)"));
    }
    let cas = authorities
        .iter()
        .enumerate()
        .map(|(i, der)| parse_certificate(&files.ca, i, der))
        .collect::<Result<Vec<_>>>()?;
    let mut revoked = 0;
    let mut warnings = Vec::new();
    for (i, der) in crls.iter().enumerate() {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| bad(path, format!("CRL #{}: {e}", i + 1)))?;
        let issuer = crl.issuer();
        let mut same_name = cas
            .iter()
            .filter(|ca| ca.subject().as_raw() == issuer.as_raw())
            .peekable();
        if same_name.peek().is_none() {
            warnings.push(format!(
                "{}: CRL #{} is issued by {issuer}, which is not a CA in {}; it revokes nothing",
                path.display(),
                i + 1,
                files.ca.display()
            ));
        } else if !same_name.any(|ca| crl.verify_signature(ca.public_key()).is_ok()) {
            return Err(bad(
                path,
                format!(
                    "CRL #{} names {issuer} as its issuer but that CA's key in {} did not sign it",
                    i + 1,
                    files.ca.display()
                ),
            ));
        }
        revoked += crl.iter_revoked_certificates().count();
    }
    Ok((crls, revoked, warnings))
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    /// A file replaced by rename (or a Kubernetes secret's symlink swap)
    /// is a new inode, even with the old time and size.
    inode: u64,
}

fn stamps(files: &TlsFiles) -> Vec<Option<Stamp>> {
    files
        .all()
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|meta| Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                #[cfg(unix)]
                inode: std::os::unix::fs::MetadataExt::ino(&meta),
                #[cfg(not(unix))]
                inode: 0,
            })
        })
        .collect()
}

/// What a successful [`ServerTls::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold what is already in use; nothing was swapped.
    Unchanged,
    /// New handshakes use the new material.
    Replaced,
}

/// The hub's current TLS material, replaceable while serving. Cheap to
/// clone; clones share the material.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Shared>,
}

struct Shared {
    files: TlsFiles,
    current: watch::Sender<Arc<TlsMaterial>>,
    /// The files' stamps when they were last read; also serialises
    /// reloads (SIGHUP and the periodic check may coincide).
    read_at: Mutex<Vec<Option<Stamp>>>,
    /// Reloads asked for (SIGHUP), served by the reloader task.
    requests: Notify,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.shared.files)
            .field("current", &*self.current())
            .finish()
    }
}

impl ServerTls {
    /// Loads `files`; at start-up, an error here is fatal.
    pub fn load(files: TlsFiles) -> Result<Self> {
        let read_at = stamps(&files);
        let material = TlsMaterial::load(&files)?;
        for warning in &material.warnings {
            tracing::warn!("{warning}");
        }
        let (current, _) = watch::channel(Arc::new(material));
        Ok(ServerTls {
            shared: Arc::new(Shared {
                files,
                current,
                read_at: Mutex::new(read_at),
                requests: Notify::new(),
            }),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.shared.files
    }

    /// The material new handshakes use now.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.shared.current.borrow().clone()
    }

    /// Follows the material: the receiver sees every replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TlsMaterial>> {
        self.shared.current.subscribe()
    }

    /// Re-reads and validates the files and, if they hold something new,
    /// swaps it in for new handshakes. On error nothing changes: the
    /// previous material stays in use. Blocks on file I/O.
    pub fn reload(&self) -> Result<Reloaded> {
        let mut read_at = self
            .shared
            .read_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Stamped before reading: a file that changes while it is read is
        // seen as changed at the next check.
        *read_at = stamps(&self.shared.files);
        let material = TlsMaterial::load(&self.shared.files)?;
        for warning in &material.warnings {
            tracing::warn!("{warning}");
        }
        if material.digest == self.current().digest {
            return Ok(Reloaded::Unchanged);
        }
        self.shared.current.send_replace(Arc::new(material));
        Ok(Reloaded::Replaced)
    }

    /// Whether a file's stamp (modification time, size, inode; or its
    /// existence) differs from when the files were last read.
    pub fn changed_on_disk(&self) -> bool {
        let read_at = self
            .shared
            .read_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *read_at != stamps(&self.shared.files)
    }

    /// Asks the reloader task ([`spawn_reloader`]) to reload now, whether
    /// or not a file looks changed (SIGHUP). Requests made before it runs
    /// are kept.
    pub fn request_reload(&self) {
        self.shared.requests.notify_one();
    }

    /// [`reload`](Self::reload), logged: the outcome, or the error naming
    /// the file and saying the previous material stays in use.
    fn reload_logged(&self, trigger: &'static str) -> Result<Reloaded> {
        let outcome = self.reload();
        match &outcome {
            Ok(Reloaded::Replaced) => {
                let material = self.current();
                tracing::info!(
                    trigger,
                    server_serial = material.server_serial(),
                    authorities = material.authorities(),
                    revoked = material.revoked(),
                    "reloaded TLS certificates: new connections use them; open connections \
                     whose client certificate they refuse are refused and closed"
                );
            }
            Ok(Reloaded::Unchanged) => {
                tracing::info!(trigger, "TLS certificates unchanged");
            }
            Err(e) => tracing::error!(
                trigger,
                error = %e,
                "TLS reload failed; the previous certificates stay in use"
            ),
        }
        outcome
    }
}

/// Runs reloads until `shutdown` turns true: whenever one is requested
/// ([`ServerTls::request_reload`]) and, with `check_every`, whenever a
/// periodic check finds a file changed. Each outcome is logged; a failed
/// reload keeps the previous material and is retried when a file changes
/// again.
pub fn spawn_reloader(
    tls: ServerTls,
    check_every: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = check_every.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let requested = tokio::select! {
                () = tls.shared.requests.notified() => true,
                _ = async {
                    match &mut ticks {
                        Some(ticks) => ticks.tick().await,
                        None => std::future::pending().await,
                    }
                } => false,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            let tls = tls.clone();
            // File reads and certificate parsing: off the async workers.
            let ran = tokio::task::spawn_blocking(move || {
                if requested {
                    tls.reload_logged("reload requested").map(drop)
                } else if tls.changed_on_disk() {
                    tls.reload_logged("certificate files changed").map(drop)
                } else {
                    Ok(())
                }
            })
            .await;
            if let Err(e) = ran {
                tracing::error!(error = %e, "TLS reload task failed");
            }
        }
        tracing::debug!("TLS reloader stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identity::Identity;

    fn pki_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        pki::generate_dev_pki(dir.path()).unwrap();
        dir
    }

    fn chain_of(dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
        let pem = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
        certificates(Path::new(name), &pem).unwrap()
    }

    #[track_caller]
    fn assert_names(result: Result<impl std::fmt::Debug>, file: &str, detail: &str) {
        let message = result.expect_err("must fail").to_string();
        assert!(
            message.contains(file) && message.contains(detail),
            "expected an error naming {file} and saying {detail:?}, got {message:?}"
        );
    }

    #[test]
    fn broken_files_are_refused_with_their_name_and_the_old_material_stays() {
        let dir = pki_dir();
        let files = TlsFiles::in_dir(dir.path());
        let tls = ServerTls::load(files.clone()).unwrap();
        let serial = tls.current().server_serial().to_string();
        let other = pki_dir();

        let cases: [(&Path, Vec<u8>, &str, &str); 7] = [
            (
                &files.cert,
                b"garbage".to_vec(),
                "server.pem",
                "no PEM certificate",
            ),
            (
                &files.key,
                b"".to_vec(),
                "server.key",
                "no usable PEM private key",
            ),
            (
                &files.key,
                std::fs::read(other.path().join("server.key")).unwrap(),
                "server.key",
                "does not belong to the certificate",
            ),
            (&files.ca, b"".to_vec(), "ca.pem", "no PEM certificate"),
            (&files.crl, b"not a crl".to_vec(), "crl.pem", "no PEM CRL"),
            (
                &files.crl,
                b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_vec(),
                "crl.pem",
                "CRL #1",
            ),
            (
                &files.cert,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                "server.pem",
                "certificate #1",
            ),
        ];
        for (path, contents, file, detail) in cases {
            let good = std::fs::read(path).ok();
            std::fs::write(path, contents).unwrap();
            assert_names(tls.reload(), file, detail);
            assert_eq!(tls.current().server_serial(), serial, "kept after {file}");
            match good {
                Some(good) => std::fs::write(path, good).unwrap(),
                None => std::fs::remove_file(path).unwrap(),
            }
        }
        // A missing file is named too.
        std::fs::remove_file(&files.key).unwrap();
        assert_names(tls.reload(), "server.key", "cannot read");
    }

    #[test]
    fn a_crl_not_signed_by_its_ca_is_refused() {
        let dir = pki_dir();
        let files = TlsFiles::in_dir(dir.path());
        let tls = ServerTls::load(files.clone()).unwrap();
        pki::issue(dir.path(), &Identity::instance("a"), false).unwrap();
        pki::revoke(dir.path(), "a").unwrap();
        let crl = std::fs::read_to_string(&files.crl).unwrap();
        assert_eq!(tls.reload().unwrap(), Reloaded::Replaced);
        assert_eq!(tls.current().revoked(), 1);

        // The same CRL with one signature byte flipped.
        let der = CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
        let mut tampered = der.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let tampered = CertificateRevocationListDer::from(tampered);
        std::fs::write(&files.crl, pem_of(&tampered)).unwrap();
        assert_names(tls.reload(), "crl.pem", "did not sign it");
        assert_eq!(tls.current().revoked(), 1, "the signed CRL stays in use");
    }

    /// PEM armour for a DER CRL (base64 by hand: no encoder among the
    /// dependencies).
    fn pem_of(der: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in der.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    text.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    text.push('=');
                }
            }
        }
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).unwrap())
            .collect();
        format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn refusal_says_why_an_open_connection_would_no_longer_be_accepted() {
        let dir = pki_dir();
        let files = TlsFiles::in_dir(dir.path());
        let tls = ServerTls::load(files.clone()).unwrap();
        pki::issue(dir.path(), &Identity::instance("a"), false).unwrap();
        pki::issue(dir.path(), &Identity::instance("b"), false).unwrap();
        let (a, b) = (chain_of(dir.path(), "a"), chain_of(dir.path(), "b"));
        assert_eq!(tls.current().refusal(&a), None);

        pki::revoke(dir.path(), "a").unwrap();
        assert!(tls.changed_on_disk(), "crl.pem appeared");
        assert_eq!(tls.reload().unwrap(), Reloaded::Replaced);
        assert!(!tls.changed_on_disk());
        let why = tls.current().refusal(&a).expect("a is revoked");
        assert!(why.contains("revoked") && why.contains("crl.pem"), "{why}");
        assert_eq!(tls.current().refusal(&b), None, "b is not");
        assert_eq!(tls.reload().unwrap(), Reloaded::Unchanged);

        // A certificate from a CA no longer in ca.pem.
        let other = pki_dir();
        std::fs::copy(other.path().join("ca.pem"), &files.ca).unwrap();
        std::fs::remove_file(&files.crl).unwrap();
        assert_eq!(tls.reload().unwrap(), Reloaded::Replaced);
        let why = tls.current().refusal(&b).expect("b's CA is gone");
        assert!(why.contains("no longer a CA in ca.pem"), "{why}");
        assert!(tls.current().refusal(&[]).is_some());
    }

    #[test]
    fn a_crl_of_a_ca_not_in_ca_pem_only_warns() {
        let dir = pki_dir();
        let other = pki_dir();
        pki::issue(other.path(), &Identity::instance("x"), false).unwrap();
        pki::revoke(other.path(), "x").unwrap();
        std::fs::copy(other.path().join(pki::CRL), dir.path().join(pki::CRL)).unwrap();
        let material = TlsMaterial::load(&TlsFiles::in_dir(dir.path())).unwrap();
        assert_eq!(material.warnings.len(), 1, "{:?}", material.warnings);
        assert!(material.warnings[0].contains("revokes nothing"));
    }
}
