//! How the worker reaches the coordinator: over https:// with mutual TLS (it trusts `--ca-cert`
//! for the coordinator's certificate and presents its own `--cert`/`--key`), or over plaintext
//! http:// to a loopback address only, since the coordinator serves plaintext nowhere else.
//!
//! Also: finding the leading coordinator among several over such endpoints, and telling a TLS
//! failure (an untrusted coordinator, a refused client certificate) from other connection errors,
//! so that the log says which flag to fix.

use std::path::{Path, PathBuf};

use manifold_proto::discovery::{DiscoveryError, is_loopback, rustls_error_in};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{ClientIdentity, Config};

/// Why the worker cannot dial the coordinator as configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A coordinator address that does not parse.
    #[error(
        "bad coordinator url `{address}`: {reason}; expected e.g. https://coordinator.example.com:7700 or http://127.0.0.1:7700"
    )]
    InvalidAddress {
        /// What was given.
        address: String,
        /// What the parser said.
        reason: String,
    },
    /// Plaintext to a host that is not this machine.
    #[error(
        "refusing plaintext `{address}`: the coordinator serves http:// only on loopback; use https:// with --ca-cert, --cert and --key"
    )]
    PlaintextNotLoopback {
        /// The address given.
        address: String,
    },
    /// A certificate or key file that cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// e.g. "CA certificate (--ca-cert)".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that holds no PEM certificate or key.
    #[error("{} is not a PEM {what}: expected a file beginning with `-----BEGIN {label}`", path.display())]
    NotPem {
        /// e.g. "CA certificate (--ca-cert)".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM label expected, e.g. "CERTIFICATE".
        label: &'static str,
    },
    /// Settings tonic/rustls refuse, e.g. a key that is not the certificate's.
    #[error(
        "bad TLS settings for `{address}`: {reason}; check that --cert and --key belong together and that --ca-cert is the coordinator's CA"
    )]
    Settings {
        /// The coordinator address.
        address: String,
        /// What tonic said.
        reason: String,
    },
}

/// The TLS settings for https:// coordinators, read once from the files `config` names; `None`
/// when no address uses https://. Warns when a setting cannot take effect.
pub fn client_tls(
    config: &Config,
    addresses: &[String],
) -> Result<Option<ClientTlsConfig>, TlsSetupError> {
    let https = addresses.iter().any(|a| a.starts_with("https://"));
    if !https {
        if config.ca_cert.is_some() || config.identity.is_some() {
            tracing::warn!(
                coordinator = %config.coordinator,
                "--ca-cert, --cert and --key are ignored: the coordinator url is plaintext http://"
            );
        }
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &config.ca_cert {
        Some(path) => {
            let pem = read(path, "CA certificate (--ca-cert)")?;
            check_certificates(&pem, path, "CA certificate (--ca-cert)")?;
            tls.ca_certificate(Certificate::from_pem(pem))
        }
        None => tls.with_enabled_roots(),
    };
    match &config.identity {
        Some(ClientIdentity { cert, key }) => {
            let cert_pem = read(cert, "worker certificate (--cert)")?;
            check_certificates(&cert_pem, cert, "worker certificate (--cert)")?;
            let key_pem = read(key, "worker key (--key)")?;
            if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                return Err(TlsSetupError::NotPem {
                    what: "private key (--key)",
                    path: key.clone(),
                    label: "PRIVATE KEY",
                });
            }
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        None => tracing::warn!(
            coordinator = %config.coordinator,
            "no client certificate: a coordinator that requires mutual TLS refuses this worker; pass --cert and --key"
        ),
    }
    Ok(Some(tls))
}

/// The endpoint for one coordinator address: proto's settings, plaintext only to loopback, and
/// `tls` for https:// (whose server name is the URL's host).
pub fn endpoint(address: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, TlsSetupError> {
    let endpoint = manifold_proto::discovery::endpoint(address).map_err(|e| match e {
        DiscoveryError::InvalidAddress { reason, .. } => TlsSetupError::InvalidAddress {
            address: address.to_owned(),
            reason,
        },
        other => TlsSetupError::InvalidAddress {
            address: address.to_owned(),
            reason: other.to_string(),
        },
    })?;
    if endpoint.uri().scheme_str() != Some("https") {
        let loopback = endpoint.uri().host().is_some_and(is_loopback);
        return if loopback {
            Ok(endpoint)
        } else {
            Err(TlsSetupError::PlaintextNotLoopback {
                address: address.to_owned(),
            })
        };
    }
    // `client_tls` has read the files whenever an address is https://.
    let tls = tls
        .cloned()
        .unwrap_or_else(|| ClientTlsConfig::new().with_enabled_roots());
    endpoint
        .tls_config(tls)
        .map_err(|e| TlsSetupError::Settings {
            address: address.to_owned(),
            reason: crate::error_chain(&e),
        })
}

/// [`manifold_proto::discovery::connect_leader`] over [`endpoint`]s: tries `addresses` in order,
/// follows a follower's hint to the leader, and returns the first coordinator that serves; a TLS
/// failure is told with the flag to fix.
pub async fn connect_leader(
    addresses: &[String],
    tls: Option<&ClientTlsConfig>,
) -> Result<(String, Channel), DiscoveryError> {
    manifold_proto::discovery::connect_leader_with(
        addresses,
        |address| endpoint(address, tls).map_err(|e| e.to_string()),
        |address, e| match tls_failure(e) {
            Some(failure) => failure.explain(address),
            None => format!("{address}: {}", crate::error_chain(e)),
        },
    )
    .await
}

/// A connection that failed in the TLS handshake, and on which side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The coordinator's certificate does not verify: signed by a CA the worker does not trust,
    /// or expired.
    UntrustedCoordinator(String),
    /// The coordinator's certificate does not name the host dialled.
    WrongHost(String),
    /// The coordinator rejected the worker's certificate, or its lack of one.
    CertificateRefused(String),
}

impl TlsFailure {
    /// A log line for this failure on `address`, saying which flag to fix.
    pub fn explain(&self, address: &str) -> String {
        match self {
            TlsFailure::UntrustedCoordinator(detail) => format!(
                "cannot verify the TLS certificate of the coordinator at {address}: {detail}; pass --ca-cert with the CA that signed it (e.g. the ca.pem written by `manifold-coordinator dev-ca`)"
            ),
            TlsFailure::WrongHost(detail) => format!(
                "the TLS certificate of the coordinator at {address} is not valid for that host: {detail}; dial a host name or address the certificate names, or reissue it for this one (`manifold-coordinator dev-ca --host HOST`)"
            ),
            TlsFailure::CertificateRefused(detail) => format!(
                "the coordinator at {address} refused this worker's TLS client certificate: {detail}; pass --cert and --key issued by the coordinator's CA for this worker's --name"
            ),
        }
    }
}

/// Alerts by which a server rejects the client's certificate (or its absence).
const REFUSAL_ALERTS: [AlertDescription; 8] = [
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::CertificateRequired,
];

/// Finds a rustls handshake error among `error`'s causes.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    if let Some(failure) = rustls_error_in(error).and_then(classify) {
        return Some(failure);
    }
    // An alert received after the handshake (TLS 1.3 servers check the client's certificate
    // then) reaches here inside h2's io error, whose `source()` skips it: only its text remains.
    let text = crate::error_chain(error);
    REFUSAL_ALERTS
        .into_iter()
        .map(rustls::Error::AlertReceived)
        .find(|alert| text.contains(&alert.to_string()))
        .and_then(|alert| classify(&alert))
}

fn classify(error: &rustls::Error) -> Option<TlsFailure> {
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(TlsFailure::WrongHost(error.to_string())),
        rustls::Error::InvalidCertificate(_) => {
            Some(TlsFailure::UntrustedCoordinator(error.to_string()))
        }
        rustls::Error::AlertReceived(alert) if REFUSAL_ALERTS.contains(alert) => {
            Some(TlsFailure::CertificateRefused(error.to_string()))
        }
        _ => None,
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// At least one certificate, and every PEM certificate block readable.
fn check_certificates(pem: &[u8], path: &Path, what: &'static str) -> Result<(), TlsSetupError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(()),
        _ => Err(TlsSetupError::NotPem {
            what,
            path: path.to_owned(),
            label: "CERTIFICATE",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_beyond_loopback() {
        endpoint("http://127.0.0.1:7700", None).unwrap();
        endpoint("http://localhost:7700", None).unwrap();
        endpoint("http://[::1]:7700", None).unwrap();
        let err = endpoint("http://10.0.0.5:7700", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`http://10.0.0.5:7700`") && err.contains("https://"),
            "{err}"
        );
        let err = endpoint("grpc://x", None).unwrap_err().to_string();
        assert!(err.contains("`grpc://x`"), "{err}");
    }

    #[test]
    fn tls_failures_are_told_apart_from_other_errors() {
        let wrapped = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let check = |error: &(dyn std::error::Error + 'static)| tls_failure(error);
        assert!(matches!(
            check(&wrapped(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            Some(TlsFailure::UntrustedCoordinator(_))
        ));
        assert!(matches!(
            check(&wrapped(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName
            ))),
            Some(TlsFailure::WrongHost(_))
        ));
        // Only the text of the alert survives some wrappers.
        let text_only = std::io::Error::other(format!(
            "connection error: {}",
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
        ));
        assert!(matches!(
            check(&text_only),
            Some(TlsFailure::CertificateRefused(_))
        ));
        assert_eq!(
            check(&wrapped(rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
            ))),
            None
        );
        assert_eq!(
            check(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            None
        );
    }

    #[test]
    fn missing_and_malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_env();
        config.coordinator = "https://127.0.0.1:7700".into();
        let https = vec![config.coordinator.clone()];
        config.ca_cert = Some(dir.path().join("missing-ca.pem"));
        config.identity = None;
        let err = client_tls(&config, &https).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read the CA certificate (--ca-cert)")
                && err.contains("missing-ca.pem"),
            "{err}"
        );

        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        config.ca_cert = Some(not_pem.clone());
        let err = client_tls(&config, &https).unwrap_err().to_string();
        assert!(err.contains(&not_pem.display().to_string()), "{err}");
        assert!(err.contains("-----BEGIN CERTIFICATE"), "{err}");

        config.ca_cert = None;
        config.identity = Some(ClientIdentity {
            cert: dir.path().join("w.pem"),
            key: dir.path().join("w.key"),
        });
        let err = client_tls(&config, &https).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read the worker certificate (--cert)") && err.contains("w.pem"),
            "{err}"
        );

        // Over plaintext the files are not needed, so not read.
        assert!(
            client_tls(&config, &["http://127.0.0.1:7700".to_owned()])
                .unwrap()
                .is_none()
        );
    }
}
