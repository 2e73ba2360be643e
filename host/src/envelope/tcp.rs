//! Envelopes over TCP: each a 4-byte big-endian length, then that many bytes
//! of UTF-8 JSON.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::EnvelopeConfig;
use super::session::{self, Inbound};
use crate::dispatch::Dispatcher;

/// The codec of the TCP framing, refusing frames over `max_frame_bytes`.
pub fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Accepts connections on `listener` until `shutdown` completes, serving
/// each on a task of its own; then waits for the open connections to close.
/// They close by themselves once the dispatcher drains and their last call
/// has answered.
pub async fn serve(
    listener: TcpListener,
    dispatcher: Dispatcher,
    config: EnvelopeConfig,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving
                    // the connections already open.
                    tracing::warn!(error = %e, "cannot accept a TCP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(stream, dispatcher.clone(), config.clone()));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(stream: TcpStream, dispatcher: Dispatcher, config: Arc<EnvelopeConfig>) {
    let (read, write) = stream.into_split();
    let codec = codec(config.max_frame_bytes);
    let max = config.max_frame_bytes;
    let incoming = FramedRead::new(read, codec.clone())
        .scan(false, move |ended, frame| {
            let item = match frame {
                _ if *ended => None,
                Ok(bytes) => Some(Inbound::Frame(bytes.freeze())),
                // The codec reports an oversized length as invalid data.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Some(Inbound::Violation(
                    format!("frame longer than the limit of {max} bytes"),
                )),
                // The connection broke: the session ends as if closed.
                Err(_) => None,
            };
            *ended = item.is_none();
            std::future::ready(item)
        })
        .boxed();
    let outgoing = FramedWrite::new(write, codec);
    session::serve(dispatcher, None, config, incoming, outgoing).await;
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    use super::*;

    /// Decodes `wire` fed in pieces of `chunk` bytes: the frames, and
    /// whether the decoder refused the stream.
    fn decode(wire: &[u8], chunk: usize, max: usize) -> (Vec<Vec<u8>>, bool) {
        let mut codec = codec(max);
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            buffer.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buffer) {
                    Ok(Some(frame)) => frames.push(frame.to_vec()),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
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

        /// Arbitrary bytes never panic the decoder; a length over the limit
        /// is refused rather than buffered.
        #[test]
        fn garbage_is_decoded_or_refused(wire in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
            let (frames, refused) = decode(&wire, chunk, 64);
            prop_assert!(frames.iter().all(|f| f.len() <= 64));
            if wire.len() >= 4 && u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) > 64 {
                prop_assert!(refused && frames.is_empty());
            }
        }
    }
}
