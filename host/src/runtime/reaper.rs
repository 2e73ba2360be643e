//! Dropping finished stores off the caller's path.
//!
//! Dropping a store returns its instance's slot to the pooling allocator,
//! which resets the memory the call dirtied (`PAGEMAP_SCAN`) and decommits
//! what it must: about a third of a fresh `echo` call, measured. A call
//! that has its answer hands its store to the reaper thread instead and
//! answers at once.
//!
//! The accounting does not wait: the store's instance slots and its place in
//! the live count are given back before the hand-off, so a caller never
//! sees an instance that has answered as alive. The pool has [`QUEUE`] more
//! slots than `max_instances` for the stores waiting here, and when that
//! many wait, the caller drops its store itself.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use wasmtime::Store;

use super::state::StoreState;

/// Stores waiting to be dropped at most; the pool's headroom.
pub(super) const QUEUE: usize = 32;

/// The sending side of the reaper thread, which stops when this drops.
#[derive(Debug)]
pub(super) struct Reaper {
    stores: SyncSender<Store<StoreState>>,
}

impl Reaper {
    /// Starts the thread, within the current Tokio runtime if there is one
    /// (what a store holds may belong to it).
    pub(super) fn start() -> std::io::Result<Self> {
        let (stores, waiting) = sync_channel::<Store<StoreState>>(QUEUE);
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("opbox-reaper".into())
            .spawn(move || {
                let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                for store in waiting {
                    drop(store);
                }
            })?;
        Ok(Self { stores })
    }

    /// Drops `store` on the reaper thread, or here when too many wait.
    pub(super) fn reap(&self, mut store: Store<StoreState>) {
        store.data_mut().release();
        match self.stores.try_send(store) {
            Ok(()) => {}
            Err(TrySendError::Full(store) | TrySendError::Disconnected(store)) => drop(store),
        }
    }
}
