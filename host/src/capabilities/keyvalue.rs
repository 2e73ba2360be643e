//! `wasi:keyvalue` (store, atomics, batch) over [`KvStore`]: each plugin
//! sees the key space of the tenant it runs for, within its quota. Without
//! a grant, `open` answers `access-denied`.
//!
//! The database is used from a blocking thread, since a write waits for the
//! disk; the guest's call waits for it, the executor does not.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::keyvalue::{KvError, KvStore, Quota, Space};
use crate::runtime::StoreState;
use crate::runtime::bindings::wasi::keyvalue::store::{Error, KeyResponse};
use crate::runtime::bindings::wasi::keyvalue::{atomics, batch, store};

/// An open bucket: a name inside the plugin's key space.
#[derive(Debug)]
pub struct Bucket {
    name: String,
    space: Space,
    quota: Quota,
    kv: Arc<KvStore>,
}

impl StoreState {
    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<&Bucket, Error> {
        self.table
            .get(bucket)
            .map_err(|e| Error::Other(format!("no such bucket: {e}")))
    }
}

/// Runs `op` on the bucket's store from a blocking thread.
async fn blocking<T: Send + 'static>(
    bucket: &Bucket,
    op: impl FnOnce(&KvStore, &Space, &str, Quota) -> Result<T, KvError> + Send + 'static,
) -> Result<T, Error> {
    let (kv, space, name, quota) = (
        bucket.kv.clone(),
        bucket.space.clone(),
        bucket.name.clone(),
        bucket.quota,
    );
    let done =
        tokio::task::spawn_blocking(move || op(&kv, &space, &name, quota).map_err(|e| (e, space)))
            .await
            .map_err(|_| Error::Other("keyvalue storage failed".into()))?;
    done.map_err(|(e, space)| match e {
        KvError::Storage(cause) => {
            // The cause may name host paths: logged, not shown.
            tracing::error!(tenant = %space.tenant, plugin = %space.plugin, "keyvalue storage failed: {cause}");
            Error::Other("keyvalue storage failed; the host logged the cause".into())
        }
        e => Error::Other(e.to_string()),
    })
}

impl store::Host for StoreState {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        let (Some(grant), Some(kv)) = (self.grants.keyvalue, self.kv.clone()) else {
            return Err(Error::AccessDenied);
        };
        crate::keyvalue::check_bucket_name(&identifier).map_err(|e| Error::Other(e.to_string()))?;
        let bucket = Bucket {
            name: identifier,
            space: Space {
                tenant: self.tenant.clone(),
                plugin: self.plugin.to_string(),
            },
            quota: Quota {
                max_bytes: grant.max_bytes,
                max_keys: grant.max_keys,
            },
            kv,
        };
        self.table
            .push(bucket)
            .map_err(|e| Error::Other(format!("cannot open a bucket: {e}")))
    }
}

impl store::HostBucket for StoreState {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, _| kv.get(space, name, &key)).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, quota| {
            kv.set(space, name, &key, &value, quota)
        })
        .await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, _| {
            kv.delete(space, name, &key)
        })
        .await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, _| {
            kv.get(space, name, &key).map(|v| v.is_some())
        })
        .await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<KeyResponse, Error> {
        let bucket = self.bucket(&bucket)?;
        let (keys, cursor) = blocking(bucket, move |kv, space, name, _| {
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

impl atomics::Host for StoreState {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, quota| {
            kv.increment(space, name, &key, delta, quota)
        })
        .await
    }
}

impl batch::Host for StoreState {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, _| {
            keys.into_iter()
                .map(|key| Ok(kv.get(space, name, &key)?.map(|value| (key, value))))
                .collect()
        })
        .await
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, quota| {
            key_values
                .iter()
                .try_for_each(|(key, value)| kv.set(space, name, key, value, quota))
        })
        .await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&bucket)?;
        blocking(bucket, move |kv, space, name, _| {
            keys.iter().try_for_each(|key| kv.delete(space, name, key))
        })
        .await
    }
}
