//! The daemon's upload bodies, read ahead of the registry they are forwarded to.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};

/// The daemon's upload is read ahead of the registry by up to this many pieces of
/// [`READ_AHEAD_PIECE`] bytes, per upload (the daemon runs up to 5 at once: 40 MiB at most).
const READ_AHEAD_PIECES: usize = 8;
const READ_AHEAD_PIECE: usize = 1 << 20;
/// The daemon's request body, read ahead of the registry by up to [`READ_AHEAD_PIECES`] pieces:
/// the daemon compresses as it sends, and without the slack it waits whenever the registry is
/// busy writing (a cold 1 GiB push, forwarded without it: 1.020× `docker push`; with it: 0.994×;
/// docs/benchmarks.md).
pub(super) fn read_ahead(
    body: Body,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (ahead, pieces) = tokio::sync::mpsc::channel(READ_AHEAD_PIECES);
    let mut source = Box::pin(rechunk(body.into_data_stream(), READ_AHEAD_PIECE));
    tokio::spawn(async move {
        while let Some(piece) = source.next().await {
            if ahead.send(piece).await.is_err() {
                return; // the upload failed: stop reading
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(pieces)
        .filter(|piece| std::future::ready(!matches!(piece, Ok(b) if b.is_empty())))
}

/// `body`'s bytes in pieces of `size` (the last one shorter; an empty body is one empty piece,
/// so that an empty blob is still uploaded).
fn rechunk(
    body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    size: usize,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(
        (body, BytesMut::new(), false, false),
        move |(mut body, mut buf, mut ended, sent_any)| async move {
            loop {
                if buf.len() >= size {
                    let piece = buf.split_to(size).freeze();
                    return Some((Ok(piece), (body, buf, ended, true)));
                }
                if ended {
                    if buf.is_empty() && sent_any {
                        return None;
                    }
                    let piece = buf.split().freeze();
                    return Some((Ok(piece), (body, buf, true, true)));
                }
                match body.next().await {
                    Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
                    Some(Err(e)) => {
                        return Some((
                            Err(std::io::Error::other(format!(
                                "reading the daemon's upload: {e}"
                            ))),
                            (body, buf, true, true),
                        ));
                    }
                    None => ended = true,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_cut_into_pieces_of_the_chunk_size() {
        let parts: Vec<Result<Bytes, axum::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defgh")),
            Ok(Bytes::from_static(b"i")),
        ];
        let pieces: Vec<Bytes> = rechunk(futures::stream::iter(parts), 4)
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(pieces, vec!["abcd", "efgh", "i"]);
        let empty: Vec<Bytes> = rechunk(futures::stream::iter(Vec::new()), 4)
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(
            empty,
            vec![Bytes::new()],
            "an empty blob is one empty piece"
        );
        let exact: Vec<Bytes> = rechunk(
            futures::stream::iter(vec![Ok(Bytes::from_static(b"abcd"))]),
            4,
        )
        .map(|r| r.unwrap())
        .collect()
        .await;
        assert_eq!(exact, vec!["abcd"]);
    }
}
