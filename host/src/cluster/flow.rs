//! A forwarded subscription's items, paced by its caller.
//!
//! The running host sends items only as far ahead of what the caller has
//! taken as the forwarding host has granted: at first [`WINDOW_ITEMS`]
//! items and [`WINDOW_BYTES`] bytes of their JSON, whichever runs out
//! first, then more as the caller takes them, half a window at a time.
//! Items ready together travel in one message of up to [`BATCH_BYTES`]. So
//! a fast stream of small items costs one NATS message per many items, a
//! stream of large ones stays within the bytes, and a caller who stops
//! reading holds at most a window (and one item past it) on either side.
//!
//! A host that counts credit in items only (before bytes were counted)
//! sends no `bytes`, and is held to its items.

use async_nats::Subject;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::serve::{heartbeats, publish, send};
use super::wire::{Credit, Reply};
use crate::call::{CallError, ErrorCode};
use crate::dispatch::OutputStream;

/// Items the running host may send beyond what the caller has taken.
pub(super) const WINDOW_ITEMS: u32 = 1024;

/// Bytes of items' JSON the running host may send beyond what the caller
/// has taken (one item may pass it).
pub(super) const WINDOW_BYTES: u64 = 256 * 1024;

/// The most items' JSON one message carries (one item may pass it, up to
/// NATS's `max_payload`).
const BATCH_BYTES: usize = 64 * 1024;

/// What the running host may still send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Allowance {
    items: u32,
    /// `None`: a forwarding host that counts items only.
    bytes: Option<u64>,
}

impl Allowance {
    /// The credit a subscription starts with.
    pub(super) fn new(items: u32, bytes: Option<u64>) -> Self {
        Self { items, bytes }
    }

    /// Whether another item may go.
    fn open(&self) -> bool {
        self.items > 0 && self.bytes.is_none_or(|bytes| bytes > 0)
    }

    /// One item of `bytes` went.
    fn spend(&mut self, bytes: usize) {
        self.items = self.items.saturating_sub(1);
        if let Some(left) = &mut self.bytes {
            *left = left.saturating_sub(u64::try_from(bytes).unwrap_or(u64::MAX));
        }
    }

    /// More credit, never more than a window outstanding.
    fn grant(&mut self, credit: &Credit) {
        self.items = self.items.saturating_add(credit.items).min(WINDOW_ITEMS);
        if let Some(left) = &mut self.bytes {
            let more = credit.bytes.unwrap_or(0);
            *left = left.saturating_add(more).min(WINDOW_BYTES);
        }
    }
}

/// What the caller has taken since credit was last granted.
#[derive(Debug, Default)]
pub(super) struct Taken {
    items: u32,
    bytes: u64,
}

impl Taken {
    /// An item was taken; `bytes`: the JSON of the message it came in, if
    /// it was that message's last item.
    pub(super) fn take(&mut self, bytes: u64) {
        self.items += 1;
        self.bytes += bytes;
    }

    /// The credit to grant now, once half a window of items or bytes was
    /// taken.
    pub(super) fn due(&mut self) -> Option<Credit> {
        if self.items < WINDOW_ITEMS / 2 && self.bytes < WINDOW_BYTES / 2 {
            return None;
        }
        let credit = Credit {
            items: self.items,
            bytes: Some(self.bytes),
        };
        *self = Self::default();
        Some(credit)
    }
}

/// Items serialized into one [`Reply::Items`] as they come.
struct Batch {
    payload: Vec<u8>,
    count: usize,
}

const BATCH_HEAD: &[u8] = br#"{"type":"items","outputs":["#;

/// The outputs of an `items` reply as [`Batch`] writes it, read straight
/// into their values: `Reply`'s derived reading (an internally tagged
/// enum) would first copy the whole message into a tree of its own.
/// `None` for any other message.
pub(super) fn read_batch(payload: &[u8]) -> Option<Vec<Value>> {
    #[derive(serde::Deserialize)]
    struct Outputs {
        outputs: Vec<Value>,
    }
    if !payload.starts_with(BATCH_HEAD) {
        return None;
    }
    serde_json::from_slice::<Outputs>(payload)
        .ok()
        .map(|batch| batch.outputs)
}

impl Batch {
    fn new() -> Self {
        Self {
            payload: BATCH_HEAD.to_vec(),
            count: 0,
        }
    }

    /// Its size with `more` bytes of item in it, once closed.
    fn with(&self, more: usize) -> usize {
        self.payload.len() + more + 3
    }

    fn push(&mut self, item: &[u8]) {
        if self.count > 0 {
            self.payload.push(b',');
        }
        self.payload.extend_from_slice(item);
        self.count += 1;
    }

    fn close(mut self) -> Vec<u8> {
        self.payload.extend_from_slice(b"]}");
        self.payload
    }
}

/// Sends a subscription's items to `reply` while the forwarding host has
/// granted credit for them, saying `alive` every heartbeat. `Some(Ok)` at
/// its end, `Some(Err)` for the error that ended it, `None` if the
/// forwarding host aborted it (or an item was too large for the cluster,
/// which went as the error that ends it).
pub(super) async fn stream(
    mut items: OutputStream,
    mut allowance: Allowance,
    aborted: &CancellationToken,
    shared: &Shared,
    reply: &Subject,
) -> Option<Result<(), CallError>> {
    let inbox = shared.client.new_inbox();
    let mut control = match shared.client.subscribe(inbox.clone()).await {
        Ok(control) => control,
        Err(_) => return Some(Err(CallError::internal())),
    };
    let started = Reply::Started { control: inbox };
    send(shared, reply, &started).await;
    let mut heartbeat = heartbeats(shared);
    loop {
        tokio::select! {
            item = items.next(), if allowance.open() => {
                let first = match item {
                    Some(Ok(output)) => output,
                    Some(Err(error)) => return Some(Err(error)),
                    None => return Some(Ok(())),
                };
                let end = sent_ready(first, &mut items, &mut allowance, shared, reply).await?;
                if let Some(end) = end {
                    return Some(end);
                }
            }
            granted = control.next() => match granted {
                Some(message) => {
                    if let Err(why) = shared.seal.open(&message) {
                        super::seal::refused("a subscription's credit", why);
                    } else if let Ok(granted) = serde_json::from_slice::<Credit>(&message.payload) {
                        allowance.grant(&granted);
                    }
                }
                None => return None,
            },
            () = aborted.cancelled() => return None,
            _ = heartbeat.tick() => {
                send(shared, reply, &Reply::Alive).await;
            }
        }
    }
}

/// Sends `first` and the items after it that are ready at once, within the
/// allowance (which they use up), in messages of up to [`BATCH_BYTES`].
/// `Some(Some(end))` if the stream ended meanwhile; `None` if an item was
/// too large for the cluster (it went as the error that ends the call).
async fn sent_ready(
    first: Value,
    items: &mut OutputStream,
    allowance: &mut Allowance,
    shared: &Shared,
    reply: &Subject,
) -> Option<Option<Result<(), CallError>>> {
    let room = super::seal::room(&shared.client);
    let mut batch = Batch::new();
    let mut next = Some(first);
    let mut end = None;
    while let Some(output) = next.take() {
        let Ok(item) = serde_json::to_vec(&output) else {
            end = Some(Err(CallError::internal()));
            break;
        };
        if batch.count > 0 && batch.with(item.len()) > BATCH_BYTES.min(room) {
            publish(
                shared,
                reply,
                std::mem::replace(&mut batch, Batch::new()).close(),
            )
            .await;
        }
        if Batch::new().with(item.len()) > room {
            too_large(shared, reply, batch, room).await;
            return None;
        }
        batch.push(&item);
        allowance.spend(item.len());
        if !allowance.open() {
            break;
        }
        match items.next().now_or_never() {
            Some(Some(Ok(output))) => next = Some(output),
            Some(Some(Err(error))) => end = Some(Err(error)),
            Some(None) => end = Some(Ok(())),
            None => {}
        }
    }
    if batch.count > 0 {
        publish(shared, reply, batch.close()).await;
    }
    Some(end)
}

/// Sends what `batch` holds, then the error that ends a subscription whose
/// next item is larger than the cluster carries.
async fn too_large(shared: &Shared, reply: &Subject, batch: Batch, room: usize) {
    if batch.count > 0 {
        publish(shared, reply, batch.close()).await;
    }
    let error = CallError::new(
        ErrorCode::ResourceExhausted,
        format!("an item is larger than the {room} bytes the cluster carries"),
    )
    .with_details(json!({"limit": "max_payload", "value": room}));
    send(
        shared,
        reply,
        &Reply::Error {
            error,
            cost: Default::default(),
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_as_the_items_it_holds() {
        let outputs = [json!({"n": 1}), json!("two"), json!(null)];
        let mut batch = Batch::new();
        for output in &outputs {
            batch.push(&serde_json::to_vec(output).unwrap());
        }
        let payload = batch.close();
        match serde_json::from_slice::<Reply>(&payload).unwrap() {
            Reply::Items { outputs: got } => assert_eq!(got, outputs),
            other => panic!("{other:?}"),
        }
        assert_eq!(read_batch(&payload).unwrap(), outputs);
        let alive = serde_json::to_vec(&Reply::Alive).unwrap();
        assert!(read_batch(&alive).is_none());
    }

    #[test]
    fn credit_runs_out_on_items_or_bytes_and_is_granted_by_half_windows() {
        let mut allowance = Allowance::new(3, Some(100));
        allowance.spend(60);
        assert!(allowance.open());
        allowance.spend(60);
        assert!(!allowance.open(), "out of bytes with an item left");
        // Granted more than a window: held to one.
        allowance.grant(&Credit {
            items: 5000,
            bytes: Some(u64::MAX),
        });
        assert_eq!(allowance, Allowance::new(WINDOW_ITEMS, Some(WINDOW_BYTES)));
        // A host counting items only.
        let mut items_only = Allowance::new(1, None);
        items_only.spend(usize::MAX);
        assert!(!items_only.open());

        let mut taken = Taken::default();
        for _ in 0..WINDOW_ITEMS / 2 - 1 {
            taken.take(0);
        }
        assert!(taken.due().is_none());
        taken.take(10);
        let due = taken.due().unwrap();
        assert_eq!((due.items, due.bytes), (WINDOW_ITEMS / 2, Some(10)));
        taken.take(WINDOW_BYTES / 2);
        assert_eq!(taken.due().unwrap().items, 1, "half the bytes is due too");
    }
}
