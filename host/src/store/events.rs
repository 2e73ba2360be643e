//! The event feed: every [`Event`] the host reports, numbered by a cursor
//! that only grows, kept in `events.redb` in the data directory so that it
//! survives a restart.
//!
//! Reporting an event never waits: it goes into a queue of
//! [`QUEUE`] events that one writer thread takes in batches, each batch
//! one transaction. When the queue is full (a flood of failing calls, say)
//! the event is counted instead, and the next batch records how many were
//! lost as an `events.dropped` event, so the feed says so. The newest
//! `max_events` events are kept; older ones are deleted as new ones come.
//!
//! Readers page through what is stored ([`EventLog::page`]) and follow
//! what comes next ([`EventLog::follow`]): an event is sent to followers
//! once it is committed, in cursor order.
//!
//! In a cluster, each event names its host (`"host"`), and the events of
//! the other hosts are mirrored in ([`EventLog::mirror`]), each with the
//! place it had in the cluster's stream, kept in the same transaction: a
//! host that restarts asks the stream for what comes after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{StoreError, failed};
use crate::call::{Event, Happening, Observer, StoredEvent};

/// The database file, in the data directory.
pub const DATABASE: &str = "events.redb";

/// Events waiting for the writer, at most.
pub const QUEUE: usize = 4096;

/// Events a follower may fall behind the newest before it is cut off.
pub const FOLLOW_BUFFER: usize = 1024;

/// Events the writer takes in one transaction, at most.
const BATCH: usize = 512;

/// Stored entries a page reads through, at most, looking for the reader's
/// own events among other tenants'.
const SCAN: usize = 10_000;

/// cursor → the event as JSON.
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// `"stream"` → the cluster stream's sequence of the last event mirrored.
const MIRRORED: TableDefinition<'_, &str, u64> = TableDefinition::new("mirrored");

/// What the writer takes.
enum Queued {
    /// An event of this host.
    Local(Event),
    /// Another host's event, as it stored it, at `seq` in the cluster's
    /// stream.
    Mirrored { json: Value, seq: u64 },
}

/// An event as stored and sent: `{"cursor", "at_ms", "kind", "tenant",
/// "plugin", "detail"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Its place in the feed.
    pub cursor: u64,
    /// Its tenant; `None`: the host's.
    pub tenant: Option<String>,
    /// The event as JSON.
    pub json: Value,
}

impl Stored {
    /// Whether a reader of `tenant` (`None`: the operator, who sees all)
    /// may see it.
    pub fn visible_to(&self, tenant: Option<&str>) -> bool {
        tenant.is_none() || self.tenant.as_deref() == tenant
    }
}

/// Why a page cannot be read from where the reader asked.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Events after the cursor were deleted already.
    #[error("cursor {cursor} is older than what the feed keeps; the oldest event kept is {oldest}")]
    Expired {
        /// The cursor asked for.
        cursor: u64,
        /// The oldest event's cursor.
        oldest: u64,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the writer and readers share.
#[derive(Debug)]
struct Shared {
    db: Database,
    /// The newest committed cursor; 0 before the first event.
    last: AtomicU64,
    /// The oldest kept cursor; `last + 1` when none is kept.
    oldest: AtomicU64,
    /// Events refused by a full queue since the last batch.
    dropped: AtomicU64,
    live: broadcast::Sender<Arc<Stored>>,
    /// This host's name in its cluster, once it has joined one.
    host: std::sync::OnceLock<String>,
}

/// The event feed of a host. Dropping it stops the writer once the queue
/// is written.
#[derive(Debug)]
pub struct EventLog {
    shared: Arc<Shared>,
    /// Taken when the log is dropped, which ends the writer.
    queue: Option<SyncSender<Queued>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EventLog {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            // The writer ends once the queue is written: the database is
            // closed when this returns, and may be opened again.
            let _ = writer.join();
        }
    }
}

impl EventLog {
    /// Opens (or creates) the feed in `dir`, keeping the newest
    /// `max_events` events.
    pub fn open(dir: &std::path::Path, max_events: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(failed)?;
        let db = super::create_database(&dir.join(DATABASE))?;
        let txn = db.begin_write().map_err(failed)?;
        let (first, last) = {
            let table = txn.open_table(EVENTS).map_err(failed)?;
            let first = table.first().map_err(failed)?.map(|(k, _)| k.value());
            let last = table.last().map_err(failed)?.map(|(k, _)| k.value());
            (first, last)
        };
        txn.commit().map_err(failed)?;
        let last = last.unwrap_or(0);
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        let shared = Arc::new(Shared {
            db,
            last: AtomicU64::new(last),
            oldest: AtomicU64::new(first.unwrap_or(last + 1)),
            dropped: AtomicU64::new(0),
            live,
            host: std::sync::OnceLock::new(),
        });
        let (queue, taken) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("opbox-events".into())
            .spawn({
                let shared = shared.clone();
                move || write_events(&shared, &taken, max_events.max(1))
            })
            .map_err(failed)?;
        Ok(Self {
            shared,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// The newest committed cursor; 0 before the first event.
    pub fn last(&self) -> u64 {
        self.shared.last.load(Ordering::Acquire)
    }

    /// The oldest cursor still kept.
    pub fn oldest(&self) -> u64 {
        self.shared.oldest.load(Ordering::Acquire)
    }

    /// Up to `limit` events after `after` that a reader of `tenant` may
    /// see (`None`: all), and the cursor to ask from next. `after = None`
    /// starts from the oldest kept.
    pub fn page(
        &self,
        after: Option<u64>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<(Vec<Arc<Stored>>, u64), ReadError> {
        let oldest = self.oldest();
        let after = match after {
            Some(cursor) if cursor.saturating_add(1) < oldest => {
                return Err(ReadError::Expired { cursor, oldest });
            }
            Some(cursor) => cursor,
            None => oldest.saturating_sub(1),
        };
        let txn = self.shared.db.begin_read().map_err(failed)?;
        let table = txn.open_table(EVENTS).map_err(failed)?;
        let mut events = Vec::new();
        let mut next = after;
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(failed)?
            .take(SCAN)
        {
            let (cursor, bytes) = entry.map_err(failed)?;
            next = cursor.value();
            let stored = decode(next, bytes.value())?;
            if stored.visible_to(tenant) {
                events.push(Arc::new(stored));
                if events.len() >= limit {
                    break;
                }
            }
        }
        Ok((events, next))
    }

    /// Every event committed from now on, in cursor order. A receiver that
    /// falls [`FOLLOW_BUFFER`] events behind gets `Lagged`.
    pub fn follow(&self) -> broadcast::Receiver<Arc<Stored>> {
        self.shared.live.subscribe()
    }

    /// Names this host in every event it records from now on: its name in
    /// its cluster. Once; later calls change nothing.
    pub fn set_host(&self, host: &str) {
        let _ = self.shared.host.set(host.to_owned());
    }

    /// Records another host's event, `json` as that host stored it, found
    /// at `seq` in the cluster's stream. Waits while the writer's queue is
    /// full: call it from a blocking thread. `false` once the log is closed.
    pub fn mirror(&self, json: Value, seq: u64) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|queue| queue.send(Queued::Mirrored { json, seq }).is_ok())
    }

    /// The cluster stream's sequence of the last event mirrored; 0 when
    /// none was.
    pub fn mirrored(&self) -> Result<u64, StoreError> {
        let txn = self.shared.db.begin_read().map_err(failed)?;
        let table = match txn.open_table(MIRRORED) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(failed(e)),
        };
        Ok(table
            .get("stream")
            .map_err(failed)?
            .map_or(0, |v| v.value()))
    }

    /// How many events are stored now.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.shared.db.begin_read().map_err(failed)?;
        let table = txn.open_table(EVENTS).map_err(failed)?;
        table.len().map_err(failed)
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

impl Observer for EventLog {
    fn observe(&self, event: Event) {
        let Some(queue) = &self.queue else { return };
        if let Err(TrySendError::Full(_)) = queue.try_send(Queued::Local(event.bounded())) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn decode(cursor: u64, bytes: &[u8]) -> Result<Stored, StoreError> {
    let json: Value = serde_json::from_slice(bytes).map_err(failed)?;
    let tenant = json["tenant"].as_str().map(str::to_owned);
    Ok(Stored {
        cursor,
        tenant,
        json,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The writer: takes events in batches until every sender is gone.
fn write_events(shared: &Shared, taken: &Receiver<Queued>, max_events: u64) {
    while let Ok(first) = taken.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match taken.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(Queued::Local(Event {
                what: Happening::EventsDropped { count: dropped },
                tenant: None,
                plugin: None,
            }));
        }
        match commit(shared, batch, max_events) {
            Ok(stored) => {
                for event in stored {
                    // No follower is not an error.
                    let _ = shared.live.send(Arc::new(event));
                }
            }
            Err(e) => tracing::error!("cannot record events: {e}"),
        }
    }
}

/// Stores `batch` after the newest event, deletes what is past
/// retention, and returns the batch as stored.
fn commit(shared: &Shared, batch: Vec<Queued>, max_events: u64) -> Result<Vec<Stored>, StoreError> {
    let at_ms = now_ms();
    let mut cursor = shared.last.load(Ordering::Acquire);
    let mut stored = Vec::with_capacity(batch.len());
    let mut mirrored = None;
    let txn = shared.db.begin_write().map_err(failed)?;
    let oldest = {
        let mut table = txn.open_table(EVENTS).map_err(failed)?;
        for queued in batch {
            cursor += 1;
            let (json, tenant) = match queued {
                Queued::Local(event) => {
                    let tenant = event.tenant.clone();
                    let stored = StoredEvent {
                        cursor,
                        at_ms,
                        tenant: event.tenant,
                        plugin: event.plugin,
                        host: shared.host.get().cloned(),
                        what: event.what,
                    };
                    (serde_json::to_value(stored).map_err(failed)?, tenant)
                }
                Queued::Mirrored { mut json, seq } => {
                    json["cursor"] = json!(cursor);
                    mirrored = Some(seq);
                    let tenant = json["tenant"].as_str().map(str::to_owned);
                    (json, tenant)
                }
            };
            let bytes = serde_json::to_vec(&json).map_err(failed)?;
            table.insert(cursor, &*bytes).map_err(failed)?;
            stored.push(Stored {
                cursor,
                tenant,
                json,
            });
        }
        let keep_from = cursor.saturating_sub(max_events) + 1;
        let mut oldest = shared.oldest.load(Ordering::Acquire).min(cursor);
        if oldest < keep_from {
            table.retain_in(..keep_from, |_, _| false).map_err(failed)?;
            oldest = keep_from;
        }
        oldest
    };
    if let Some(seq) = mirrored {
        let mut table = txn.open_table(MIRRORED).map_err(failed)?;
        table.insert("stream", seq).map_err(failed)?;
    }
    txn.commit().map_err(failed)?;
    shared.oldest.store(oldest, Ordering::Release);
    shared.last.store(cursor, Ordering::Release);
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: Option<&str>, n: u64) -> Event {
        Event {
            what: Happening::EventsDropped { count: n },
            tenant: tenant.map(str::to_owned),
            plugin: Some("p".into()),
        }
    }

    #[tokio::test]
    async fn events_are_numbered_kept_within_retention_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 5).unwrap();
        let mut live = log.follow();
        for n in 0..8 {
            log.observe(event(if n % 2 == 0 { Some("acme") } else { None }, n));
        }
        let mut cursors = Vec::new();
        while cursors.len() < 8 {
            cursors.push(live.recv().await.unwrap().cursor);
        }
        assert_eq!(cursors, (1..=8).collect::<Vec<_>>());
        // Only the newest five are kept; an older cursor has expired.
        assert_eq!(log.oldest(), 4);
        assert!(matches!(
            log.page(Some(1), 10, None),
            Err(ReadError::Expired { oldest: 4, .. })
        ));
        let (page, next) = log.page(Some(3), 10, None).unwrap();
        assert_eq!(page.len(), 5);
        assert_eq!(next, 8);
        // A tenant reads only its own.
        let (page, _) = log.page(None, 10, Some("acme")).unwrap();
        let ns: Vec<_> = page
            .iter()
            .map(|e| e.json["detail"]["count"].clone())
            .collect();
        assert_eq!(ns, [json!(4), json!(6)]);
        drop(live);
        drop(log);
        let log = EventLog::open(dir.path(), 5).unwrap();
        assert_eq!((log.oldest(), log.last()), (4, 8));
        assert_eq!(log.len().unwrap(), 5);
    }
}
