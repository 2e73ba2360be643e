//! A socket whose writes give up on a peer that stops reading.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S`, with every write that makes no progress for `write_timeout` failing
/// with `TimedOut`. The clock starts when a write first has to wait and stops
/// at any progress, so a slow reader that keeps reading is never cut off,
/// and a peer that reads nothing at all is, whatever the host had queued for
/// it. Reads pass through untouched.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    write_timeout: Duration,
    /// Armed while a write waits on the peer.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    /// Guards `inner`'s writes with `write_timeout`.
    pub fn new(inner: S, write_timeout: Duration) -> Self {
        Self {
            inner,
            write_timeout,
            stall: None,
        }
    }

    /// The guarded socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `poll` on the socket, with the stall clock around it.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if let Poll::Ready(result) = poll(Pin::new(&mut self.inner), cx) {
            self.stall = None;
            return Poll::Ready(result);
        }
        let timeout = self.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer took nothing for {} ms",
                self.write_timeout.as_millis()
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_times_out_and_one_that_reads_does_not() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut guarded = Guarded::new(near, Duration::from_secs(5));
        // Fills the pipe, then waits on a peer that never reads.
        let stuck = guarded.write_all(&[0; 4096]).await.unwrap_err();
        assert_eq!(stuck.kind(), io::ErrorKind::TimedOut);

        let (near, far_reader) = tokio::io::duplex(1024);
        let mut guarded = Guarded::new(near, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut far = far_reader;
            let mut sink = Vec::new();
            // Reads a little every 4 s: slow, but never stalled for 5.
            let mut chunk = [0; 1024];
            while sink.len() < 4096 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let n = tokio::io::AsyncReadExt::read(&mut far, &mut chunk)
                    .await
                    .unwrap();
                sink.extend_from_slice(&chunk[..n]);
            }
            sink.len()
        });
        guarded.write_all(&[0; 4096]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 4096);
        drop(far.shutdown().await);
    }
}
