//! A plain-HTTP registry on loopback for the session's tests: one answer per connection, chosen
//! by `answer` from the request's text, which also says whether the request counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Starts the server; returns its `127.0.0.1:PORT` and the count of requests that counted.
pub(super) async fn serve(
    answer: impl Fn(&str) -> (String, bool) + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counted = Arc::new(AtomicUsize::new(0));
    let count = counted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 8192];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let (response, counts) = answer(&String::from_utf8_lossy(&buf[..n]));
            if counts {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (addr, counted)
}
