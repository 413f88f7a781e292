//! The development PKI: a CA, a server certificate and an operator
//! certificate generated on first start, and client certificates issued on
//! demand (`learning-hub certs issue`). Identities are carried as URI SANs
//! (`spiffe://learning-hub/instance/<id>`); rcgen would turn a plain string
//! into a DNS name, so the SAN type is set explicitly.
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
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::auth::identity::{Identity, Role};
use crate::error::{Error, Result};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
/// The operator certificate generated with the PKI is for operator "operator".
pub const DEFAULT_OPERATOR: &str = "operator";

/// A certificate, its key, and the CA that verifies the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// The files `certs issue <name>` writes into `dir`.
    pub fn for_name(dir: &Path, name: &str) -> Self {
        CertPaths {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// The server's certificate files in `dir`.
    pub fn server(dir: &Path) -> Self {
        CertPaths {
            ca: dir.join(CA_CERT),
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
        }
    }
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

    let server_key = KeyPair::generate().map_err(|e| pki_error("server key", e))?;
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| pki_error("server", e))?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "learning-hub");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server_params);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(|e| pki_error("server", e))?;

    // Keys first, CA certificate last: a crash midway leaves no ca.pem, so
    // the next start regenerates everything instead of using half a PKI.
    write_file(&dir.join(CA_KEY), &issuer.key().serialize_pem(), true)?;
    write_file(&dir.join(SERVER_KEY), &server_key.serialize_pem(), true)?;
    write_file(&dir.join(SERVER_CERT), &server_cert.pem(), false)?;
    write_client(dir, &issuer, &Identity::operator(DEFAULT_OPERATOR))?;
    write_file(&dir.join(CA_CERT), &ca_cert.pem(), false)?;
    Ok(())
}

/// Issues a client certificate for `identity`, signed by the CA in `dir`,
/// as `<name>.pem` and `<name>.key`. Refuses to overwrite existing files
/// unless `overwrite`.
pub fn issue(dir: &Path, identity: &Identity, overwrite: bool) -> Result<CertPaths> {
    crate::validate::name("name", &identity.name)?;
    if ["ca", "server"].contains(&identity.name.as_str()) {
        return Err(Error::invalid(
            "name",
            format!(
                "{:?} is reserved for the hub's own certificate files",
                identity.name
            ),
        ));
    }
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
        let ca_key = KeyPair::from_pem(&read_file(&dir.join(CA_KEY))?)
            .map_err(|e| pki_error("CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&read_file(&dir.join(CA_CERT))?, ca_key)
            .map_err(|e| pki_error("CA certificate", e))?;
        Ok(ClientIssuer { issuer })
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
    use rustls::pki_types::{CertificateDer, pem::PemObject};

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
            Identity::from_certificate(&der).unwrap(),
            Identity::instance("us-east-1")
        );
        let op = CertificateDer::from_pem_file(dir.path().join("operator.pem")).unwrap();
        assert_eq!(
            Identity::from_certificate(&op).unwrap(),
            Identity::operator("operator")
        );
        // The server certificate has no hub identity.
        let server = CertificateDer::from_pem_file(dir.path().join(SERVER_CERT)).unwrap();
        assert!(Identity::from_certificate(&server).is_err());
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
}
