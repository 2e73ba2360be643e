//! A persistent key-value store of the plugin's own (`wasi:keyvalue`).
//!
//! The operator grants it per plugin, with a quota:
//!
//! ```toml
//! [[plugins]]
//! path = "kv.wasm"
//! [plugins.grants.keyvalue]
//! max_bytes = 16777216     # keys and values, per tenant (the default)
//! max_keys = 100000
//! ```
//!
//! Each tenant calling the plugin sees its own keys. Every write is on disk
//! before it returns.
//!
//! ```ignore
//! let bucket = opbox_sdk::keyvalue::open("default")?;
//! bucket.set("greeting", b"hello")?;
//! let hits = bucket.increment("hits", 1)?;
//! ```
//!
//! Without a grant, [`open`] fails with the code `KEYVALUE_DENIED`; a write
//! past the quota fails with `KEYVALUE_QUOTA`.

use crate::__private::wasi_keyvalue::{atomics, store};
use crate::{Error, Result};

/// An open bucket: a set of keys inside the plugin's store.
#[derive(Debug)]
pub struct Bucket(store::Bucket);

/// Opens the bucket `name`, creating it on first use.
pub fn open(name: &str) -> Result<Bucket> {
    store::open(name).map(Bucket).map_err(error)
}

impl Bucket {
    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.get(key).map_err(error)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.0.set(key, value).map_err(error)
    }

    /// Removes `key`; removing a missing key succeeds.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).map_err(error)
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> Result<bool> {
        self.0.exists(key).map_err(error)
    }

    /// Every key of the bucket, in order.
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.0.list_keys(cursor).map_err(error)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the decimal number at `key` (0 when missing),
    /// atomically, and returns the result.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        atomics::increment(&self.0, key, delta).map_err(error)
    }
}

fn error(e: store::Error) -> Error {
    match e {
        store::Error::AccessDenied => Error::new(
            "KEYVALUE_DENIED",
            "denied: wasi:keyvalue is not granted to this plugin",
        ),
        store::Error::NoSuchStore => Error::new("KEYVALUE_UNAVAILABLE", "no such store"),
        store::Error::Other(message) if message.contains("quota") => {
            Error::new("KEYVALUE_QUOTA", message)
        }
        store::Error::Other(message) => Error::new("KEYVALUE_FAILED", message),
    }
}
