//! `wasi:keyvalue` (store, atomics, batch) over a [`Keyspace`]: each plugin
//! sees the key space of the tenant it runs for, within its quota. Without
//! a grant, `open` answers `access-denied`.

mod keyspace;
mod store;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::bindings::wasi::keyvalue::store::{Error, KeyResponse};
use super::bindings::wasi::keyvalue::{atomics, batch, store as wit};
use super::denied::{Asked, Denial};
use crate::call::{HostCall, Meter, cut};
pub use keyspace::{KeyPage, Keyspace, LocalKeyspace};
pub use store::{
    Change, KvError, KvStore, MAX_BUCKET_NAME, MAX_KEY, PAGE, Quota, Space, check_bucket_name,
    check_key, incremented,
};

/// A key-value store granted to a plugin, with its quota per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KeyvalueGrant {
    /// Bytes of keys and values together.
    pub max_bytes: u64,
    /// Keys, all buckets together.
    pub max_keys: u64,
}

impl Default for KeyvalueGrant {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            max_keys: 100_000,
        }
    }
}

/// An open bucket: a name inside the plugin's key space.
#[derive(Debug)]
pub struct Bucket {
    name: String,
    space: Space,
    quota: Quota,
    kv: Arc<dyn Keyspace>,
    /// The call's meter, which counts each operation.
    meter: Arc<Meter>,
}

/// The key-value store as one call of a plugin sees it.
#[derive(Debug)]
pub struct KeyvalueState {
    /// The quota, when a store is granted.
    grant: Option<KeyvalueGrant>,
    /// The host's key spaces, when it has them.
    kv: Option<Arc<dyn Keyspace>>,
    /// Whose keys the call reads and writes: the tenant it runs for, and
    /// the plugin.
    tenant: Arc<str>,
    plugin: Arc<str>,
    denial: Denial,
    meter: Arc<Meter>,
}

impl KeyvalueState {
    pub(super) fn new(
        grant: Option<KeyvalueGrant>,
        kv: Option<Arc<dyn Keyspace>>,
        tenant: Arc<str>,
        plugin: Arc<str>,
        denial: Denial,
        meter: Arc<Meter>,
    ) -> Self {
        Self {
            grant,
            kv,
            denial,
            tenant,
            plugin,
            meter,
        }
    }
}

/// A call's key-value state with the table its buckets live in: what the
/// `wasi:keyvalue` host traits are implemented on.
#[derive(Debug)]
pub struct KeyvalueView<'a> {
    state: &'a mut KeyvalueState,
    table: &'a mut ResourceTable,
}

impl KeyvalueView<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<&Bucket, Error> {
        self.table
            .get(bucket)
            .map_err(|e| Error::Other(format!("no such bucket: {e}")))
    }
}

struct Keyvalue;

impl HasData for Keyvalue {
    type Data<'a> = KeyvalueView<'a>;
}

pub(super) fn add_to_linker<T: super::View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn view<T: super::View>(store: &mut T) -> KeyvalueView<'_> {
        let (capabilities, table) = store.capabilities();
        KeyvalueView {
            state: &mut capabilities.keyvalue,
            table,
        }
    }
    wit::add_to_linker::<T, Keyvalue>(linker, view)?;
    atomics::add_to_linker::<T, Keyvalue>(linker, view)?;
    batch::add_to_linker::<T, Keyvalue>(linker, view)
}

/// Runs `op` on the bucket's key space, counted as one host call.
async fn run<T>(
    bucket: &Bucket,
    op: impl FnOnce(&dyn Keyspace, Space, String, Quota) -> BoxFuture<'static, Result<T, KvError>>,
) -> Result<T, Error> {
    bucket.meter.host_call(HostCall::Keyvalue);
    perform(bucket, op).await
}

/// Runs `op` on the bucket's key space, uncounted: a part of a batch. A
/// storage failure is logged and told to the guest without its cause.
async fn perform<T>(
    bucket: &Bucket,
    op: impl FnOnce(&dyn Keyspace, Space, String, Quota) -> BoxFuture<'static, Result<T, KvError>>,
) -> Result<T, Error> {
    let done = op(
        &*bucket.kv,
        bucket.space.clone(),
        bucket.name.clone(),
        bucket.quota,
    )
    .await;
    done.map_err(|e| match e {
        KvError::Storage(cause) => {
            // The cause may name host paths: logged, not shown.
            let space = &bucket.space;
            tracing::error!(tenant = %space.tenant, plugin = %space.plugin, "keyvalue storage failed: {cause}");
            Error::Other("keyvalue storage failed; the host logged the cause".into())
        }
        e => Error::Other(e.to_string()),
    })
}

impl wit::Host for KeyvalueView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        let (Some(grant), Some(kv)) = (self.state.grant, self.state.kv.clone()) else {
            self.state
                .denial
                .report(Asked::Bucket(cut(&identifier, 64).to_owned()));
            return Err(Error::AccessDenied);
        };
        check_bucket_name(&identifier).map_err(|e| Error::Other(e.to_string()))?;
        let bucket = Bucket {
            name: identifier,
            space: Space {
                tenant: self.state.tenant.to_string(),
                plugin: self.state.plugin.to_string(),
            },
            quota: Quota {
                max_bytes: grant.max_bytes,
                max_keys: grant.max_keys,
            },
            kv,
            meter: self.state.meter.clone(),
        };
        self.table
            .push(bucket)
            .map_err(|e| Error::Other(format!("cannot open a bucket: {e}")))
    }
}

impl wit::HostBucket for KeyvalueView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let bucket = self.bucket(&bucket)?;
        run(bucket, |kv, space, name, _| kv.get(space, name, key)).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        run(bucket, |kv, space, name, quota| {
            kv.set(space, name, key, value, quota)
        })
        .await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        run(bucket, |kv, space, name, _| kv.delete(space, name, key)).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let bucket = self.bucket(&bucket)?;
        let value = run(bucket, |kv, space, name, _| kv.get(space, name, key)).await?;
        Ok(value.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<KeyResponse, Error> {
        let bucket = self.bucket(&bucket)?;
        let (keys, cursor) = run(bucket, |kv, space, name, _| {
            kv.list_keys(space, name, cursor.unwrap_or(0))
        })
        .await?;
        Ok(KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyvalueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Error> {
        let bucket = self.bucket(&bucket)?;
        run(bucket, |kv, space, name, quota| {
            kv.increment(space, name, key, delta, quota)
        })
        .await
    }
}

impl batch::Host for KeyvalueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let bucket = self.bucket(&bucket)?;
        // A batch is one host call.
        bucket.meter.host_call(HostCall::Keyvalue);
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = perform(bucket, |kv, space, name, _| {
                kv.get(space, name, key.clone())
            })
            .await?;
            values.push(value.map(|value| (key, value)));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        // A batch is one host call.
        bucket.meter.host_call(HostCall::Keyvalue);
        for (key, value) in key_values {
            perform(bucket, |kv, space, name, quota| {
                kv.set(space, name, key, value, quota)
            })
            .await?;
        }
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        // A batch is one host call.
        bucket.meter.host_call(HostCall::Keyvalue);
        for key in keys {
            perform(bucket, |kv, space, name, _| kv.delete(space, name, key)).await?;
        }
        Ok(())
    }
}
