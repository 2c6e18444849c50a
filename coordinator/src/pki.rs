//! Certificates for a farm: a development CA that signs the coordinator's server certificate and
//! the workers' client certificates, and the worker identity a client certificate carries.
//!
//! [`write_dev_farm`] writes PEM files into one folder: `ca.pem`/`ca.key` (created once, then
//! reused so that workers can be added later under the same CA), `coordinator.pem`/`coordinator.key`
//! and one `worker-<name>.pem`/`worker-<name>.key` per worker. A worker certificate names the worker
//! in its subject CN and its team, if any, in the subject O; [`worker_identity`] reads them back on
//! the coordinator's side of a mutual-TLS connection.
//!
//! This is a development CA: keys are written unencrypted (mode 0600) and nothing is revoked.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

/// Subject CN of the CA that [`write_dev_farm`] creates.
pub const CA_COMMON_NAME: &str = "Manifold development CA";
/// Subject CN of the coordinator's server certificate.
pub const COORDINATOR_COMMON_NAME: &str = "manifold-coordinator";
/// Host names and addresses always in the coordinator's certificate, besides the `hosts` given.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// How long every certificate written is valid (a reused CA may end its workers' validity sooner).
const VALIDITY_SECS: i64 = 365 * 24 * 3600;
/// How far in the past validity starts, for clocks slightly behind this one.
const BACKDATE_SECS: i64 = 3600;

/// A worker client certificate to issue: its subject CN is `name`, its subject O is `team`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCert {
    /// The worker's `--name`, unique in the farm.
    pub name: String,
    /// The team that owns the worker, as configured on the coordinator; `None` for a shared worker.
    pub team: Option<String>,
}

/// Who a worker client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The subject CN: the only `--name` this certificate may attach as.
    pub name: String,
    /// The first subject O, if any: the team the worker belongs to.
    pub team: Option<String>,
}

/// Why certificates could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A worker name or team that cannot go into a certificate or a file name.
    #[error(
        "invalid {what} `{value}`: use only letters, digits, `.`, `_` and `-`, e.g. `arm64-1` or `web`"
    )]
    InvalidName {
        /// "worker name" or "team".
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A `hosts` entry that is neither an IP address nor a DNS name.
    #[error(
        "invalid coordinator host `{host}`: expected a DNS name or an IP address, e.g. coordinator.example.com or 10.0.0.5"
    )]
    InvalidHost {
        /// The value given.
        host: String,
    },
    /// Only one of `ca.pem` and `ca.key` exists, so the CA can be neither reused nor replaced safely.
    #[error(
        "{present} exists but {missing} does not: restore {missing}, or move {present} away to create a new CA (workers must then get new certificates)"
    )]
    IncompleteCa {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// An existing CA that cannot be used to sign.
    #[error(
        "cannot reuse the CA in {path}: {reason}; move ca.pem and ca.key away to create a new CA"
    )]
    UnusableCa {
        /// The CA certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read", "write", "create".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// rcgen refused to generate a key or a certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which key or certificate.
        what: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// Bytes that are not a DER X.509 certificate.
    #[error("invalid client certificate: {reason}")]
    InvalidCertificate {
        /// What the parser said.
        reason: String,
    },
    /// A client certificate without a subject CN, so it names no worker.
    #[error(
        "the client certificate has no subject CN, so it names no worker; issue one with the worker's name, e.g. `manifold-coordinator dev-ca --worker NAME`"
    )]
    NoCommonName,
}

/// Writes a development farm's certificates into `dir` (created if needed) and returns the paths
/// written, keys included.
///
/// If `dir/ca.pem` and `dir/ca.key` exist, that CA signs; otherwise a new self-signed CA is
/// written first. The coordinator's server certificate, valid for [`LOOPBACK_HOSTS`] and `hosts`
/// (DNS names or IP addresses), is always rewritten; so is each worker's client certificate.
/// Private keys are written with mode 0600.
pub fn write_dev_farm(
    dir: &Path,
    hosts: &[String],
    workers: &[WorkerCert],
) -> Result<Vec<PathBuf>, PkiError> {
    // Validate everything before writing anything.
    for worker in workers {
        check_name("worker name", &worker.name)?;
        if let Some(team) = &worker.team {
            check_name("team", team)?;
        }
    }
    let mut sans: Vec<SanType> = Vec::new();
    for host in LOOPBACK_HOSTS
        .iter()
        .copied()
        .chain(hosts.iter().map(String::as_str))
    {
        let san = host_san(host)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }

    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    let now = unix_now();
    let mut written = Vec::new();
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = match (ca_pem.exists(), ca_key.exists()) {
        (true, true) => load_ca(&ca_pem, &ca_key, now)?,
        (false, false) => {
            let ca = new_ca(&ca_pem, now)?;
            write_file(&ca_pem, ca.cert_pem.as_bytes(), false)?;
            write_file(&ca_key, ca.key_pem.as_bytes(), true)?;
            written.push(ca_pem);
            written.push(ca_key);
            ca
        }
        (true, false) => {
            return Err(PkiError::IncompleteCa {
                present: ca_pem,
                missing: ca_key,
            });
        }
        (false, true) => {
            return Err(PkiError::IncompleteCa {
                present: ca_key,
                missing: ca_pem,
            });
        }
    };
    let not_after = (now + VALIDITY_SECS).min(ca.not_after);

    let mut server = leaf_params(now, not_after)?;
    server
        .distinguished_name
        .push(DnType::CommonName, COORDINATOR_COMMON_NAME);
    server.subject_alt_names = sans;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    written.extend(write_leaf(dir, "coordinator", server, &ca.issuer)?);

    for worker in workers {
        let mut params = leaf_params(now, not_after)?;
        params
            .distinguished_name
            .push(DnType::CommonName, worker.name.as_str());
        if let Some(team) = &worker.team {
            params
                .distinguished_name
                .push(DnType::OrganizationName, team.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        written.extend(write_leaf(
            dir,
            &format!("worker-{}", worker.name),
            params,
            &ca.issuer,
        )?);
    }
    Ok(written)
}

/// Reads the worker's identity from its client certificate (DER): the subject CN is the name, the
/// first subject O the team. The certificate is not verified here; TLS has done that.
pub fn worker_identity(cert_der: &[u8]) -> Result<WorkerIdentity, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::InvalidCertificate {
            reason: e.to_string(),
        })?;
    let subject = cert.subject();
    let attribute_text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str()
            .map(str::to_owned)
            .map_err(|e| PkiError::InvalidCertificate {
                reason: format!("unreadable subject attribute: {e}"),
            })
    };
    let name = match subject.iter_common_name().next() {
        Some(cn) => attribute_text(cn)?,
        None => return Err(PkiError::NoCommonName),
    };
    if name.is_empty() {
        return Err(PkiError::NoCommonName);
    }
    let team = subject
        .iter_organization()
        .next()
        .map(attribute_text)
        .transpose()?;
    Ok(WorkerIdentity { name, team })
}

/// A CA able to sign, and the end of its own validity.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    not_after: i64,
}

fn new_ca(cert_path: &Path, now: i64) -> Result<Ca, PkiError> {
    let generate = |what: &'static str| {
        move |source| PkiError::Generate {
            what: what.to_owned(),
            source,
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now - BACKDATE_SECS, now + VALIDITY_SECS)?;
    let key = KeyPair::generate().map_err(generate("the CA key"))?;
    let key_pem = key.serialize_pem();
    let certified =
        CertifiedIssuer::self_signed(params, key).map_err(generate("the CA certificate"))?;
    // Signing goes through the same path as for a reused CA, so both sign alike.
    let key = KeyPair::from_pem(&key_pem).map_err(generate("the CA key"))?;
    let unusable = |reason: String| PkiError::UnusableCa {
        path: cert_path.to_owned(),
        reason,
    };
    let (_, cert) = X509Certificate::from_der(certified.der())
        .map_err(|e| unusable(format!("not an X.509 certificate: {e}")))?;
    let issuer = issuer_from(&cert, key).map_err(unusable)?;
    Ok(Ca {
        issuer,
        cert_pem: certified.pem(),
        key_pem,
        not_after: now + VALIDITY_SECS,
    })
}

/// Loads an existing CA, checking that it is a CA, still valid, and that the key is its key.
fn load_ca(cert_path: &Path, key_path: &Path, now: i64) -> Result<Ca, PkiError> {
    let unusable = |reason: String| PkiError::UnusableCa {
        path: cert_path.to_owned(),
        reason,
    };
    let cert_pem = read_text(cert_path)?;
    let key_pem = read_text(key_path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| unusable(format!("not a PEM certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| unusable(format!("not an X.509 certificate: {e}")))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(unusable("it is not a CA certificate".into())),
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= now {
        return Err(unusable(format!(
            "it expired on {}",
            cert.validity().not_after
        )));
    }
    let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::UnusableCa {
        path: key_path.to_owned(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(unusable(format!(
            "{} is not the key of this certificate",
            key_path.display()
        )));
    }
    let issuer = issuer_from(&cert, key).map_err(unusable)?;
    Ok(Ca {
        issuer,
        cert_pem,
        key_pem,
        not_after,
    })
}

/// An rcgen issuer for a parsed CA certificate. The issuer name of every certificate it signs
/// must be byte-for-byte the CA's subject for verifiers to chain them, so each attribute keeps
/// its type and string encoding.
fn issuer_from(
    cert: &X509Certificate<'_>,
    key: KeyPair,
) -> Result<Issuer<'static, KeyPair>, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for rdn in cert.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("its subject has a multi-valued name component".into());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("its subject has an attribute type too large to read")?
            .collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| "its subject has a non-UTF-8 attribute".to_owned())?;
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => {
                DnValue::PrintableString(text.try_into().map_err(|e| format!("its subject: {e}"))?)
            }
            Tag::Ia5String => {
                DnValue::Ia5String(text.try_into().map_err(|e| format!("its subject: {e}"))?)
            }
            other => {
                return Err(format!(
                    "its subject uses an unsupported string type {other}"
                ));
            }
        };
        params
            .distinguished_name
            .push(DnType::CustomDnType(oid), value);
    }
    // Workers' authority key identifiers must match the CA's subject key identifier.
    params.key_identifier_method = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
            }
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(Issuer::new(params, key))
}

/// Parameters shared by the coordinator's and the workers' certificates.
fn leaf_params(now: i64, not_after: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now - BACKDATE_SECS, not_after)?;
    Ok(params)
}

/// Generates a key, signs `params` with `ca`, writes `<stem>.pem` and `<stem>.key`.
fn write_leaf(
    dir: &Path,
    stem: &str,
    params: CertificateParams,
    ca: &Issuer<'_, KeyPair>,
) -> Result<[PathBuf; 2], PkiError> {
    let key = KeyPair::generate().map_err(|source| PkiError::Generate {
        what: format!("the key of {stem}"),
        source,
    })?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|source| PkiError::Generate {
            what: format!("the certificate of {stem}"),
            source,
        })?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok([cert_path, key_path])
}

fn check_name(what: &'static str, value: &str) -> Result<(), PkiError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// A subject alternative name for `host`: an IP address (IPv6 possibly in brackets) or a DNS name.
fn host_san(host: &str) -> Result<SanType, PkiError> {
    let invalid = || PkiError::InvalidHost {
        host: host.to_owned(),
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if host.is_empty() || host.len() > 253 || !labels_ok {
        return Err(invalid());
    }
    Ok(SanType::DnsName(
        host.to_owned().try_into().map_err(|_| invalid())?,
    ))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets the validity period, in seconds since the Unix epoch. rcgen's time type is built through
/// x509-parser, which uses the same `time` crate, so this crate needs no direct dependency on it.
fn set_validity(params: &mut CertificateParams, from: i64, until: i64) -> Result<(), PkiError> {
    let at = |unix: i64| {
        ASN1Time::from_timestamp(unix)
            .map(|t| t.to_datetime())
            .map_err(|_| PkiError::Generate {
                what: format!("a validity period at unix time {unix}"),
                source: rcgen::Error::Time,
            })
    };
    params.not_before = at(from)?;
    params.not_after = at(until)?;
    Ok(())
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path`, replacing it; `private` files get mode 0600 before any byte is written.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    if private {
        // The mode above applies only to a new file; an existing one keeps its own.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(bytes).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject as _};
    use rustls::server::WebPkiClientVerifier;
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn worker(name: &str, team: Option<&str>) -> WorkerCert {
        WorkerCert {
            name: name.into(),
            team: team.map(Into::into),
        }
    }

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    /// Whether a mutual-TLS server trusting only `ca` accepts `client` as a client certificate.
    fn client_verifies(ca: &Path, client: &Path) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der(ca)).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&cert_der(client), &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn worker_certificates_carry_the_name_and_the_team() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_dev_farm(
            dir.path(),
            &[],
            &[worker("arm64-1", Some("web")), worker("amd64.b_2", None)],
        )
        .unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "coordinator.pem",
                "coordinator.key",
                "worker-arm64-1.pem",
                "worker-arm64-1.key",
                "worker-amd64.b_2.pem",
                "worker-amd64.b_2.key",
            ]
        );
        let identity = worker_identity(&cert_der(&dir.path().join("worker-arm64-1.pem"))).unwrap();
        assert_eq!(
            identity,
            WorkerIdentity {
                name: "arm64-1".into(),
                team: Some("web".into())
            }
        );
        let identity =
            worker_identity(&cert_der(&dir.path().join("worker-amd64.b_2.pem"))).unwrap();
        assert_eq!(
            identity,
            WorkerIdentity {
                name: "amd64.b_2".into(),
                team: None
            }
        );
        client_verifies(
            &dir.path().join("ca.pem"),
            &dir.path().join("worker-arm64-1.pem"),
        )
        .unwrap();
    }

    #[test]
    fn the_coordinator_certificate_is_a_server_certificate_for_loopback_and_the_hosts_given() {
        let dir = tempfile::tempdir().unwrap();
        // Repeated and loopback hosts appear once.
        write_dev_farm(
            dir.path(),
            &[
                "coordinator.example.com".into(),
                "10.0.0.5".into(),
                "localhost".into(),
                "10.0.0.5".into(),
            ],
            &[],
        )
        .unwrap();
        let der = cert_der(&dir.path().join("coordinator.pem"));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let sans: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()).to_string(),
                },
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(
            sans,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "coordinator.example.com",
                "10.0.0.5"
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        // A server certificate is no client certificate.
        let err = client_verifies(
            &dir.path().join("ca.pem"),
            &dir.path().join("coordinator.pem"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("ExtendedKeyUsage") || err.to_string().contains("usage"),
            "{err}"
        );
    }

    #[test]
    fn a_second_run_signs_with_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_farm(dir.path(), &[], &[worker("first", None)]).unwrap();
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();
        let keep = tempfile::tempdir().unwrap();
        let old_ca = keep.path().join("ca.pem");
        fs::copy(dir.path().join("ca.pem"), &old_ca).unwrap();

        let written = write_dev_farm(dir.path(), &[], &[worker("second", Some("data"))]).unwrap();
        assert!(
            !written
                .iter()
                .any(|p| p.ends_with("ca.pem") || p.ends_with("ca.key")),
            "{written:?}"
        );
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        client_verifies(&old_ca, &dir.path().join("worker-second.pem")).unwrap();
        client_verifies(&old_ca, &dir.path().join("worker-first.pem")).unwrap();

        // Another CA does not accept it.
        let other = tempfile::tempdir().unwrap();
        write_dev_farm(other.path(), &[], &[]).unwrap();
        // (Same subject name, other key: the signature gives it away.)
        let err = client_verifies(
            &other.path().join("ca.pem"),
            &dir.path().join("worker-second.pem"),
        )
        .unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[test]
    fn half_a_ca_is_neither_reused_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_farm(dir.path(), &[], &[]).unwrap();
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        let ca = fs::read(dir.path().join("ca.pem")).unwrap();
        let err = write_dev_farm(dir.path(), &[], &[worker("w", None)]).unwrap_err();
        assert!(
            matches!(&err, PkiError::IncompleteCa { missing, .. } if missing.ends_with("ca.key")),
            "{err}"
        );
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        assert!(!dir.path().join("worker-w.pem").exists());
    }

    #[test]
    fn a_key_that_is_not_the_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_farm(dir.path(), &[], &[]).unwrap();
        fs::copy(
            dir.path().join("coordinator.key"),
            dir.path().join("ca.key"),
        )
        .unwrap();
        let err = write_dev_farm(dir.path(), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not the key of this certificate"), "{err}");
    }

    #[test]
    fn bad_names_teams_and_hosts_are_refused_naming_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let check = |hosts: &[&str], workers: &[WorkerCert], bad: &str| {
            let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            let err = write_dev_farm(dir.path(), &hosts, workers)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        };
        check(&[], &[worker("", None)], "");
        check(&[], &[worker("a/b", None)], "a/b");
        check(&[], &[worker("../x", None)], "../x");
        check(&[], &[worker("ok", Some("web team"))], "web team");
        check(&[], &[worker("ok", Some(""))], "");
        check(&["bad host"], &[], "bad host");
        check(&["-x.example"], &[], "-x.example");
        // Nothing was written for refused input.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ipv6_hosts_may_be_bracketed() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_farm(dir.path(), &["[fd00::1]".into(), "fd00::2".into()], &[]).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // A key file left world-readable by someone else gets its mode fixed on rewrite.
        fs::write(dir.path().join("worker-w.key"), "old").unwrap();
        fs::set_permissions(
            dir.path().join("worker-w.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let written = write_dev_farm(dir.path(), &[], &[worker("w", None)]).unwrap();
        for path in &written {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            if path.extension().unwrap() == "key" {
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
    }

    #[test]
    fn certificates_without_a_common_name_name_no_worker() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "web");
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            worker_identity(cert.der()),
            Err(PkiError::NoCommonName)
        ));
        assert!(matches!(
            worker_identity(b"not a certificate"),
            Err(PkiError::InvalidCertificate { .. })
        ));
    }
}
