//! The Docker Engine's two upgraded endpoints that expose its BuildKit: `POST /grpc` (BuildKit's
//! control API, where the worker is the gRPC client) and `POST /session` (the build session, where
//! the daemon is the gRPC client and the worker serves auth, the context upload and secrets).
//!
//! Both are HTTP/1.1 requests answered with `101 Switching Protocols`, after which the connection
//! carries HTTP/2 without TLS (h2c). bollard keeps its upgrade helper private, so the worker does
//! the one request itself: write it, read the status line and headers byte by byte (so no byte of
//! the HTTP/2 stream that follows is swallowed), and hand the raw connection on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The longest response head the daemon may send before the upgraded stream starts.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A connection to the daemon after its `101` answer: a byte stream carrying HTTP/2.
#[derive(Debug)]
pub enum Upgraded {
    /// A `unix://` daemon socket (Linux, Docker Desktop on a Mac).
    Unix(UnixStream),
    /// A `tcp://` or `http://` daemon address.
    Tcp(TcpStream),
}

/// Where the daemon listens, parsed from a Docker host string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonAddress {
    /// `unix:///var/run/docker.sock`.
    Unix(std::path::PathBuf),
    /// `tcp://host:port` or `http://host:port`.
    Tcp(String),
}

impl DaemonAddress {
    /// Parses `unix://PATH`, `tcp://HOST:PORT` or `http://HOST:PORT`; anything else (npipe://,
    /// ssh://, https://) is refused with the address named.
    pub fn parse(host: &str) -> Result<Self, String> {
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(Self::Unix(path.into()));
        }
        for scheme in ["tcp://", "http://"] {
            if let Some(rest) = host.strip_prefix(scheme) {
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    break;
                }
                return Ok(Self::Tcp(authority.to_owned()));
            }
        }
        Err(format!(
            "docker host `{host}` cannot reach the daemon's BuildKit: use unix://PATH or tcp://HOST:PORT"
        ))
    }
}

/// Sends `POST {path}` with `headers` and the upgrade to h2c, and returns the connection once the
/// daemon answered `101`. Any other answer is an error quoting the daemon's status line and body.
pub async fn upgrade(
    address: &DaemonAddress,
    path: &str,
    headers: &[(&str, String)],
) -> io::Result<Upgraded> {
    let mut conn = match address {
        DaemonAddress::Unix(path) => Upgraded::Unix(UnixStream::connect(path).await?),
        DaemonAddress::Tcp(authority) => {
            let stream = TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Upgraded::Tcp(stream)
        }
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).await?;
    conn.flush().await?;

    let head = read_head(&mut conn).await?;
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    if status_line.split_whitespace().nth(1) != Some("101") {
        // A refusal carries a short body (e.g. a JSON message); read what arrives quickly.
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut body))
            .await
            .unwrap_or(Ok(0))
            .unwrap_or(0);
        let body = String::from_utf8_lossy(&body[..n]).trim().to_owned();
        return Err(io::Error::other(format!(
            "the daemon answered `{status_line}` to POST {path}{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        )));
    }
    Ok(conn)
}

/// Reads up to and including the blank line that ends a response head.
async fn read_head(conn: &mut Upgraded) -> io::Result<String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection before answering the upgrade",
            ));
        }
        head.push(byte[0]);
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(io::Error::other(
                "the daemon's answer to the upgrade has no end of headers",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Upgraded::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upgraded::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Upgraded::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Unix(s) => Pin::new(s).poll_flush(cx),
            Upgraded::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgraded::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Upgraded::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Upgraded {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hosts_that_reach_buildkit() {
        assert_eq!(
            DaemonAddress::parse("unix:///var/run/docker.sock"),
            Ok(DaemonAddress::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            DaemonAddress::parse("tcp://127.0.0.1:2375"),
            Ok(DaemonAddress::Tcp("127.0.0.1:2375".into()))
        );
        assert_eq!(
            DaemonAddress::parse("http://localhost:2375/"),
            Ok(DaemonAddress::Tcp("localhost:2375".into()))
        );
        assert_eq!(
            DaemonAddress::parse("npipe:////./pipe/docker_engine"),
            Err("docker host `npipe:////./pipe/docker_engine` cannot reach the daemon's BuildKit: use unix://PATH or tcp://HOST:PORT".into())
        );
    }
}
