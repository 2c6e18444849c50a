//! Finding the leading coordinator among several.
//!
//! Clients (the CLI, workers) may be given several coordinator addresses, comma-separated. Only the
//! leader serves; a follower answers every call with `Unavailable`, naming the leader's address in the
//! [`LEADER_METADATA`] header when it knows it. [`connect_leader`] tries the addresses in order,
//! follows such a hint, and returns a channel to the first coordinator that serves.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::v1;

/// gRPC metadata key in which a follower names the leader's address.
pub const LEADER_METADATA: &str = "x-manifold-leader";

/// Why no coordinator could be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// An address that is not a URL.
    #[error(
        "invalid coordinator address `{address}`: {reason}; expected e.g. http://127.0.0.1:7700"
    )]
    InvalidAddress {
        /// What was given.
        address: String,
        /// Why it is refused.
        reason: String,
    },
    /// None answered as leader.
    #[error(
        "no coordinator is serving at {tried}: {last}; check that manifold-coordinator runs there (--coordinator or MANIFOLD_COORDINATOR)"
    )]
    NoLeader {
        /// The addresses tried, comma-separated.
        tried: String,
        /// What the last one said.
        last: String,
    },
}

/// Splits `a,b,c` into trimmed addresses, adding `http://` where no scheme is given.
pub fn parse_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a.contains("://") {
                a.to_owned()
            } else {
                format!("http://{a}")
            }
        })
        .collect()
}

/// The endpoint settings every Manifold client uses for `address`.
pub fn endpoint(address: &str) -> Result<Endpoint, DiscoveryError> {
    let invalid = |reason: String| DiscoveryError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    if !address.starts_with("http://") && !address.starts_with("https://") {
        return Err(invalid(
            "only http:// and https:// addresses are supported".into(),
        ));
    }
    Ok(Endpoint::from_shared(address.to_owned())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Connects to the leader among `addresses` (see the module docs). Returns its address and a channel.
pub async fn connect_leader(addresses: &[String]) -> Result<(String, Channel), DiscoveryError> {
    connect_leader_with(
        addresses,
        |address| endpoint(address).map_err(|e| e.to_string()),
        |address, e| format!("{address}: {}", transport_reason(e)),
    )
    .await
}

/// [`connect_leader`] over endpoints made by `endpoint` (e.g. with TLS settings), describing a
/// connection failure with `explain` (e.g. which TLS flag to fix).
pub async fn connect_leader_with(
    addresses: &[String],
    mut endpoint: impl FnMut(&str) -> Result<Endpoint, String>,
    explain: impl Fn(&str, &tonic::transport::Error) -> String,
) -> Result<(String, Channel), DiscoveryError> {
    let mut queue: Vec<String> = addresses.to_vec();
    let mut tried: Vec<String> = Vec::new();
    let mut last = "no address given".to_owned();
    // Each address is probed at most once, hints included, so this always ends.
    while let Some(address) = queue.first().cloned() {
        queue.remove(0);
        if tried.contains(&address) {
            continue;
        }
        tried.push(address.clone());
        let endpoint = match endpoint(&address) {
            Ok(e) => e,
            Err(reason) => {
                last = reason;
                continue;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                last = explain(&address, &e);
                continue;
            }
        };
        let mut client = v1::builds_client::BuildsClient::new(channel.clone());
        match client
            .list(v1::ListBuildsRequest {
                limit: 1,
                ..Default::default()
            })
            .await
        {
            Ok(_) => return Ok((address, channel)),
            Err(status) => {
                last = format!("{address}: {}", status.message());
                if status.code() == tonic::Code::Unavailable
                    && let Some(leader) = status
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                {
                    queue.insert(0, leader.to_owned());
                } else if status.code() != tonic::Code::Unavailable {
                    // Any other answer (e.g. Unauthenticated) comes from a serving leader.
                    return Ok((address, channel));
                }
            }
        }
    }
    Err(DiscoveryError::NoLeader {
        tried: tried.join(", "),
        last,
    })
}

/// Whether `host` (as a URL spells it, IPv6 in brackets) is this machine: the only place plain
/// HTTP to a coordinator is allowed.
pub fn is_loopback(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The rustls error among `error`'s causes, if a TLS handshake failed. An `io::Error` wrapping one
/// hides it from `source()`, so this looks inside those too.
pub fn rustls_error_in<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e rustls::Error> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        let found = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if found.is_some() {
            return found;
        }
        cause = e.source();
    }
    None
}

fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loopback() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.3.2.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.5",
            "coordinator",
            "localhost.example.com",
            "[fd00::1]",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn a_rustls_error_is_found_inside_an_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::other(tls.clone());
        assert_eq!(rustls_error_in(&io), Some(&tls));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(rustls_error_in(&plain), None);
    }

    #[test]
    fn address_lists_are_split_and_given_a_scheme() {
        assert_eq!(
            parse_addresses("127.0.0.1:7700, http://b:7700,,https://c"),
            ["http://127.0.0.1:7700", "http://b:7700", "https://c"]
        );
    }

    #[tokio::test]
    async fn nothing_listening_names_every_address_tried() {
        let err = connect_leader(&parse_addresses("127.0.0.1:1,127.0.0.1:2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http://127.0.0.1:1, http://127.0.0.1:2"),
            "{err}"
        );
    }
}
