//! A scripted HTTP/1.1 server on 127.0.0.1 standing in for a registry where a test must control
//! its answers and their timing (a slow `GET /v2/`, a manifest read held until the test says so).
//! Requests are read head and body (`Content-Length`); each is answered by the test's `answer`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// An answer: the whole response, status line to body.
pub type Answer = Pin<Box<dyn Future<Output = String> + Send>>;

/// Serves until the test ends; returns `host:port`. `answer` gets each request as `METHOD PATH`;
/// `closed` gets the requests of each connection the client closed, in order.
pub async fn serve(
    answer: impl Fn(String) -> Answer + Send + Sync + 'static,
    closed: impl Fn(&[String]) + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (answer, closed) = (Arc::new(answer), Arc::new(closed));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, closed) = (answer.clone(), closed.clone());
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut seen = Vec::new();
                loop {
                    let Some(request) = read_request(&mut stream).await else {
                        closed(&seen);
                        return;
                    };
                    seen.push(request.clone());
                    let response = answer(request).await;
                    if stream
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// `HTTP/1.1 200 OK` with the registry API header and no body.
pub fn ok() -> String {
    "HTTP/1.1 200 OK\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: 0\r\n\r\n"
        .to_owned()
}

/// The next request's `METHOD PATH`, its headers and body read past; `None` once the client
/// closed the connection (or broke it).
async fn read_request(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<String> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
        return None;
    }
    let request = line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
            return None;
        }
        if header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(request)
}
