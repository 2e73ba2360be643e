//! Envelopes over TCP: each a 4-byte big-endian length, then that many bytes
//! of UTF-8 JSON.
//!
//! A frame's length is checked against the connection's [`FrameLimit`]
//! before any of it is read, its bytes are kept only as they arrive, and a
//! frame begun must be finished within `frame_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};

use super::EnvelopeConfig;
use super::session::{self, FrameLimit, Inbound};
use super::wire;
use crate::call::Transport;
use crate::dispatch::Dispatcher;
use crate::net::{self, ConnectionPermit, Connections, Doorman, Guarded, Refusal, Tls};

/// The codec of the TCP framing, refusing frames over `max_frame_bytes`.
pub fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Accepts connections on `listener` until `shutdown` completes, serving
/// each admitted one on a task of its own; then waits for the open
/// connections to close. They close by themselves once the dispatcher
/// drains and their last call has answered.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    dispatcher: Dispatcher,
    config: EnvelopeConfig,
    connections: Connections,
    write_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let mut open = tokio::task::JoinSet::new();
    let doorman = Doorman::new("tcp");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = net::accept(&listener) => accepted,
            // Reap finished connections as they end.
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let permit = match connections.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                doorman.refuse(stream, peer, refusal, answer).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (dispatcher, config, tls) = (dispatcher.clone(), config.clone(), tls.clone());
        open.spawn(async move {
            // Writes are guarded beneath TLS: the peer not taking bytes is
            // what the guard watches for.
            let io = Guarded::new(stream, write_timeout);
            match tls {
                None => connection(io, permit, dispatcher, config).await,
                // The handshake has as long as a frame.
                Some(tls) => match tls.accept(io, config.frame_timeout).await {
                    Ok(io) => connection(io, permit, dispatcher, config).await,
                    Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                },
            }
        });
    }
    drop(listener);
    while open.join_next().await.is_some() {}
}

/// What a refused peer is told: one error frame.
fn answer(refusal: Refusal) -> Vec<u8> {
    let frame = wire::error_frame("", &refusal.to_error());
    let mut bytes = u32::try_from(frame.len())
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(&frame);
    bytes
}

async fn connection<IO>(
    io: IO,
    _permit: ConnectionPermit,
    dispatcher: Dispatcher,
    config: Arc<EnvelopeConfig>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    serve_framed(read, write, Transport::Tcp, dispatcher, config).await;
}

/// A session of envelopes in this framing, read off `read` and written to
/// `write`: a TCP connection, or a QUIC stream.
pub(super) async fn serve_framed<R, W>(
    read: R,
    write: W,
    transport: Transport,
    dispatcher: Dispatcher,
    config: Arc<EnvelopeConfig>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Send + Unpin,
{
    let limit = FrameLimit::for_connection(&config, None);
    let incoming = Box::pin(frames(read, limit.clone(), config.frame_timeout));
    let outgoing = FramedWrite::new(write, codec(config.max_frame_bytes));
    session::serve(
        dispatcher, transport, None, config, limit, incoming, outgoing,
    )
    .await;
}

/// The frames read off `read`. Waiting for a frame to begin has no limit
/// here (the session closes idle connections); once its first byte is in,
/// the whole frame must arrive within `frame_timeout`. A length over `limit`
/// is refused before anything more is read. Ends after a violation, or when
/// the peer closes or the connection breaks.
fn frames<R: AsyncRead + Unpin + Send + 'static>(
    read: R,
    limit: FrameLimit,
    frame_timeout: Duration,
) -> impl Stream<Item = Inbound> + Send {
    let reader = BufReader::with_capacity(64 << 10, read);
    futures::stream::unfold(Some(reader), move |reader| {
        let limit = limit.clone();
        async move {
            let mut reader = reader?;
            match reader.fill_buf().await {
                Ok([]) | Err(_) => return None,
                Ok(_) => {}
            }
            let frame = tokio::time::timeout(frame_timeout, read_frame(&mut reader, &limit)).await;
            match frame {
                Ok(Ok(Ok(bytes))) => Some((Inbound::Frame(bytes), Some(reader))),
                Ok(Ok(Err(violation))) => Some((Inbound::Violation(violation), None)),
                // The connection broke mid-frame: the session ends as if closed.
                Ok(Err(_)) => None,
                Err(_) => Some((
                    Inbound::Violation(format!(
                        "a frame was not finished within {} ms",
                        frame_timeout.as_millis()
                    )),
                    None,
                )),
            }
        }
    })
}

/// One frame: its bytes, or why the stream cannot go on.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: &FrameLimit,
) -> std::io::Result<Result<Bytes, String>> {
    let len = reader.read_u32().await? as usize;
    let max = limit.get();
    if len > max {
        return Ok(Err(format!(
            "a frame of {len} bytes is longer than this connection takes now ({max} bytes)"
        )));
    }
    // Grows as the bytes arrive: a peer announcing a long frame and sending
    // little of it holds little.
    let mut bytes = Vec::with_capacity(len.min(64 << 10));
    let read = reader.take(len as u64).read_to_end(&mut bytes).await?;
    if read < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Ok(Bytes::from(bytes)))
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use futures::StreamExt;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Reads `wire`, written in pieces of `chunk` bytes, with `frames`: the
    /// frames, and whether the reader ended on a violation.
    fn decode(wire: &[u8], chunk: usize, max: usize) -> (Vec<Vec<u8>>, bool) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut tx, rx) = tokio::io::duplex(64);
            let write = async move {
                for piece in wire.chunks(chunk.max(1)) {
                    if tx.write_all(piece).await.is_err() {
                        break;
                    }
                }
            };
            let read =
                frames(rx, FrameLimit::new(max), Duration::from_secs(10)).collect::<Vec<_>>();
            let ((), read) = futures::join!(write, read);
            let mut frames = Vec::new();
            for inbound in read {
                match inbound {
                    Inbound::Frame(bytes) => frames.push(bytes.to_vec()),
                    Inbound::Violation(_) => return (frames, true),
                }
            }
            (frames, false)
        })
    }

    proptest! {
        /// Frames come out as they went in, however the bytes are split.
        #[test]
        fn frames_survive_any_chunking(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
            chunk in 1usize..32,
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                wire.put_u32(u32::try_from(frame.len()).unwrap());
                wire.put_slice(frame);
            }
            prop_assert_eq!(decode(&wire, chunk, 1024), (frames, false));
        }

        /// Arbitrary bytes never panic the reader; a length over the limit
        /// is refused rather than read.
        #[test]
        fn garbage_is_read_or_refused(wire in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
            let (frames, refused) = decode(&wire, chunk, 64);
            prop_assert!(frames.iter().all(|f| f.len() <= 64));
            if wire.len() >= 4 && u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) > 64 {
                prop_assert!(refused && frames.is_empty());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_begun_must_be_finished_in_time() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut read = Box::pin(frames(rx, FrameLimit::new(1024), Duration::from_secs(10)));
        tx.write_all(&[0, 0, 0, 3, b'a']).await.unwrap();
        match read.next().await {
            Some(Inbound::Violation(message)) => assert!(message.contains("10000 ms"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(read.next().await.is_none());
    }
}
