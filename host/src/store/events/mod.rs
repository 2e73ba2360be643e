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
//! In a cluster, the feed is the cluster's: every host's events, this
//! host's own included, in the order of the cluster's stream, each at the
//! cursor it has there (its stream sequence), so a cursor means the same on
//! every host and a reader may resume on any. An event this host reports
//! waits in an outbox ([`EventLog::outbox_page`]) until it is published to
//! the stream; it enters the feed as it comes back
//! ([`EventLog::mirror`]), with the stream's sequence of the last one kept
//! in the same transaction: a host that restarts asks the stream for what
//! comes after. A host that joins a cluster for the first time moves the
//! events it kept alone into its outbox: they join the cluster's feed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{StoreError, failed};
use crate::call::{Event, Observer};

/// The database file, in the data directory.
pub const DATABASE: &str = "events.redb";

/// Events waiting for the writer, at most.
pub const QUEUE: usize = 4096;

/// Events a follower may fall behind the newest before it is cut off.
pub const FOLLOW_BUFFER: usize = 1024;

/// Stored entries a page reads through, at most, looking for the reader's
/// own events among other tenants'.
const SCAN: usize = 10_000;

/// cursor → the event as JSON: the feed.
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// In a cluster: outbox number → an event of this host's, not published
/// yet.
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox");
/// [`STREAM`], [`CLUSTERED`], [`NUMBERED`] → their values.
const MIRRORED: TableDefinition<'_, &str, u64> = TableDefinition::new("mirrored");

/// The cluster stream's sequence of the last event taken into the feed.
const STREAM: &str = "stream";
/// 1 once the feed is the cluster's.
const CLUSTERED: &str = "clustered";
/// The outbox number last given out.
const NUMBERED: &str = "outbox";

mod writer;

use writer::{Queued, write_events};

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
    /// Whether the feed is the cluster's: this host's events go to the
    /// outbox.
    clustered: std::sync::atomic::AtomicBool,
    /// The newest outbox number, bumped as events enter the outbox.
    outbox: tokio::sync::watch::Sender<u64>,
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
        let (clustered, numbered) = {
            txn.open_table(OUTBOX).map_err(failed)?;
            let meta = txn.open_table(MIRRORED).map_err(failed)?;
            let get = |key| meta.get(key).map(|v| v.map_or(0, |v| v.value()));
            (
                get(CLUSTERED).map_err(failed)? == 1,
                get(NUMBERED).map_err(failed)?,
            )
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
            clustered: clustered.into(),
            outbox: tokio::sync::watch::Sender::new(numbered),
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

    /// Takes an event of the cluster's stream into the feed, `json` as its
    /// host stored it, at cursor `seq` (its stream sequence). Waits while
    /// the writer's queue is full: call it from a blocking thread. `false`
    /// once the log is closed.
    pub fn mirror(&self, json: Value, seq: u64) -> bool {
        self.send(Queued::Mirrored { json, seq })
    }

    /// Makes the feed the cluster's, from now on and after a restart: this
    /// host's events go to the outbox, and the events it kept alone move
    /// there too. When the cluster's stream was made anew (`fresh`: its
    /// sequences start again), the feed starts again with it. Waits as
    /// [`EventLog::mirror`] does.
    pub fn join_cluster(&self, fresh: bool) -> bool {
        self.send(Queued::Join { fresh })
    }

    /// The cluster stream's sequence of the last event taken into the
    /// feed; 0 when none was.
    pub fn mirrored(&self) -> Result<u64, StoreError> {
        self.meta(STREAM)
    }

    /// Up to `limit` events of this host's waiting in the outbox after
    /// number `after`, each with its number.
    pub fn outbox_page(&self, after: u64, limit: usize) -> Result<Vec<(u64, Value)>, StoreError> {
        let txn = self.shared.db.begin_read().map_err(failed)?;
        let table = match txn.open_table(OUTBOX) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(failed(e)),
        };
        let mut page = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(failed)?
            .take(limit)
        {
            let (number, bytes) = entry.map_err(failed)?;
            page.push((
                number.value(),
                serde_json::from_slice(bytes.value()).map_err(failed)?,
            ));
        }
        Ok(page)
    }

    /// Wakes when events enter the outbox (the value: the newest number).
    pub fn outbox_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.outbox.subscribe()
    }

    /// The events of the outbox up to number `upto` are published: they
    /// leave it. Waits as [`EventLog::mirror`] does.
    pub fn published(&self, upto: u64) -> bool {
        self.send(Queued::Published { upto })
    }

    fn send(&self, queued: Queued) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|queue| queue.send(queued).is_ok())
    }

    /// A value of the [`MIRRORED`] table; 0 when there is none.
    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let txn = self.shared.db.begin_read().map_err(failed)?;
        let table = match txn.open_table(MIRRORED) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(failed(e)),
        };
        Ok(table.get(key).map_err(failed)?.map_or(0, |v| v.value()))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::call::Happening;

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

    #[tokio::test]
    async fn in_a_cluster_the_feed_is_the_streams_and_own_events_wait_in_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 100).unwrap();
        log.observe(event(Some("acme"), 1));
        let mut live = log.follow();
        assert_eq!(live.recv().await.unwrap().cursor, 1);
        log.set_host("a");

        // Joining moves what the host kept alone to its outbox, named as
        // its own; the feed starts empty.
        assert!(log.join_cluster(false));
        log.observe(event(None, 2));
        let mut outbox = log.outbox_changes();
        outbox.wait_for(|newest| *newest == 2).await.unwrap();
        assert_eq!(log.last(), 0);
        let waiting = log.outbox_page(0, 10).unwrap();
        let numbers: Vec<_> = waiting
            .iter()
            .map(|(n, json)| (*n, json["host"].clone()))
            .collect();
        assert_eq!(numbers, [(1, json!("a")), (2, json!("a"))]);

        // Events enter the feed at their stream sequence, whoever's.
        let (mut first, mut second) = (waiting[0].1.clone(), waiting[1].1.clone());
        first["cursor"] = json!(0);
        assert!(log.mirror(first, 7));
        second["host"] = json!("b");
        assert!(log.mirror(second, 9));
        let got: Vec<_> = [live.recv().await.unwrap(), live.recv().await.unwrap()]
            .iter()
            .map(|e| (e.cursor, e.json["cursor"].clone(), e.json["host"].clone()))
            .collect();
        assert_eq!(got, [(7, json!(7), json!("a")), (9, json!(9), json!("b"))]);
        // Read again from the stream: taken once.
        assert!(log.mirror(json!({"host": "b"}), 9));
        assert!(log.published(2));
        outbox.borrow_and_update();
        log.observe(event(None, 3));
        outbox.changed().await.unwrap();
        assert_eq!(
            log.outbox_page(0, 10).unwrap().len(),
            1,
            "published ones left"
        );
        let (page, next) = log.page(Some(7), 10, None).unwrap();
        assert_eq!((page.len(), next), (1, 9));
        assert_eq!(log.oldest(), 7);
        assert_eq!(log.mirrored().unwrap(), 9);

        // Reopened, it is still the cluster's feed.
        drop(live);
        drop(log);
        let log = EventLog::open(dir.path(), 100).unwrap();
        assert_eq!((log.oldest(), log.last()), (7, 9));
        let mut live = log.follow();
        assert!(log.mirror(json!({"host": "b", "n": 10}), 10));
        assert_eq!(live.recv().await.unwrap().cursor, 10);
        let mut outbox = log.outbox_changes();
        log.observe(event(None, 4));
        outbox.wait_for(|newest| *newest == 4).await.unwrap();
        assert_eq!(log.outbox_page(0, 10).unwrap().len(), 2, "numbered on");
        // A stream made anew: the feed starts again.
        assert!(log.join_cluster(true));
        assert!(log.mirror(json!({"host": "b"}), 1));
        assert_eq!(live.recv().await.unwrap().cursor, 1);
        assert_eq!((log.oldest(), log.last()), (1, 1));
    }
}
