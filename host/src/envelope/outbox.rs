//! Frames on their way to the peer, counted in bytes: a frame is queued only
//! when the outbox has room for it, and its room comes back once the socket
//! has taken it. Calls that would overfill it wait, and so do the guests
//! behind them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// A frame on its way to the caller.
pub(super) struct Outbound {
    /// The call it belongs to (`id` and sequence number), or `None` for a
    /// connection-level frame, which is always written.
    pub(super) call: Option<(String, u64)>,
    pub(super) bytes: Vec<u8>,
    /// The call's last frame: it leaves the table of open calls.
    pub(super) last: bool,
    /// Close the connection after writing it.
    pub(super) close: bool,
    /// Its room in the outbox, given back once the sink has it.
    _room: OwnedSemaphorePermit,
}

/// Frames waiting for the writer, counted in bytes.
#[derive(Clone)]
pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    /// One permit per byte that may still be queued.
    room: Arc<Semaphore>,
    capacity: u32,
}

impl Outbox {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::UnboundedReceiver<Outbound>) {
        let capacity = u32::try_from(capacity.max(1)).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(capacity as usize));
        let outbox = Self { tx, room, capacity };
        (outbox, rx)
    }

    /// Queues a frame once there is room for it (a frame larger than the
    /// whole outbox waits for it to be empty). False once the writer is gone.
    pub(super) async fn push(
        &self,
        call: Option<(String, u64)>,
        bytes: Vec<u8>,
        last: bool,
        close: bool,
    ) -> bool {
        let size = u32::try_from(bytes.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let Ok(room) = self.room.clone().acquire_many_owned(size).await else {
            return false;
        };
        self.tx
            .send(Outbound {
                call,
                bytes,
                last,
                close,
                _room: room,
            })
            .is_ok()
    }

    /// Waits until the outbox is not full: the reader's turn comes after the
    /// calls already waiting to queue.
    pub(super) async fn has_room(&self) {
        drop(self.room.acquire().await);
    }
}
