//! `wasi:keyvalue` shared by the hosts of a cluster: every key space lives
//! in one JetStream key-value bucket, `opbox-<cluster>-kv`, so a plugin
//! reads on any host what it wrote on another.
//!
//! A value is at `v.<tenant>.<plugin>.<bucket>.<key>`, each part escaped
//! (`=XX` for any byte a key may not hold); a key space's usage, bytes and
//! keys, at `u.<tenant>.<plugin>`. Every write is a compare-and-set on the
//! value's revision, and its change to the usage a compare-and-set on the
//! usage's: two hosts writing one key, or one key space, at once both land,
//! one after the other, and an increment never loses one. A write that
//! grows a key space reserves its room first and gives it back if another
//! writer came first; one that shrinks it gives room back after. A host
//! that dies between the two, or a write whose outcome is unknown, leaves
//! the usage counted high, never low, so the quota holds. A write is
//! acknowledged to the guest once the NATS server has stored it (file
//! storage).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::OnceCell;

use super::wire::{MAX_SUBJECT, escape, unescape};
use crate::capabilities::keyvalue::{
    Change, KeyPage, Keyspace, KvError, PAGE, Quota, Space, check_key, incremented,
};

/// Compare-and-set rounds a write tries before it gives up: a key or a key
/// space this contended is a plugin's bug, not a load to carry.
const ROUNDS: usize = 64;

/// How long a listing waits for the NATS server's next key.
const LIST_WAIT: Duration = Duration::from_secs(5);

/// The cluster's key spaces.
#[derive(Clone)]
pub(super) struct SharedKeyspace {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    /// `opbox-<cluster>-kv`.
    bucket: String,
    /// Made (or found) on first use: NATS may not be there when the host
    /// starts.
    store: OnceCell<kv::Store>,
}

impl std::fmt::Debug for SharedKeyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyspace")
            .field("bucket", &self.inner.bucket)
            .finish_non_exhaustive()
    }
}

impl SharedKeyspace {
    /// The key spaces of the cluster `bucket` names, reached through
    /// `client`.
    pub(super) fn new(client: &async_nats::Client, bucket: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                js: jetstream::new(client.clone()),
                bucket,
                store: OnceCell::new(),
            }),
        }
    }
}

impl Inner {
    async fn store(&self) -> Result<&kv::Store, KvError> {
        self.store
            .get_or_try_init(|| async {
                self.js
                    .create_or_update_key_value(kv::Config {
                        bucket: self.bucket.clone(),
                        description: "opbox wasi:keyvalue: every tenant's and plugin's keys".into(),
                        history: 1,
                        storage: StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(storage)
            })
            .await
    }

    /// Sets the value at `space`'s `bucket` and `key` to what `new` makes of
    /// the value there (`None`: no value), within `quota`, and returns it.
    async fn write(
        &self,
        space: &Space,
        bucket: &str,
        key: &str,
        quota: Quota,
        new: impl Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, KvError>,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let store = self.store().await?;
        let path = value_key(space, bucket, key)?;
        let usage = usage_key(space);
        for _ in 0..ROUNDS {
            let entry = store.entry(&path).await.map_err(storage)?;
            let (old, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => (Some(&e.value[..]), e.revision),
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            let value = new(old)?;
            if old.is_none() && value.is_none() {
                return Ok(None);
            }
            let change = Change::of(
                bucket,
                key,
                old.map(<[u8]>::len),
                value.as_ref().map(Vec::len),
            );
            let grows = change.grows();
            if grows {
                match account(store, &usage, &change, quota).await {
                    Ok(()) => {}
                    // Refused on what may be stale: if the value changed
                    // meanwhile, this round's write would fail anyway, and
                    // the next round may take no room (another host made
                    // the key this one meant to make).
                    Err(KvError::Quota { .. }) if changed(store, &path, revision).await? => {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let written = match &value {
                Some(v) => store
                    .update(&path, Bytes::copy_from_slice(v), revision)
                    .await
                    .map(drop),
                None => store.delete_expect_revision(&path, Some(revision)).await,
            };
            match written {
                Ok(()) => {
                    if !grows {
                        account(store, &usage, &change, Quota::UNLIMITED).await?;
                    }
                    return Ok(value);
                }
                // Another writer came first: nothing was written, so the
                // room taken is given back and the round is tried again.
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    if grows {
                        account(store, &usage, &change.undone(), Quota::UNLIMITED).await?;
                    }
                }
                // The write may have landed (a timed-out acknowledgement):
                // the room stays taken, so the usage is never counted low.
                Err(e) => return Err(storage(e)),
            }
        }
        Err(contended())
    }

    async fn list(&self, space: &Space, bucket: &str, cursor: u64) -> Result<KeyPage, KvError> {
        // Made first, if it is not there yet.
        self.store().await?;
        let stream = self
            .js
            .get_stream(format!("KV_{}", self.bucket))
            .await
            .map_err(storage)?;
        let prefix = format!("$KV.{}.{}.", self.bucket, bucket_prefix(space, bucket));
        if prefix.len() > MAX_SUBJECT {
            return Ok((Vec::new(), None));
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("{prefix}>"),
                headers_only: true,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(storage)?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(storage)?;
            loop {
                let message = tokio::time::timeout(LIST_WAIT, messages.next())
                    .await
                    .map_err(|_| KvError::Storage("listing keys timed out".into()))?
                    .ok_or_else(|| KvError::Storage("the key listing ended early".into()))?
                    .map_err(storage)?;
                let pending = message.info().map_err(storage)?.pending;
                let removed = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some();
                if !removed
                    && let Some(key) = message.subject.strip_prefix(&prefix).and_then(unescape_key)
                {
                    keys.push(key);
                }
                if pending == 0 {
                    break;
                }
            }
        }
        keys.sort_unstable();
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let page: Vec<String> = keys.iter().skip(skip).take(PAGE).cloned().collect();
        let next =
            (skip.saturating_add(page.len()) < keys.len()).then(|| cursor + page.len() as u64);
        Ok((page, next))
    }
}

/// Adds `change` to the usage at `key`, refused past `quota`.
async fn account(
    store: &kv::Store,
    key: &str,
    change: &Change,
    quota: Quota,
) -> Result<(), KvError> {
    for _ in 0..ROUNDS {
        let entry = store.entry(key).await.map_err(storage)?;
        let (used, revision) = match &entry {
            Some(e) if e.operation == Operation::Put => (parse_usage(&e.value), e.revision),
            Some(e) => ((0, 0), e.revision),
            None => ((0, 0), 0),
        };
        let (bytes, keys) = quota.admit(used, change)?;
        let value = Bytes::from(format!("{bytes} {keys}"));
        match store.update(key, value, revision).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(storage(e)),
        }
    }
    Err(contended())
}

/// Whether the value at `path` is no longer at `revision`.
async fn changed(store: &kv::Store, path: &str, revision: u64) -> Result<bool, KvError> {
    let entry = store.entry(path).await.map_err(storage)?;
    Ok(entry.map_or(0, |e| e.revision) != revision)
}

fn parse_usage(value: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(value).unwrap_or_default();
    let mut parts = text.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `v.<tenant>.<plugin>.<bucket>`: where a bucket's keys are.
fn bucket_prefix(space: &Space, bucket: &str) -> String {
    format!(
        "v.{}.{}.{}",
        escape(&space.tenant, '='),
        escape(&space.plugin, '='),
        escape(bucket, '=')
    )
}

/// `v.<tenant>.<plugin>.<bucket>.<key>`: where a value is. Refused when
/// longer than a subject the hosts send ([`MAX_SUBJECT`]): escaping takes
/// up to three bytes for one, so a key the local store takes may not fit.
fn value_key(space: &Space, bucket: &str, key: &str) -> Result<String, KvError> {
    let path = format!("{}.{}", bucket_prefix(space, bucket), escape(key, '='));
    if path.len() > MAX_SUBJECT {
        return Err(KvError::TooLong {
            what: "key, as the cluster stores it",
            len: path.len(),
            limit: MAX_SUBJECT,
        });
    }
    Ok(path)
}

fn usage_key(space: &Space) -> String {
    format!(
        "u.{}.{}",
        escape(&space.tenant, '='),
        escape(&space.plugin, '=')
    )
}

fn unescape_key(token: &str) -> Option<String> {
    unescape(token, '=')
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

fn contended() -> KvError {
    KvError::Storage(format!(
        "a key or key space changed under this write {ROUNDS} times over"
    ))
}

impl Keyspace for SharedKeyspace {
    fn get(
        &self,
        space: Space,
        bucket: String,
        key: String,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>> {
        let inner = self.inner.clone();
        async move {
            let store = inner.store().await?;
            let entry = store
                .entry(value_key(&space, &bucket, &key)?)
                .await
                .map_err(storage)?;
            Ok(entry
                .filter(|e| e.operation == Operation::Put)
                .map(|e| e.value.to_vec()))
        }
        .boxed()
    }

    fn set(
        &self,
        space: Space,
        bucket: String,
        key: String,
        value: Vec<u8>,
        quota: Quota,
    ) -> BoxFuture<'static, Result<(), KvError>> {
        let inner = self.inner.clone();
        async move {
            check_key(&bucket, &key)?;
            inner
                .write(&space, &bucket, &key, quota, |_| Ok(Some(value.clone())))
                .await
                .map(drop)
        }
        .boxed()
    }

    fn delete(
        &self,
        space: Space,
        bucket: String,
        key: String,
    ) -> BoxFuture<'static, Result<(), KvError>> {
        let inner = self.inner.clone();
        async move {
            inner
                .write(&space, &bucket, &key, Quota::UNLIMITED, |_| Ok(None))
                .await
                .map(drop)
        }
        .boxed()
    }

    fn increment(
        &self,
        space: Space,
        bucket: String,
        key: String,
        delta: u64,
        quota: Quota,
    ) -> BoxFuture<'static, Result<u64, KvError>> {
        let inner = self.inner.clone();
        async move {
            check_key(&bucket, &key)?;
            let written = inner
                .write(&space, &bucket, &key, quota, |old| {
                    Ok(Some(
                        incremented(&key, old, delta)?.to_string().into_bytes(),
                    ))
                })
                .await?;
            written
                .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                .ok_or_else(|| KvError::Storage("an increment wrote no number".into()))
        }
        .boxed()
    }

    fn list_keys(
        &self,
        space: Space,
        bucket: String,
        cursor: u64,
    ) -> BoxFuture<'static, Result<KeyPage, KvError>> {
        let inner = self.inner.clone();
        async move { inner.list(&space, &bucket, cursor).await }.boxed()
    }
}
