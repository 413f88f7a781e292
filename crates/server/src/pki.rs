//! The development PKI: a CA, a server certificate and an operator
//! certificate generated on first start, and client certificates issued on
//! demand (`learning-hub certs issue`). Identities are carried as URI SANs
//! (`spiffe://learning-hub/instance/<id>`); rcgen would turn a plain string
//! into a DNS name, so the SAN type is set explicitly.
//!
//! It also keeps the development CA's revocation list (`crl.pem`, one
//! CRL per CA, signed with `ca.key`: `learning-hub certs revoke`) and
//! renews the server certificate (`learning-hub certs renew-server`); a
//! running hub picks both up without a restart ([`crate::tls`]).
//!
//! This is for development and tests. In production, point `--certs-dir`
//! at certificates from your own CA with the same file names and SANs.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevocationReason, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, pem::PemObject};
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, prelude::FromDer,
    revocation_list::CertificateRevocationList, time::ASN1Time,
};

use crate::domain::identity::{Identity, Role, SPIFFE_PREFIX};
use crate::error::{Error, Result};

pub const CA_CERT: &str = learning_hub_client::CA_CERT;
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = learning_hub_client::SERVER_CERT;
pub const SERVER_KEY: &str = learning_hub_client::SERVER_KEY;
/// Revoked client certificates: PEM CRLs (`-----BEGIN X509 CRL-----`), at
/// most one per CA. Optional.
pub const CRL: &str = "crl.pem";
/// How long a CRL written by `certs revoke` says it is current. The hub
/// does not enforce it (an outdated list still revokes); other tools may.
const CRL_VALIDITY_SECS: i64 = 365 * 24 * 60 * 60;
/// The operator certificate generated with the PKI is for operator "operator".
pub const DEFAULT_OPERATOR: &str = "operator";

/// The files of one identity, where `certs issue` writes them.
pub use learning_hub_client::CertPaths;

/// The identity in a DER certificate's URI SANs. The certificate's chain
/// must already have been verified.
pub fn from_certificate(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("cannot parse client certificate: {e}"))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    let uris = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let mut found = None;
    for uri in uris {
        if let Some(identity) = Identity::from_uri(uri) {
            if found.is_some() {
                return Err("client certificate carries more than one hub identity".into());
            }
            found = Some(identity);
        }
    }
    found.ok_or_else(|| {
        format!("client certificate carries no {SPIFFE_PREFIX}instance/<id> or operator/<name> URI")
    })
}

fn pki_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", path.display())))
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", path.display())))
}

/// Replaces `path` atomically: a running hub reading it sees the old or
/// the new contents, never half a file.
fn write_file_atomic(path: &Path, contents: &str, private: bool) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let aside = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    write_file(&aside, contents, private)?;
    fs::rename(&aside, path).map_err(|e| {
        let _ = fs::remove_file(&aside);
        Error::Unavailable(format!("cannot replace {}: {e}", path.display()))
    })
}

/// An error about the contents of `path`, naming it.
fn bad_file(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("{}: {detail}", path.display()))
}

/// A serial number as OpenSSL prints it (`openssl x509 -serial`,
/// `openssl crl -text`): upper-case hex, without the sign byte DER may add.
pub fn serial_hex(raw: &[u8]) -> String {
    let significant = match raw.iter().position(|&b| b != 0) {
        Some(first) => &raw[first..],
        None => &[0u8][..],
    };
    significant.iter().map(|b| format!("{b:02X}")).collect()
}

/// The serial number of a DER certificate ([`serial_hex`]), if it parses.
pub fn certificate_serial(der: &[u8]) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, cert)| serial_hex(cert.raw_serial()))
}

/// The CA of a directory, ready to sign: the certificate in `ca.pem` whose
/// public key is that of `ca.key`. During a CA rollover `ca.pem` holds the
/// old and the new CA, so the first certificate is not necessarily the
/// signer.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

fn load_ca(dir: &Path) -> Result<Ca> {
    let key_path = dir.join(CA_KEY);
    let key = KeyPair::from_pem(&read_file(&key_path)?).map_err(|e| bad_file(&key_path, e))?;
    let public_key = key.subject_public_key_info();
    let ca_path = dir.join(CA_CERT);
    let pem = read_file(&ca_path)?;
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| bad_file(&ca_path, format!("certificate #{}: {e}", i + 1)))?;
        let (_, parsed) = X509Certificate::from_der(&cert)
            .map_err(|e| bad_file(&ca_path, format!("certificate #{}: {e}", i + 1)))?;
        if parsed.public_key().raw == public_key.as_slice() {
            let issuer = Issuer::from_ca_cert_der(&cert, key)
                .map_err(|e| bad_file(&ca_path, format!("certificate #{}: {e}", i + 1)))?;
            return Ok(Ca { issuer, cert });
        }
    }
    Err(bad_file(
        &ca_path,
        format!("holds no certificate for the key in {}", key_path.display()),
    ))
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate file revoked.
    pub certificate: PathBuf,
    /// Its serial number ([`serial_hex`]).
    pub serial: String,
    /// Who it was issued to: the hub identity, or the subject.
    pub subject: String,
    /// False when the CRL already listed it (nothing was written).
    pub newly_revoked: bool,
    /// How many certificates the CA's CRL lists now.
    pub listed: usize,
    pub crl: PathBuf,
}

/// The certificate file `target` names: a path (it contains a `/` or ends
/// in `.pem`), or an instance id / operator name issued into `dir`.
fn certificate_file(dir: &Path, target: &str) -> Result<PathBuf> {
    let path = if target.contains(std::path::MAIN_SEPARATOR) || target.ends_with(".pem") {
        PathBuf::from(target)
    } else {
        crate::validate::name("certificate", target)?;
        if [CA_CERT, SERVER_CERT].contains(&format!("{target}.pem").as_str()) {
            return Err(Error::invalid(
                "certificate",
                format!(
                    "{target:?} is one of the hub's own certificates: replace it \
                     (`certs renew-server`, or a new ca.pem) instead of revoking it"
                ),
            ));
        }
        dir.join(format!("{target}.pem"))
    };
    if !path.is_file() {
        return Err(Error::invalid(
            "certificate",
            format!(
                "{} does not exist; name an instance id or operator issued in {}, or a certificate file",
                path.display(),
                dir.display()
            ),
        ));
    }
    Ok(path)
}

/// Reads `crl.pem`: the PEM text of each CRL in it (none if the file does
/// not exist).
fn read_crls(path: &Path) -> Result<Vec<String>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    const BEGIN: &str = "-----BEGIN X509 CRL-----";
    const END: &str = "-----END X509 CRL-----";
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(bad_file(path, format!("a CRL starts but has no {END}")));
        };
        let end = start + len + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    if blocks.is_empty() && !text.trim().is_empty() {
        return Err(bad_file(path, format!("holds no PEM CRL ({BEGIN})")));
    }
    Ok(blocks)
}

fn parse_crl<'a>(
    path: &Path,
    index: usize,
    der: &'a [u8],
) -> Result<CertificateRevocationList<'a>> {
    x509_parser::parse_x509_crl(der)
        .map(|(_, crl)| crl)
        .map_err(|e| bad_file(path, format!("CRL #{}: {e}", index + 1)))
}

fn revocation_reason(code: u8) -> RevocationReason {
    match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => RevocationReason::Unspecified,
    }
}

/// One more than a big-endian unsigned number.
fn increment(number: &[u8]) -> Vec<u8> {
    let mut next = number.to_vec();
    for byte in next.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return next;
        }
    }
    next.insert(0, 1);
    next
}

/// Revokes a client certificate issued by the CA in `dir`
/// (`learning-hub certs revoke`): adds its serial to that CA's CRL in
/// `crl.pem` (created on first use; CRLs of other CAs in the file are kept
/// as they are), with a higher CRL number, signed with `ca.key`, and
/// replaces the file atomically. `target` is an instance id or operator
/// name issued in `dir`, or a certificate file. Revoking a certificate
/// twice changes nothing.
pub fn revoke(dir: &Path, target: &str) -> Result<Revocation> {
    let path = certificate_file(dir, target)?;
    let der = CertificateDer::from_pem_file(&path).map_err(|e| bad_file(&path, e))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad_file(&path, e))?;
    if cert.is_ca() {
        return Err(bad_file(
            &path,
            "is a CA certificate; remove it from ca.pem instead of revoking it",
        ));
    }
    let ca = load_ca(dir)?;
    let (_, ca_cert) =
        X509Certificate::from_der(&ca.cert).map_err(|e| bad_file(&dir.join(CA_CERT), e))?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(bad_file(
            &path,
            format!(
                "was issued by {}, not by the CA of {} ({}); revoke it with its issuer's key",
                cert.issuer(),
                dir.join(CA_KEY).display(),
                ca_cert.subject()
            ),
        ));
    }
    let serial = serial_hex(cert.raw_serial());
    let subject = from_certificate(&der)
        .map(|identity| identity.to_string())
        .unwrap_or_else(|_| cert.subject().to_string());

    let crl_path = dir.join(CRL);
    let mut kept = String::new();
    let mut entries: Vec<RevokedCertParams> = Vec::new();
    let mut number = Vec::new();
    let mut found_ours = false;
    for (i, block) in read_crls(&crl_path)?.iter().enumerate() {
        let crl_der = CertificateRevocationListDer::from_pem_slice(block.as_bytes())
            .map_err(|e| bad_file(&crl_path, format!("CRL #{}: {e}", i + 1)))?;
        let crl = parse_crl(&crl_path, i, &crl_der)?;
        let ours = crl.issuer().as_raw() == ca_cert.subject().as_raw()
            && crl.verify_signature(ca_cert.public_key()).is_ok();
        if !ours {
            kept.push_str(block);
            continue;
        }
        if found_ours {
            return Err(bad_file(
                &crl_path,
                format!("holds more than one CRL of {}; keep one", ca_cert.subject()),
            ));
        }
        found_ours = true;
        number = crl
            .crl_number()
            .map(|n| n.to_bytes_be())
            .unwrap_or_default();
        for revoked in crl.iter_revoked_certificates() {
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(revoked.raw_serial()),
                revocation_time: revoked.revocation_date.to_datetime(),
                reason_code: revoked
                    .reason_code()
                    .map(|(_, code)| revocation_reason(code.0)),
                invalidity_date: revoked.invalidity_date().map(|(_, at)| at.to_datetime()),
            });
        }
    }
    let already = entries
        .iter()
        .any(|e| serial_hex(e.serial_number.as_ref()) == serial);
    let mut revocation = Revocation {
        certificate: path,
        serial,
        subject,
        newly_revoked: !already,
        listed: entries.len(),
        crl: crl_path.clone(),
    };
    if already {
        return Ok(revocation);
    }
    let now = ASN1Time::now();
    let next_update = ASN1Time::from_timestamp(now.timestamp() + CRL_VALIDITY_SECS)
        .map_err(|e| pki_error("CRL next update", e))?;
    entries.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(cert.raw_serial()),
        revocation_time: now.to_datetime(),
        reason_code: None,
        invalidity_date: None,
    });
    revocation.listed = entries.len();
    let crl = CertificateRevocationListParams {
        this_update: now.to_datetime(),
        next_update: next_update.to_datetime(),
        crl_number: SerialNumber::from_slice(&increment(&number)),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .map_err(|e| pki_error("CRL", e))?;
    // The hub matches a CRL to a certificate by the issuer name's exact
    // bytes; rcgen re-encodes the name, so check before relying on it.
    let written = parse_crl(&crl_path, 0, crl.der())?;
    if written.issuer().as_raw() != cert.issuer().as_raw() {
        return Err(Error::Internal(format!(
            "the CRL's issuer name does not encode like {}'s issuer; nothing written",
            revocation.certificate.display()
        )));
    }
    kept.push_str(&crl.pem().map_err(|e| pki_error("CRL", e))?);
    write_file_atomic(&crl_path, &kept, false)?;
    Ok(revocation)
}

/// One certificate `crl.pem` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The serial number ([`serial_hex`]).
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: String,
    /// The CA whose CRL lists it.
    pub issuer: String,
}

/// Every certificate `crl.pem` in `dir` revokes, CRL by CRL.
pub fn list_revoked(dir: &Path) -> Result<Vec<RevokedEntry>> {
    let crl_path = dir.join(CRL);
    let mut listed = Vec::new();
    for (i, block) in read_crls(&crl_path)?.iter().enumerate() {
        let der = CertificateRevocationListDer::from_pem_slice(block.as_bytes())
            .map_err(|e| bad_file(&crl_path, format!("CRL #{}: {e}", i + 1)))?;
        let crl = parse_crl(&crl_path, i, &der)?;
        for revoked in crl.iter_revoked_certificates() {
            listed.push(RevokedEntry {
                serial: serial_hex(revoked.raw_serial()),
                revoked_at: revoked.revocation_date.to_string(),
                issuer: crl.issuer().to_string(),
            });
        }
    }
    Ok(listed)
}

/// Valid from a year ago to five years ahead: covers clock skew between
/// machines without the "valid until 4096" of rcgen's defaults.
fn validity(params: &mut CertificateParams) {
    let year = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| 1970 + (d.as_secs() / 31_556_952) as i32)
        .unwrap_or(2026);
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + 5, 1, 1);
}

/// Whether `dir` holds a CA certificate.
pub fn has_ca(dir: &Path) -> bool {
    dir.join(CA_CERT).exists()
}

/// Generates the development PKI in `dir` unless a CA is already there.
/// Returns whether it generated one.
pub fn ensure_dev_pki(dir: &Path) -> Result<bool> {
    if has_ca(dir) {
        return Ok(false);
    }
    generate_dev_pki(dir)?;
    Ok(true)
}

/// Writes a fresh CA (`ca.pem`, `ca.key`), a server certificate for
/// localhost and 127.0.0.1 (`server.pem`, `server.key`) and an operator
/// certificate (`operator.pem`, `operator.key`) into `dir`.
pub fn generate_dev_pki(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    let ca_key = KeyPair::generate().map_err(|e| pki_error("CA key", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_error("CA", e))?;
    // A distinct name per generated CA: a certificate from another dev PKI
    // is then refused as issued by an unknown CA, not as a bad signature.
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "Learning Hub development CA {}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| pki_error("CA", e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let (server_cert, server_key) = sign_server(&issuer)?;

    // Keys first, CA certificate last: a crash midway leaves no ca.pem, so
    // the next start regenerates everything instead of using half a PKI.
    write_file(&dir.join(CA_KEY), &issuer.key().serialize_pem(), true)?;
    write_file(&dir.join(SERVER_KEY), &server_key, true)?;
    write_file(&dir.join(SERVER_CERT), &server_cert, false)?;
    write_client(dir, &issuer, &Identity::operator(DEFAULT_OPERATOR))?;
    write_file(&dir.join(CA_CERT), &ca_cert.pem(), false)?;
    Ok(())
}

/// A server certificate for `localhost` and `127.0.0.1` and its key (PEM).
fn sign_server(issuer: &Issuer<'_, KeyPair>) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(|e| pki_error("server key", e))?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| pki_error("server", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "learning-hub");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| pki_error("server", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Replaces `server.pem` and `server.key` in `dir` with a new key and a
/// certificate from the CA there (`learning-hub certs renew-server`);
/// returns the new certificate's serial. Each file is replaced atomically
/// (written aside, then renamed), the key first: a hub that checks in
/// between sees a key that does not match the old certificate, refuses
/// that pair and keeps serving with the previous one until the
/// certificate follows.
pub fn renew_server(dir: &Path) -> Result<String> {
    let ca = load_ca(dir)?;
    let (cert, key) = sign_server(&ca.issuer)?;
    write_file_atomic(&dir.join(SERVER_KEY), &key, true)?;
    write_file_atomic(&dir.join(SERVER_CERT), &cert, false)?;
    let der = CertificateDer::from_pem_slice(cert.as_bytes())
        .map_err(|e| pki_error("server certificate", e))?;
    certificate_serial(&der)
        .ok_or_else(|| Error::Internal("cannot read back the server certificate".into()))
}

/// Issues a client certificate for `identity`, signed by the CA in `dir`,
/// as `<name>.pem` and `<name>.key`. Refuses to overwrite existing files
/// unless `overwrite`.
pub fn issue(dir: &Path, identity: &Identity, overwrite: bool) -> Result<CertPaths> {
    crate::domain::identity::check_name(identity.role, &identity.name)?;
    let paths = CertPaths::for_name(dir, &identity.name);
    if !overwrite && (paths.cert.exists() || paths.key.exists()) {
        return Err(Error::FailedPrecondition(format!(
            "{} already exists; pass --force to replace it",
            paths.cert.display()
        )));
    }
    write_client(dir, &ClientIssuer::load(dir)?.issuer, identity)?;
    Ok(paths)
}

/// Issues client certificates in memory, signed by the CA of a directory:
/// for load tools that need thousands of identities without thousands of
/// files.
pub struct ClientIssuer {
    issuer: Issuer<'static, KeyPair>,
}

impl ClientIssuer {
    /// Loads the CA certificate and key from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(ClientIssuer {
            issuer: load_ca(dir)?.issuer,
        })
    }

    /// A certificate for `identity` and its private key, both PEM.
    pub fn issue(&self, identity: &Identity) -> Result<(String, String)> {
        sign_client(&self.issuer, identity)
    }
}

fn sign_client(issuer: &Issuer<'_, KeyPair>, identity: &Identity) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(|e| pki_error("client key", e))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name.clone());
    let uri = identity
        .uri()
        .try_into()
        .map_err(|e| pki_error("identity URI", e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| pki_error("client certificate", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_client(dir: &Path, issuer: &Issuer<'_, KeyPair>, identity: &Identity) -> Result<()> {
    let (cert, key) = sign_client(issuer, identity)?;
    let paths = CertPaths::for_name(dir, &identity.name);
    write_file(&paths.key, &key, true)?;
    write_file(&paths.cert, &cert, false)?;
    Ok(())
}

/// The role a `certs issue` invocation asks for.
pub fn identity_for(name: &str, role: Role) -> Identity {
    Identity {
        role,
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_dev_pki(dir.path()).unwrap());
        assert!(
            !ensure_dev_pki(dir.path()).unwrap(),
            "second start reuses the PKI"
        );
        let paths = issue(dir.path(), &Identity::instance("us-east-1"), false).unwrap();
        let der = CertificateDer::from_pem_file(&paths.cert).unwrap();
        assert_eq!(
            from_certificate(&der).unwrap(),
            Identity::instance("us-east-1")
        );
        let op = CertificateDer::from_pem_file(dir.path().join("operator.pem")).unwrap();
        assert_eq!(
            from_certificate(&op).unwrap(),
            Identity::operator("operator")
        );
        // The server certificate has no hub identity.
        let server = CertificateDer::from_pem_file(dir.path().join(SERVER_CERT)).unwrap();
        assert!(from_certificate(&server).is_err());
    }

    #[test]
    fn refuses_to_clobber_or_use_reserved_names() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_pki(dir.path()).unwrap();
        assert!(matches!(
            issue(dir.path(), &Identity::operator("operator"), false),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(issue(dir.path(), &Identity::operator("operator"), true).is_ok());
        assert!(matches!(
            issue(dir.path(), &Identity::instance("server"), true),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        generate_dev_pki(dir.path()).unwrap();
        for key in [CA_KEY, SERVER_KEY, "operator.key"] {
            let mode = fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    fn crl_number(dir: &Path) -> Vec<u8> {
        let blocks = read_crls(&dir.join(CRL)).unwrap();
        assert_eq!(blocks.len(), 1, "one CRL for one CA");
        let der = CertificateRevocationListDer::from_pem_slice(blocks[0].as_bytes()).unwrap();
        parse_crl(Path::new(CRL), 0, &der)
            .unwrap()
            .crl_number()
            .expect("a CRL number")
            .to_bytes_be()
    }

    fn serial_of(path: &Path) -> String {
        certificate_serial(&CertificateDer::from_pem_file(path).unwrap()).unwrap()
    }

    #[test]
    fn revoke_adds_serials_to_one_signed_crl() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        generate_dev_pki(dir).unwrap();
        let a = issue(dir, &Identity::instance("a"), false).unwrap();
        let b = issue(dir, &Identity::instance("b"), false).unwrap();
        assert!(list_revoked(dir).unwrap().is_empty(), "no crl.pem yet");

        let first = revoke(dir, "a").unwrap();
        assert!(first.newly_revoked);
        assert_eq!(first.serial, serial_of(&a.cert));
        assert_eq!(first.subject, "instance a");
        assert_eq!(first.listed, 1);
        assert_eq!(crl_number(dir), [1]);

        // Twice changes nothing.
        let before = fs::read(dir.join(CRL)).unwrap();
        let again = revoke(dir, "a").unwrap();
        assert!(!again.newly_revoked);
        assert_eq!(fs::read(dir.join(CRL)).unwrap(), before);

        // By file; the list grows and the CRL number with it.
        let second = revoke(dir, b.cert.to_str().unwrap()).unwrap();
        assert!(second.newly_revoked);
        assert_eq!(second.listed, 2);
        assert_eq!(crl_number(dir), [2]);
        let listed: Vec<String> = list_revoked(dir)
            .unwrap()
            .into_iter()
            .map(|entry| entry.serial)
            .collect();
        assert_eq!(listed, [serial_of(&a.cert), serial_of(&b.cert)]);
    }

    #[test]
    fn revoke_refuses_what_it_cannot_or_should_not_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        generate_dev_pki(dir).unwrap();
        let error = |target: &str| revoke(dir, target).unwrap_err().to_string();

        let missing = error("nobody");
        assert!(
            missing.contains("nobody.pem") && missing.contains("does not exist"),
            "{missing}"
        );
        assert!(error("a b").contains("may only contain"));
        assert!(error("server").contains("hub's own certificates"));
        let ca = error(dir.join(CA_CERT).to_str().unwrap());
        assert!(ca.contains("is a CA certificate"), "{ca}");

        let other = tempfile::tempdir().unwrap();
        generate_dev_pki(other.path()).unwrap();
        let foreign = issue(other.path(), &Identity::instance("x"), false).unwrap();
        let foreign = error(foreign.cert.to_str().unwrap());
        assert!(
            foreign.contains("was issued by") && foreign.contains("ca.key"),
            "{foreign}"
        );
        assert!(!dir.join(CRL).exists(), "nothing written");
    }

    #[test]
    fn during_a_ca_rollover_the_ca_key_picks_its_certificate() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        generate_dev_pki(old.path()).unwrap();
        generate_dev_pki(new.path()).unwrap();
        let old_ca = CertificateDer::from_pem_file(old.path().join(CA_CERT)).unwrap();
        let new_ca = CertificateDer::from_pem_file(new.path().join(CA_CERT)).unwrap();
        // The directory of a rollover: both CAs trusted, the old one first;
        // the new key signs.
        let bundle = format!(
            "{}{}",
            fs::read_to_string(old.path().join(CA_CERT)).unwrap(),
            fs::read_to_string(new.path().join(CA_CERT)).unwrap()
        );
        fs::write(new.path().join(CA_CERT), bundle).unwrap();
        let issued = issue(new.path(), &Identity::instance("a"), false).unwrap();
        let der = CertificateDer::from_pem_file(&issued.cert).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let (_, old_ca) = X509Certificate::from_der(&old_ca).unwrap();
        let (_, new_ca) = X509Certificate::from_der(&new_ca).unwrap();
        assert_eq!(cert.issuer().as_raw(), new_ca.subject().as_raw());
        assert_ne!(cert.issuer().as_raw(), old_ca.subject().as_raw());
        cert.verify_signature(Some(new_ca.public_key()))
            .expect("signed with the new CA's key");
        assert!(revoke(new.path(), "a").unwrap().newly_revoked);

        // A key that matches no CA is named.
        fs::copy(old.path().join(SERVER_KEY), new.path().join(CA_KEY)).unwrap();
        let error = ClientIssuer::load(new.path()).err().unwrap().to_string();
        assert!(
            error.contains("ca.pem") && error.contains("holds no certificate for the key"),
            "{error}"
        );
    }

    #[test]
    fn renew_server_replaces_the_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        generate_dev_pki(dir).unwrap();
        let before = serial_of(&dir.join(SERVER_CERT));
        let serial = renew_server(dir).unwrap();
        assert_ne!(serial, before);
        assert_eq!(serial_of(&dir.join(SERVER_CERT)), serial);
        // The key written is the certificate's.
        let key = KeyPair::from_pem(&read_file(&dir.join(SERVER_KEY)).unwrap()).unwrap();
        let der = CertificateDer::from_pem_file(dir.join(SERVER_CERT)).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn serials_print_like_openssl() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8A01");
        assert_eq!(serial_hex(&[0x7f]), "7F");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(increment(&[]), [1]);
        assert_eq!(increment(&[0x01, 0xff]), [0x02, 0x00]);
        assert_eq!(increment(&[0xff]), [0x01, 0x00]);
    }
}
