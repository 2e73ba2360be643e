//! Plugins installed once, served everywhere: a change made through one
//! host's API is kept in JetStream, and every host of the cluster applies
//! it.
//!
//! Components go to the object store `opbox-<cluster>-plugins`, by digest;
//! each plugin's record (its place, digest and settings) to the key-value
//! bucket of the same name, under `shared.<name>` or
//! `tenant.<tenant>.<name>`; a removal writes a record with no plugin in
//! it. Every host watches the bucket from the last value of each key: a
//! host that joins late, or comes back, catches up with every plugin
//! installed meanwhile.
//!
//! Each record is sealed with the cluster's key (`seal.rs`), over its key
//! and its bytes, and names the component by digest: a record nobody with
//! the key wrote, and a key deleted or purged by anyone, change nothing.
//! A value is the seal in hex, a newline, then the record's JSON.

use std::sync::Arc;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::seal::Seal;
use crate::plugins::{Change, Plugins, WeakPlugins};
use crate::store::Installed;

/// A plugin's record as the cluster keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The host that made the change, which has applied it already.
    origin: String,
    /// What its store keeps; `None`: the plugin was removed.
    installed: Option<Installed>,
}

/// The cluster's plugin store.
#[derive(Clone)]
pub(super) struct Distribution {
    records: kv::Store,
    components: object_store::ObjectStore,
    /// This host, for the records it writes.
    host: String,
    /// Seals the records this host writes, and tells the others' apart.
    seal: Arc<Seal>,
}

impl Distribution {
    /// The cluster's buckets, made if they are not there yet; `None`, with
    /// a warning, when the NATS server has no JetStream.
    pub(super) async fn open(
        client: &async_nats::Client,
        cluster: &str,
        host: String,
        seal: Arc<Seal>,
    ) -> Option<Self> {
        let js = jetstream::new(client.clone());
        let bucket = bucket_name(cluster);
        let records = js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "opbox plugins: records by place".into(),
                history: 1,
                ..Default::default()
            })
            .await;
        let components = match js.get_object_store(&bucket).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("opbox plugins: components by digest".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        };
        match (records, components) {
            (Ok(records), Ok(components)) => Some(Self {
                records,
                components,
                host,
                seal,
            }),
            (records, components) => {
                let reason = records
                    .err()
                    .map(|e| e.to_string())
                    .or(components.err())
                    .unwrap_or_default();
                tracing::warn!(
                    %reason,
                    "plugins installed here are not passed to the cluster: no JetStream"
                );
                None
            }
        }
    }

    /// Passes on the changes made through `plugins`' API (`told`: from
    /// [`listen`]), and applies every change made elsewhere; components
    /// larger than `max_bytes` are not taken.
    pub(super) async fn start(
        self,
        plugins: WeakPlugins,
        mut told: mpsc::UnboundedReceiver<Change>,
        max_bytes: u64,
    ) {
        let outbound = self.clone();
        tokio::spawn(async move {
            // One at a time, in the order they were made.
            while let Some(change) = told.recv().await {
                if let Err(e) = outbound.publish(change).await {
                    tracing::warn!(error = %e, "cannot pass a plugin change to the cluster");
                }
            }
        });
        let mut watch = match self.records.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the cluster's plugins");
                return;
            }
        };
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                // The host is gone: so is what it serves.
                let Ok(plugins) = plugins.upgrade() else {
                    return;
                };
                match entry {
                    Ok(entry) => self.apply(&plugins, entry, max_bytes).await,
                    Err(e) => tracing::warn!(error = %e, "cannot read the cluster's plugins"),
                }
            }
        });
    }

    async fn publish(&self, change: Change) -> Result<(), String> {
        match change {
            Change::Put { record, wasm } => {
                if self.components.info(&record.digest).await.is_err() {
                    let mut bytes: &[u8] = &wasm;
                    self.components
                        .put(record.digest.as_str(), &mut bytes)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let key = key(record.tenant.as_deref(), &record.name);
                self.put(key, Some(record)).await?;
            }
            Change::Removed { tenant, name } => {
                self.put(key(tenant.as_deref(), &name), None).await?;
            }
        }
        Ok(())
    }

    /// Writes `installed` (`None`: removed) under `key`, sealed.
    async fn put(&self, key: String, installed: Option<Installed>) -> Result<(), String> {
        let record = Record {
            origin: self.host.clone(),
            installed,
        };
        let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let mut value = self.seal.seal_kept(&key, &json).into_bytes();
        value.push(b'\n');
        value.extend_from_slice(&json);
        self.records
            .put(key, value.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The record `entry` holds, if a host of the cluster sealed it.
    fn unsealed(&self, entry: &kv::Entry) -> Option<Record> {
        let at = entry.value.iter().position(|&b| b == b'\n')?;
        let (seal, json) = (&entry.value[..at], &entry.value[at + 1..]);
        let seal = std::str::from_utf8(seal).ok()?;
        if !self.seal.is_kept(&entry.key, json, seal) {
            return None;
        }
        serde_json::from_slice(json).ok()
    }

    /// Applies one record (or a deletion) here, unless this host made it.
    async fn apply(&self, plugins: &Plugins, entry: kv::Entry, max_bytes: u64) {
        if entry.operation != kv::Operation::Put {
            // A host removes by writing a sealed record: a deletion is
            // nobody's word.
            tracing::warn!(key = %entry.key, "ignored a plugin record deleted outside the cluster's hosts");
            return;
        }
        let Some(record) = self.unsealed(&entry) else {
            super::seal::refused("a plugin record", super::seal::Unsealed::Forged);
            return;
        };
        if record.origin == self.host {
            return;
        }
        let result = match record.installed {
            Some(installed) => {
                let digest = installed.digest.clone();
                plugins
                    .apply_put(installed, async || self.component(&digest, max_bytes).await)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => match place(&entry.key) {
                Some((tenant, name)) => plugins
                    .apply_remove(tenant.as_deref(), &name)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(false),
            },
        };
        match result {
            Ok(true) => {
                tracing::info!(key = %entry.key, "applied a plugin change from the cluster")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "cannot apply a plugin change from the cluster")
            }
        }
    }

    /// The component of `digest`, at most `max_bytes`.
    async fn component(&self, digest: &str, max_bytes: u64) -> Result<Vec<u8>, String> {
        let object = self
            .components
            .get(digest)
            .await
            .map_err(|e| e.to_string())?;
        let mut wasm = Vec::new();
        object
            .take(max_bytes + 1)
            .read_to_end(&mut wasm)
            .await
            .map_err(|e| e.to_string())?;
        if wasm.len() as u64 > max_bytes {
            return Err(format!("the component is larger than {max_bytes} bytes"));
        }
        if crate::runtime::digest(&wasm) != digest {
            return Err("the component does not match its digest".into());
        }
        Ok(wasm)
    }
}

/// The changes made through `plugins`' API from now on, queued until the
/// cluster's plugin store is open.
pub(super) fn listen(plugins: &Plugins) -> mpsc::UnboundedReceiver<Change> {
    let (changes, told) = mpsc::unbounded_channel();
    plugins.on_change(Arc::new(move |change| {
        let _ = changes.send(change);
    }));
    told
}

/// The buckets' name: `opbox-<cluster>-plugins`.
fn bucket_name(cluster: &str) -> String {
    super::bucket_name(cluster, "plugins")
}

/// A plugin's key: `shared.<name>` or `tenant.<tenant>.<name>`, each part
/// escaped to what a key may hold (`=XX` for any other byte).
fn key(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        None => format!("shared.{}", escape(name)),
        Some(tenant) => format!("tenant.{}.{}", escape(tenant), escape(name)),
    }
}

/// The place a key names.
fn place(key: &str) -> Option<(Option<String>, String)> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts[..] {
        ["shared", name] => Some((None, unescape(name)?)),
        ["tenant", tenant, name] => Some((Some(unescape(tenant)?), unescape(name)?)),
        _ => None,
    }
}

fn escape(text: &str) -> String {
    super::wire::escape(text, '=')
}

fn unescape(token: &str) -> Option<String> {
    super::wire::unescape(token, '=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_one_place_and_read_back() {
        for (tenant, name) in [
            (None, "notes"),
            (Some("acme"), "notes"),
            (Some("a.b"), "x=y"),
            (Some(""), "ü"),
        ] {
            let key = key(tenant, name);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(
                place(&key),
                Some((tenant.map(str::to_owned), name.to_owned()))
            );
        }
        assert_eq!(place("tenant.a"), None);
        assert_eq!(bucket_name("prod.eu"), "opbox-prod_eu-plugins");
    }
}
