//! Where the key spaces behind `wasi:keyvalue` live: this host's own
//! database ([`LocalKeyspace`]), or one its cluster shares (the cluster
//! module's). Both keep the same rules: a key space per tenant and plugin,
//! its quota, the length limits, and a write acknowledged only once it is
//! stored durably.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::store::{KvError, KvStore, Quota, Space};

/// Keys of a bucket, and the cursor of the next page if there is one.
pub type KeyPage = (Vec<String>, Option<u64>);

/// A store of key spaces. Each method's future owns what it needs, so a
/// guest's call can wait for it without holding the store.
pub trait Keyspace: Send + Sync + std::fmt::Debug + 'static {
    /// The value at `key` of `bucket`.
    fn get(
        &self,
        space: Space,
        bucket: String,
        key: String,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>>;

    /// Sets `key` of `bucket` to `value`, within `quota`.
    fn set(
        &self,
        space: Space,
        bucket: String,
        key: String,
        value: Vec<u8>,
        quota: Quota,
    ) -> BoxFuture<'static, Result<(), KvError>>;

    /// Removes `key` of `bucket`; removing a missing key is not an error.
    fn delete(
        &self,
        space: Space,
        bucket: String,
        key: String,
    ) -> BoxFuture<'static, Result<(), KvError>>;

    /// Adds `delta` to the decimal number at `key` of `bucket` (0 when
    /// missing), atomically, within `quota`, and returns the new number.
    fn increment(
        &self,
        space: Space,
        bucket: String,
        key: String,
        delta: u64,
        quota: Quota,
    ) -> BoxFuture<'static, Result<u64, KvError>>;

    /// Up to [`super::PAGE`] keys of `bucket` in order, from the
    /// `cursor`-th on, and the cursor of the next page if there is one.
    fn list_keys(
        &self,
        space: Space,
        bucket: String,
        cursor: u64,
    ) -> BoxFuture<'static, Result<KeyPage, KvError>>;
}

/// This host's database. A write waits for the disk, so each operation
/// runs on the blocking pool: the guest's call waits for it, the executor
/// does not.
#[derive(Debug, Clone)]
pub struct LocalKeyspace {
    store: Arc<KvStore>,
}

impl LocalKeyspace {
    /// The key spaces of `store`.
    pub fn new(store: KvStore) -> Self {
        Self {
            store: Arc::new(store),
        }
    }

    fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&KvStore) -> Result<T, KvError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, KvError>> {
        let store = self.store.clone();
        async move {
            tokio::task::spawn_blocking(move || op(&store))
                .await
                .map_err(|e| KvError::Storage(e.to_string()))?
        }
        .boxed()
    }
}

impl Keyspace for LocalKeyspace {
    fn get(
        &self,
        space: Space,
        bucket: String,
        key: String,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>> {
        self.blocking(move |kv| kv.get(&space, &bucket, &key))
    }

    fn set(
        &self,
        space: Space,
        bucket: String,
        key: String,
        value: Vec<u8>,
        quota: Quota,
    ) -> BoxFuture<'static, Result<(), KvError>> {
        self.blocking(move |kv| kv.set(&space, &bucket, &key, &value, quota))
    }

    fn delete(
        &self,
        space: Space,
        bucket: String,
        key: String,
    ) -> BoxFuture<'static, Result<(), KvError>> {
        self.blocking(move |kv| kv.delete(&space, &bucket, &key))
    }

    fn increment(
        &self,
        space: Space,
        bucket: String,
        key: String,
        delta: u64,
        quota: Quota,
    ) -> BoxFuture<'static, Result<u64, KvError>> {
        self.blocking(move |kv| kv.increment(&space, &bucket, &key, delta, quota))
    }

    fn list_keys(
        &self,
        space: Space,
        bucket: String,
        cursor: u64,
    ) -> BoxFuture<'static, Result<KeyPage, KvError>> {
        self.blocking(move |kv| kv.list_keys(&space, &bucket, cursor))
    }
}
