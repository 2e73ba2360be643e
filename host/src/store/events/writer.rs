//! The event log's one writer: it takes what is queued in batches, each
//! batch one transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::SystemTime;

use redb::{ReadableTable, Table};
use serde_json::{Value, json};

use super::{CLUSTERED, EVENTS, MIRRORED, NUMBERED, OUTBOX, STREAM, Shared, Stored};
use crate::call::{Event, Happening, StoredEvent};
use crate::store::{StoreError, failed};

/// Events the writer takes in one transaction, at most.
const BATCH: usize = 512;

/// What the writer takes.
pub(super) enum Queued {
    /// An event of this host.
    Local(Event),
    /// An event of the cluster's stream, as its host stored it, at `seq`
    /// there.
    Mirrored { json: Value, seq: u64 },
    /// The feed becomes the cluster's; `fresh`: the cluster's stream was
    /// made anew, and the feed starts again.
    Join { fresh: bool },
    /// The outbox's events up to `upto` are published.
    Published { upto: u64 },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The writer: takes events in batches until every sender is gone.
pub(super) fn write_events(shared: &Shared, taken: &Receiver<Queued>, max_events: u64) {
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

/// Where a batch is written, and what it has done so far.
struct Batch<'txn> {
    feed: Table<'txn, u64, &'static [u8]>,
    outbox: Table<'txn, u64, &'static [u8]>,
    /// The feed's newest cursor.
    last: u64,
    /// The outbox's newest number.
    numbered: u64,
    clustered: bool,
    /// The stream sequence of the last event taken from the stream.
    stream: Option<u64>,
    /// The feed's new events, for its followers.
    stored: Vec<Stored>,
}

impl Batch<'_> {
    /// Adds `json` to the feed at `cursor`, written into it.
    fn add_to_feed(&mut self, cursor: u64, mut json: Value) -> Result<(), StoreError> {
        json["cursor"] = json!(cursor);
        let bytes = serde_json::to_vec(&json).map_err(failed)?;
        self.feed.insert(cursor, &*bytes).map_err(failed)?;
        self.last = cursor;
        let tenant = json["tenant"].as_str().map(str::to_owned);
        self.stored.push(Stored {
            cursor,
            tenant,
            json,
        });
        Ok(())
    }

    /// Adds `json` to the outbox, to be published.
    fn add_to_outbox(&mut self, json: &Value) -> Result<(), StoreError> {
        self.numbered += 1;
        let bytes = serde_json::to_vec(json).map_err(failed)?;
        self.outbox.insert(self.numbered, &*bytes).map_err(failed)?;
        Ok(())
    }

    /// Makes the feed the cluster's: what it kept alone goes to the
    /// outbox, named as this host's, and the feed starts empty.
    fn join(&mut self, host: Option<&String>) -> Result<(), StoreError> {
        let mut alone = Vec::new();
        for entry in self.feed.iter().map_err(failed)? {
            let (_, bytes) = entry.map_err(failed)?;
            alone.push(serde_json::from_slice::<Value>(bytes.value()).map_err(failed)?);
        }
        for mut json in alone {
            if !json["host"].is_string()
                && let Some(host) = host
            {
                json["host"] = json!(host);
            }
            self.add_to_outbox(&json)?;
        }
        self.clear()?;
        self.clustered = true;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.feed.retain(|_, _| false).map_err(failed)?;
        self.last = 0;
        self.stream = Some(0);
        Ok(())
    }
}

/// What a batch did, once its tables are closed.
struct Written {
    last: u64,
    numbered: u64,
    clustered: bool,
    stream: Option<u64>,
    stored: Vec<Stored>,
    /// The feed's oldest cursor, if it holds any.
    oldest: Option<u64>,
}

impl Batch<'_> {
    /// Deletes what is past retention, the newest `max_events` kept in the
    /// feed and in the outbox, and closes the tables.
    fn finish(mut self, max_events: u64) -> Result<Written, StoreError> {
        let keep_from = self.last.saturating_sub(max_events) + 1;
        self.feed
            .retain_in(..keep_from, |_, _| false)
            .map_err(failed)?;
        let unsent_from = self.numbered.saturating_sub(max_events) + 1;
        self.outbox
            .retain_in(..unsent_from, |_, _| false)
            .map_err(failed)?;
        let oldest = self.feed.first().map_err(failed)?.map(|(k, _)| k.value());
        Ok(Written {
            last: self.last,
            numbered: self.numbered,
            clustered: self.clustered,
            stream: self.stream,
            stored: self.stored,
            oldest,
        })
    }
}

/// Writes `batch`, deletes what is past retention, and returns what entered
/// the feed.
fn commit(shared: &Shared, batch: Vec<Queued>, max_events: u64) -> Result<Vec<Stored>, StoreError> {
    let at_ms = now_ms();
    let host = shared.host.get();
    let txn = shared.db.begin_write().map_err(failed)?;
    let mut written = Batch {
        feed: txn.open_table(EVENTS).map_err(failed)?,
        outbox: txn.open_table(OUTBOX).map_err(failed)?,
        last: shared.last.load(Ordering::Acquire),
        numbered: *shared.outbox.borrow(),
        clustered: shared.clustered.load(Ordering::Acquire),
        stream: None,
        stored: Vec::with_capacity(batch.len()),
    };
    for queued in batch {
        match queued {
            Queued::Local(event) => {
                let stored = StoredEvent {
                    // In a cluster, the stream gives it its cursor.
                    cursor: if written.clustered {
                        0
                    } else {
                        written.last + 1
                    },
                    at_ms,
                    tenant: event.tenant,
                    plugin: event.plugin,
                    host: host.cloned(),
                    what: event.what,
                };
                let json = serde_json::to_value(stored).map_err(failed)?;
                if written.clustered {
                    written.add_to_outbox(&json)?;
                } else {
                    written.add_to_feed(written.last + 1, json)?;
                }
            }
            Queued::Mirrored { json, seq } => {
                // Already in the feed: the stream was read again.
                if seq > written.last {
                    written.add_to_feed(seq, json)?;
                    written.stream = Some(seq);
                }
            }
            Queued::Join { fresh } => {
                if fresh && written.clustered {
                    written.clear()?;
                }
                if !written.clustered {
                    written.join(host)?;
                }
            }
            Queued::Published { upto } => {
                written
                    .outbox
                    .retain_in(..=upto, |_, _| false)
                    .map_err(failed)?;
            }
        }
    }
    let written = written.finish(max_events)?;
    {
        let mut meta = txn.open_table(MIRRORED).map_err(failed)?;
        if let Some(seq) = written.stream {
            meta.insert(STREAM, seq).map_err(failed)?;
        }
        meta.insert(NUMBERED, written.numbered).map_err(failed)?;
        meta.insert(CLUSTERED, u64::from(written.clustered))
            .map_err(failed)?;
    }
    txn.commit().map_err(failed)?;
    shared.clustered.store(written.clustered, Ordering::Release);
    let last = written.last;
    shared
        .oldest
        .store(written.oldest.unwrap_or(last + 1), Ordering::Release);
    shared.last.store(last, Ordering::Release);
    shared.outbox.send_if_modified(|newest| {
        let changed = *newest != written.numbered;
        *newest = written.numbered;
        changed
    });
    Ok(written.stored)
}
