//! Bytes that travel beside a call's JSON input: the component of an
//! install or replace, uploaded as it is, never turned into base64 text.
//!
//! An attachment is read by the operation that takes it, once it has been
//! admitted, under the operation's own bounds: the edge that received it
//! only says how long the sender may take ([`Attachment::streamed`]). So an
//! upload that comes through any route meets the same size limit and the
//! same count of uploads at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

/// The chunks of an attachment, as they arrive.
type Chunks = BoxStream<'static, Result<Bytes, AttachmentError>>;

/// Bytes beside a call's input. Cheap to clone; read at most once.
#[derive(Clone)]
pub struct Attachment {
    chunks: Arc<Mutex<Option<Chunks>>>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attachment")
    }
}

/// Why an attachment could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// It holds more than the reader takes.
    #[error("it is larger than {max} bytes")]
    TooLarge {
        /// The most the reader takes.
        max: usize,
    },
    /// Its sender did not finish sending it in time.
    #[error("it was not sent within {} ms", .after.as_millis())]
    TimedOut {
        /// How long the sender had.
        after: Duration,
    },
    /// Its sender broke off.
    #[error("its upload broke off")]
    Broken,
    /// Someone read it already.
    #[error("it was read already")]
    Taken,
}

impl Attachment {
    /// Bytes already in memory.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes: Bytes = bytes.into();
        Self::from_chunks(futures::stream::once(async move { Ok(bytes) }).boxed())
    }

    /// Chunks still arriving, each `Err` ending the attachment as
    /// [`AttachmentError::Broken`]; all of them within `within` of the
    /// first read, or the read ends with [`AttachmentError::TimedOut`].
    pub fn streamed<S, E>(chunks: S, within: Duration) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    {
        let chunks = chunks.map(|chunk| chunk.map_err(|_| AttachmentError::Broken));
        let timed = futures::stream::unfold(
            (chunks.boxed(), None::<tokio::time::Instant>),
            move |(mut chunks, deadline)| async move {
                let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + within);
                match tokio::time::timeout_at(deadline, chunks.next()).await {
                    Ok(Some(chunk)) => Some((chunk, (chunks, Some(deadline)))),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(AttachmentError::TimedOut { after: within }),
                        (futures::stream::empty().boxed(), Some(deadline)),
                    )),
                }
            },
        );
        Self::from_chunks(timed.boxed())
    }

    fn from_chunks(chunks: Chunks) -> Self {
        Self {
            chunks: Arc::new(Mutex::new(Some(chunks))),
        }
    }

    /// Reads the whole attachment, refusing it as soon as it passes `max`
    /// bytes: at most `max` bytes are ever held.
    pub async fn read(&self, max: usize) -> Result<Vec<u8>, AttachmentError> {
        let taken = self
            .chunks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut chunks = taken.ok_or(AttachmentError::Taken)?;
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > max {
                return Err(AttachmentError::TooLarge { max });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, ()>> + use<> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn an_attachment_is_read_whole_once_and_only_within_its_size() {
        let attachment = Attachment::streamed(chunks(&[b"ab", b"cd"]), Duration::from_secs(5));
        assert_eq!(attachment.clone().read(4).await.unwrap(), b"abcd");
        assert_eq!(attachment.read(4).await, Err(AttachmentError::Taken));
        let attachment = Attachment::streamed(chunks(&[b"ab", b"cd"]), Duration::from_secs(5));
        assert_eq!(
            attachment.read(3).await,
            Err(AttachmentError::TooLarge { max: 3 })
        );
        assert_eq!(
            Attachment::bytes(&b"xyz"[..]).read(3).await.unwrap(),
            b"xyz"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_that_trickles_is_cut_off_at_the_deadline() {
        // A chunk every second, for ever: the whole must come within 5 s.
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, ()>(Bytes::from_static(b"x")), ()))
        });
        let attachment = Attachment::streamed(trickle, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        assert_eq!(
            attachment.read(1 << 20).await,
            Err(AttachmentError::TimedOut {
                after: Duration::from_secs(5)
            })
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
