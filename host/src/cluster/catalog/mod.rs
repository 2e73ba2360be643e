//! One catalog for the whole cluster: every host publishes the operations
//! callers may reach through it, and lists the others' with its own.
//!
//! Each host keeps its share in the JetStream key-value bucket
//! `opbox-<cluster>-catalog`, under `host.<its name>`: the specs of the
//! queries, mutations and subscriptions it holds that callers see from the
//! wire, by owner (shared, or one tenant's), sealed with the cluster's key.
//! It writes the share again when its registry changes and every
//! `catalog_refresh_ms`; a share not written again for three of those is
//! no longer listed, so a host that dies drops out of every listing within
//! that time. A host that drains says so in a last share, which the
//! others keep but do not list.
//!
//! A share is bounded: at most [`MAX_SHARE_BYTES`] of specs (the rest are
//! left out, with a warning; their calls are still forwarded by name).
//!
//! Shares are kept for [`FORGET`] after their last write (the bucket's
//! `max_age`), listed or not: a call of an operation that only gone hosts
//! held answers a retryable `UNAVAILABLE` ("its hosts are unreachable")
//! rather than `NOT_FOUND`, which stays for names no host has held within
//! that time.

mod known;

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::seal::{self, Seal};
use crate::call::OperationSpec;
use crate::dispatch::{Dispatcher, Handler, Operation, Registry};
pub(super) use known::Catalog;

/// The most one host's share may hold, in bytes of JSON.
pub(super) const MAX_SHARE_BYTES: usize = 512 * 1024;

/// How long a share is kept after its host last wrote it.
pub(super) const FORGET: Duration = Duration::from_secs(3600);

/// A share missed this many refreshes in a row: its host is gone.
const MISSED: u32 = 3;

/// How far apart two hosts' clocks may be (as for seals).
const SKEW: Duration = Duration::from_secs(30);

/// A host's share as it is kept in the bucket.
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    host: String,
    /// When its host wrote it, by its clock (ms since the Unix epoch).
    at_ms: u64,
    /// Written by a host leaving the cluster: kept, not listed.
    leaving: bool,
    owners: Vec<Owned>,
}

/// The operations one owner holds on a host.
#[derive(Debug, Serialize, Deserialize)]
struct Owned {
    /// `None`: every tenant sees them.
    tenant: Option<String>,
    operations: Vec<OperationSpec>,
}

/// This host's part in the catalog: the bucket, and who it is.
pub(super) struct Publisher {
    bucket: kv::Store,
    host: String,
    seal: Arc<Seal>,
    catalog: Arc<Catalog>,
    refresh: Duration,
}

impl Publisher {
    /// The cluster's catalog bucket, made if it is not there yet; `None`,
    /// with a warning, when the NATS server has no JetStream.
    pub(super) async fn open(
        client: &async_nats::Client,
        bucket: String,
        host: String,
        seal: Arc<Seal>,
        catalog: Arc<Catalog>,
        refresh: Duration,
    ) -> Option<Self> {
        let js = jetstream::new(client.clone());
        let made = js
            .create_or_update_key_value(kv::Config {
                bucket,
                description: "opbox catalog: the operations each host lists".into(),
                history: 1,
                max_age: FORGET,
                ..Default::default()
            })
            .await;
        match made {
            Ok(bucket) => Some(Self {
                bucket,
                host,
                seal,
                catalog,
                refresh,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "this host's operations are not listed elsewhere in the cluster: no JetStream");
                None
            }
        }
    }

    /// Reads the other hosts' shares from now on, and writes this host's
    /// until it drains; `said` is `false` from now until its last share
    /// is written.
    pub(super) async fn start(self, dispatcher: Dispatcher, said: watch::Sender<bool>) {
        let registry = Arc::downgrade(dispatcher.registry());
        match self.bucket.watch_with_history(">").await {
            Ok(watch) => {
                let reading = Reader {
                    host: self.host.clone(),
                    seal: self.seal.clone(),
                    catalog: self.catalog.clone(),
                    registry: registry.clone(),
                };
                tokio::spawn(reading.read(watch));
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow the cluster's catalog"),
        }
        said.send_replace(false);
        tokio::spawn(async move {
            self.write(dispatcher).await;
            said.send_replace(true);
        });
    }

    /// Writes this host's share at once, when its registry changes, and
    /// every `refresh`; a last one, kept and not listed, once it drains.
    async fn write(self, dispatcher: Dispatcher) {
        let mut changes = dispatcher.registry().changes();
        let draining = dispatcher.draining();
        tokio::pin!(draining);
        let mut refresh = tokio::time::interval(self.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written = None;
        loop {
            let due = tokio::select! {
                _ = refresh.tick() => {
                    if self.catalog.sweep() {
                        touch(&Arc::downgrade(dispatcher.registry()));
                    }
                    true
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                () = &mut draining => break,
            };
            changes.borrow_and_update();
            let owners = share(&dispatcher, &self.host);
            let digest = Some(digest(&owners));
            // A change of another host's share wakes this loop too; this
            // host's own is written again only when it changed, or is due.
            if !due && digest == written {
                continue;
            }
            if self.put(owners, false).await {
                written = digest;
            }
        }
        // Not listed any more, but known: its calls are `UNAVAILABLE`.
        self.put(share(&dispatcher, &self.host), true).await;
    }

    /// Writes `owners` as this host's share; whether it was written.
    async fn put(&self, owners: Vec<Owned>, leaving: bool) -> bool {
        let published = Published {
            host: self.host.clone(),
            at_ms: seal::now_ms(),
            leaving,
            owners,
        };
        let Ok(json) = serde_json::to_vec(&published) else {
            return false;
        };
        let key = key(&self.host);
        let mut value = self.seal.seal_kept(&key, &json).into_bytes();
        value.push(b'\n');
        value.extend_from_slice(&json);
        match self.bucket.put(key, value.into()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write this host's share of the cluster's catalog");
                false
            }
        }
    }
}

/// A hash of what `owners` list: a share written again unchanged is told
/// apart from one that changed.
fn digest(owners: &[Owned]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(owners)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// The key of `host`'s share.
fn key(host: &str) -> String {
    format!("host.{}", super::wire::escape(host, '='))
}

/// This host's share: its listed operations by owner, cut at
/// [`MAX_SHARE_BYTES`].
fn share(dispatcher: &Dispatcher, host: &str) -> Vec<Owned> {
    let mut room = MAX_SHARE_BYTES;
    let mut left_out = 0usize;
    let mut owners = Vec::new();
    for (tenant, specs) in dispatcher.catalog_share() {
        let mut operations = Vec::new();
        for spec in specs {
            let size = serde_json::to_vec(&spec).map_or(usize::MAX, |json| json.len());
            if size > room {
                left_out += 1;
                continue;
            }
            room -= size;
            operations.push(spec);
        }
        if !operations.is_empty() {
            owners.push(Owned { tenant, operations });
        }
    }
    if left_out > 0 {
        tracing::warn!(
            host,
            left_out,
            limit = MAX_SHARE_BYTES,
            "this host's share of the cluster's catalog is full: some operations are not listed on other hosts (their calls are still forwarded)"
        );
    }
    owners
}

/// Wakes what follows `registry`: its listings include the catalog.
fn touch(registry: &Weak<Registry>) {
    if let Some(registry) = registry.upgrade() {
        registry.touch();
    }
}

/// Reads the other hosts' shares into the catalog.
struct Reader {
    host: String,
    seal: Arc<Seal>,
    catalog: Arc<Catalog>,
    registry: Weak<Registry>,
}

impl Reader {
    async fn read(self, mut watch: kv::Watch) {
        let own = key(&self.host);
        while let Some(entry) = watch.next().await {
            if self.registry.strong_count() == 0 {
                return;
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster's catalog");
                    continue;
                }
            };
            if entry.key == own {
                continue;
            }
            let changed = match entry.operation {
                // Only a host writes a share; a deletion is nobody's word,
                // but a purged share is gone all the same.
                kv::Operation::Delete | kv::Operation::Purge => {
                    let host = entry.key.strip_prefix("host.").unwrap_or(&entry.key);
                    self.catalog.forget(host)
                }
                kv::Operation::Put => match self.opened(&entry) {
                    Some(published) => {
                        let host = entry.key.strip_prefix("host.").unwrap_or(&entry.key);
                        let digest = digest(&published.owners);
                        // Written again unchanged (every refresh): nothing
                        // to compile again.
                        match self.catalog.renew(host, &published, digest) {
                            Some(changed) => changed,
                            None => match compiled(published).await {
                                Some((published, ops)) => {
                                    self.catalog.take(host.to_owned(), &published, digest, ops)
                                }
                                None => false,
                            },
                        }
                    }
                    None => {
                        seal::refused("a catalog share", seal::Unsealed::Forged);
                        false
                    }
                },
            };
            if changed {
                touch(&self.registry);
            }
        }
    }

    /// The share `entry` holds, if a host of the cluster sealed it, it is
    /// within bounds, and it was written lately.
    fn opened(&self, entry: &kv::Entry) -> Option<Published> {
        if entry.value.len() > MAX_SHARE_BYTES * 2 {
            return None;
        }
        let at = entry.value.iter().position(|&b| b == b'\n')?;
        let (tag, json) = (&entry.value[..at], &entry.value[at + 1..]);
        if !self
            .seal
            .is_kept(&entry.key, json, std::str::from_utf8(tag).ok()?)
        {
            return None;
        }
        let published: Published = serde_json::from_slice(json).ok()?;
        let age = seal::now_ms().saturating_sub(published.at_ms);
        (u128::from(age) < (FORGET + SKEW).as_millis()).then_some(published)
    }
}

/// `published`'s operations, their input schemas compiled (off the async
/// workers) for the listings that check inputs.
async fn compiled(
    published: Published,
) -> Option<(Published, Vec<(Option<String>, Arc<Operation>)>)> {
    tokio::task::spawn_blocking(move || {
        let mut ops = Vec::new();
        for owned in &published.owners {
            for spec in &owned.operations {
                match Operation::compile(spec.clone(), Handler::Elsewhere) {
                    Ok(op) => ops.push((owned.tenant.clone(), Arc::new(op))),
                    Err(e) => tracing::debug!(
                        operation = %spec.name,
                        error = %e,
                        "a listed operation's schema does not compile here"
                    ),
                }
            }
        }
        (published, ops)
    })
    .await
    .ok()
}
