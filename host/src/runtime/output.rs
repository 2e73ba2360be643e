//! Captured guest stdout and stderr.
//!
//! A guest's output is kept in memory up to a cap and logged when the call
//! ends. Past the cap, writes still succeed and are counted, not kept: a guest
//! that prints a lot loses output, it does not trap.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// One captured stream: cheap to clone, all clones share the buffer.
#[derive(Debug, Clone)]
pub(crate) struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug)]
struct Captured {
    kept: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CapturedOutput {
    /// Keeps at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                kept: Vec::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    /// The kept bytes so far, as lossy UTF-8, left in place.
    pub(crate) fn text(&self) -> String {
        let captured = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&captured.kept).into_owned()
    }

    /// The kept bytes, as lossy UTF-8, and how many bytes were dropped.
    pub(crate) fn take(&self) -> (String, u64) {
        let mut captured = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let kept = std::mem::take(&mut captured.kept);
        (
            String::from_utf8_lossy(&kept).into_owned(),
            std::mem::take(&mut captured.dropped),
        )
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut captured = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = captured.cap.saturating_sub(captured.kept.len());
        let keep = room.min(buf.len());
        captured.kept.extend_from_slice(&buf[..keep]);
        captured.dropped += (buf.len() - keep) as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
