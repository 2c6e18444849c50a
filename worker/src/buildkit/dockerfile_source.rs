//! The Dockerfile, served to BuildKit on its own as buildx serves it: the session's file-sync
//! source named [`LOCAL_NAME`], which the Dockerfile frontend reads when the solve says
//! `dockerfilekey=dockerfile`. So a context whose `.dockerignore` excludes the Dockerfile still
//! builds with it, and `COPY . /x` does not see it, as with `docker build`.
//!
//! The protocol is fsutil's `DiffCopy`, sender side: the worker sends one stat packet per entry
//! (the Dockerfile's directories, then the file), an empty stat to end the listing; BuildKit
//! asks for the file by its index among the stats; the worker sends its bytes in data packets
//! and an empty data packet to end it; BuildKit says it is finished and the worker answers the
//! same and ends the stream.

use std::pin::Pin;
use std::sync::Arc;

use bollard::fsutil::types::packet::PacketType;
use bollard::fsutil::types::{Packet, Stat};
use bollard::moby::filesync::packet::file_sync_server::FileSync;
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Request, Response, Status, Streaming};

use super::session::SessionContent;

/// The name of the file-sync source the Dockerfile frontend reads the Dockerfile from.
pub const LOCAL_NAME: &str = "dockerfile";
/// Size of one data packet.
const DATA_CHUNK: u64 = 32 * 1024;
/// Go's `os.ModeDir`, as fsutil's stat carries it.
const MODE_DIR: u32 = 1 << 31;

/// The session's file-sync service: only the `dockerfile` source, holding the one file.
pub struct DockerfileSync {
    pub(super) content: Arc<SessionContent>,
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send + 'static>>;

/// The stat packets for `path`: its directories, then itself. Returns them and the file's id.
fn listing(path: &str, mode: u32, size: u64) -> (Vec<Packet>, u32) {
    let mut packets = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    for depth in 1..parts.len() {
        packets.push(stat_packet(Stat {
            path: parts[..depth].join("/"),
            mode: MODE_DIR | 0o755,
            ..Stat::default()
        }));
    }
    let id = packets.len() as u32;
    packets.push(stat_packet(Stat {
        path: path.to_owned(),
        mode: mode & 0o7777,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        ..Stat::default()
    }));
    // The end of the listing.
    packets.push(Packet {
        r#type: PacketType::PacketStat as i32,
        ..Packet::default()
    });
    (packets, id)
}

fn stat_packet(stat: Stat) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat: Some(stat),
        ..Packet::default()
    }
}

enum Phase {
    /// Waiting for BuildKit's next request.
    Listen,
    /// Sending the file: what is left of it.
    Sending {
        file: tokio::fs::File,
        left: u64,
    },
    Done,
}

fn data_packet(id: u32, data: Vec<u8>) -> Packet {
    Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data,
        ..Packet::default()
    }
}

type State = (Streaming<Packet>, Phase);

/// The next packet to send BuildKit, and the state after it; `None` ends the stream.
async fn next_reply(
    (mut incoming, mut phase): State,
    tar: &std::path::Path,
    source: &crate::context_view::DockerfileSource,
    file_id: u32,
) -> Option<(Result<Packet, Status>, State)> {
    let unreadable = |e: std::io::Error| {
        Status::unavailable(format!(
            "cannot read the Dockerfile from the context {}: {e}",
            tar.display()
        ))
    };
    loop {
        match phase {
            Phase::Done => return None,
            Phase::Sending { mut file, left } => {
                if left == 0 {
                    // An empty data packet ends the file.
                    return Some((
                        Ok(data_packet(file_id, Vec::new())),
                        (incoming, Phase::Listen),
                    ));
                }
                let take = left.min(DATA_CHUNK);
                let mut data = vec![0u8; take as usize];
                if let Err(e) = file.read_exact(&mut data).await {
                    return Some((Err(unreadable(e)), (incoming, Phase::Done)));
                }
                let phase = Phase::Sending {
                    file,
                    left: left - take,
                };
                return Some((Ok(data_packet(file_id, data)), (incoming, phase)));
            }
            Phase::Listen => {
                let packet = match incoming.message().await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => return None,
                };
                match PacketType::try_from(packet.r#type) {
                    Ok(PacketType::PacketReq) if packet.id == file_id => {
                        let opened = async {
                            let mut file = tokio::fs::File::open(tar).await?;
                            file.seek(std::io::SeekFrom::Start(source.offset)).await?;
                            Ok::<_, std::io::Error>(file)
                        };
                        match opened.await {
                            Ok(file) => {
                                phase = Phase::Sending {
                                    file,
                                    left: source.size,
                                }
                            }
                            Err(e) => return Some((Err(unreadable(e)), (incoming, Phase::Done))),
                        }
                    }
                    Ok(PacketType::PacketReq) => {
                        let status = Status::invalid_argument(format!(
                            "no file with id {} in the `{LOCAL_NAME}` source",
                            packet.id
                        ));
                        return Some((Err(status), (incoming, Phase::Done)));
                    }
                    Ok(PacketType::PacketFin) => {
                        let fin = Packet {
                            r#type: PacketType::PacketFin as i32,
                            ..Packet::default()
                        };
                        return Some((Ok(fin), (incoming, Phase::Done)));
                    }
                    Ok(PacketType::PacketErr) => {
                        tracing::debug!(
                            error = %String::from_utf8_lossy(&packet.data),
                            "buildkit gave up reading the Dockerfile"
                        );
                        return None;
                    }
                    // Stats and data flow the other way.
                    _ => {}
                }
            }
        }
    }
}

#[tonic::async_trait]
impl FileSync for DockerfileSync {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let name = request
            .metadata()
            .get("dir-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if name != LOCAL_NAME {
            return Err(Status::not_found(format!(
                "no local source `{name}` in this session (only `{LOCAL_NAME}`)"
            )));
        }
        let source = self.content.view.dockerfile.clone();
        let tar = self.content.view.tar.clone();
        let (stats, file_id) = listing(&source.path, source.mode, source.size);
        let incoming = request.into_inner();
        let replies = futures::stream::unfold((incoming, Phase::Listen), move |state| {
            let (tar, source) = (tar.clone(), source.clone());
            async move { next_reply(state, &tar, &source, file_id).await }
        });
        let stream =
            futures::StreamExt::chain(futures::stream::iter(stats.into_iter().map(Ok)), replies);
        Ok(Response::new(Box::pin(stream)))
    }

    type TarStreamStream = PacketStream;

    async fn tar_stream(
        &self,
        _: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("only diffcopy is served"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_gives_the_directories_first_and_ends_with_an_empty_stat() {
        let (packets, id) = listing("docker/ci/Dockerfile", 0o100644, 12);
        let paths: Vec<_> = packets
            .iter()
            .map(|p| p.stat.as_ref().map(|s| (s.path.as_str(), s.mode)))
            .collect();
        assert_eq!(
            paths,
            vec![
                Some(("docker", MODE_DIR | 0o755)),
                Some(("docker/ci", MODE_DIR | 0o755)),
                Some(("docker/ci/Dockerfile", 0o644)),
                None,
            ]
        );
        assert_eq!(id, 2);
        assert_eq!(packets[2].stat.as_ref().unwrap().size, 12);
        let (packets, id) = listing("Dockerfile", 0o600, 0);
        assert_eq!((packets.len(), id), (2, 0));
    }
}
