//! The store behind `wasi:keyvalue`: one redb database in the data
//! directory, shared by every plugin, each seeing only its own key space.
//!
//! A key space is a tenant and a plugin: a shared plugin called by two
//! tenants keeps two sets of keys, and two tenants' copies of one plugin
//! never meet. Inside it, buckets are names the plugin chooses. Every write
//! is its own transaction, committed to disk before the guest hears it
//! succeeded, so a crash loses no acknowledged write. Each key space has a
//! quota of bytes and of keys, kept in the same transactions as the writes.
//! Every byte the plugin chooses counts: each entry costs its bucket's name,
//! its key and its value, and names and keys have a length limit.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// (tenant, plugin, bucket, key) → value.
const VALUES: TableDefinition<'_, (&str, &str, &str, &str), &[u8]> = TableDefinition::new("values");
/// (tenant, plugin) → (bytes, keys) in use.
const USAGE: TableDefinition<'_, (&str, &str), (u64, u64)> = TableDefinition::new("usage");

/// Keys listed per `list-keys` page.
pub const PAGE: usize = 1000;

/// The longest bucket name, in bytes.
pub const MAX_BUCKET_NAME: usize = 256;

/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;

/// Whose keys these are: a tenant and a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// The tenant the calls run for.
    pub tenant: String,
    /// The plugin's namespace.
    pub plugin: String,
}

/// How much one key space may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of keys and values together.
    pub max_bytes: u64,
    /// Keys, all buckets together.
    pub max_keys: u64,
}

/// Why a keyvalue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The write would take the key space past its quota.
    #[error("the keyvalue quota is used up: {limit} = {value}")]
    Quota {
        /// `max_bytes` or `max_keys`.
        limit: &'static str,
        /// The quota.
        value: u64,
    },
    /// A bucket name or a key is longer than its limit.
    #[error("the {what} is {len} bytes long, more than the limit of {limit}")]
    TooLong {
        /// `bucket name` or `key`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// `increment` met a value that is not a decimal `u64`, or overflowed.
    #[error("{0}")]
    NotANumber(String),
    /// The database failed; the message is for logs.
    #[error("keyvalue storage failed: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

/// Refuses a bucket name over [`MAX_BUCKET_NAME`] bytes.
pub fn check_bucket_name(name: &str) -> Result<(), KvError> {
    check_len("bucket name", name, MAX_BUCKET_NAME)
}

fn check_len(what: &'static str, text: &str, limit: usize) -> Result<(), KvError> {
    if text.len() > limit {
        return Err(KvError::TooLong {
            what,
            len: text.len(),
            limit,
        });
    }
    Ok(())
}

/// The database.
#[derive(Debug)]
pub struct KvStore {
    db: Database,
}

impl KvStore {
    /// Opens (or creates) the database at `path`, recovering from a crash
    /// if the last process died mid-write.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        let db = Database::create(path).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(VALUES).map_err(storage)?;
        txn.open_table(USAGE).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self { db })
    }

    /// The value of `key`.
    pub fn get(&self, space: &Space, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let values = txn.open_table(VALUES).map_err(storage)?;
        let value = values
            .get((&*space.tenant, &*space.plugin, bucket, key))
            .map_err(storage)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Sets `key` to `value`, within `quota`.
    pub fn set(
        &self,
        space: &Space,
        bucket: &str,
        key: &str,
        value: &[u8],
        quota: Quota,
    ) -> Result<(), KvError> {
        check_key(bucket, key)?;
        self.write(space, quota, |values| {
            let old = values
                .insert((&*space.tenant, &*space.plugin, bucket, key), value)
                .map_err(storage)?;
            Ok(Change::of(
                bucket,
                key,
                old.map(|v| v.value().len()),
                Some(value.len()),
            ))
        })
    }

    /// Removes `key`; removing a missing key is not an error.
    pub fn delete(&self, space: &Space, bucket: &str, key: &str) -> Result<(), KvError> {
        self.write(space, Quota::UNLIMITED, |values| {
            let old = values
                .remove((&*space.tenant, &*space.plugin, bucket, key))
                .map_err(storage)?;
            Ok(Change::of(bucket, key, old.map(|v| v.value().len()), None))
        })
    }

    /// Adds `delta` to the decimal number stored at `key` (0 when missing),
    /// atomically, and returns the new number.
    pub fn increment(
        &self,
        space: &Space,
        bucket: &str,
        key: &str,
        delta: u64,
        quota: Quota,
    ) -> Result<u64, KvError> {
        check_key(bucket, key)?;
        let mut result = 0;
        self.write(space, quota, |values| {
            let full_key = (&*space.tenant, &*space.plugin, bucket, key);
            let old = values
                .get(full_key)
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            result = incremented(key, old.as_deref(), delta)?;
            let new = result.to_string();
            values.insert(full_key, new.as_bytes()).map_err(storage)?;
            Ok(Change::of(
                bucket,
                key,
                old.map(|v| v.len()),
                Some(new.len()),
            ))
        })?;
        Ok(result)
    }

    /// Up to [`PAGE`] keys of `bucket` in order, from the `cursor`-th on,
    /// and the cursor of the next page if there is one.
    pub fn list_keys(
        &self,
        space: &Space,
        bucket: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let values = txn.open_table(VALUES).map_err(storage)?;
        let start = (&*space.tenant, &*space.plugin, bucket, "");
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut keys = Vec::new();
        let mut more = false;
        for entry in values.range(start..).map_err(storage)?.skip(skip) {
            let (full_key, _) = entry.map_err(storage)?;
            let (tenant, plugin, in_bucket, key) = full_key.value();
            if (tenant, plugin, in_bucket) != (&*space.tenant, &*space.plugin, bucket) {
                break;
            }
            if keys.len() == PAGE {
                more = true;
                break;
            }
            keys.push(key.to_owned());
        }
        let next = more.then(|| cursor + keys.len() as u64);
        Ok((keys, next))
    }

    /// Bytes and keys `space` holds.
    pub fn usage(&self, space: &Space) -> Result<(u64, u64), KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let usage = txn.open_table(USAGE).map_err(storage)?;
        let used = usage
            .get((&*space.tenant, &*space.plugin))
            .map_err(storage)?;
        Ok(used.map_or((0, 0), |u| u.value()))
    }

    /// Runs `apply` in one write transaction, accounts for the change it
    /// reports, checks `quota` and commits durably; a refused or failed
    /// write changes nothing.
    fn write(
        &self,
        space: &Space,
        quota: Quota,
        apply: impl FnOnce(
            &mut redb::Table<
                '_,
                (&'static str, &'static str, &'static str, &'static str),
                &'static [u8],
            >,
        ) -> Result<Change, KvError>,
    ) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut values = txn.open_table(VALUES).map_err(storage)?;
            let change = apply(&mut values)?;
            let mut usage = txn.open_table(USAGE).map_err(storage)?;
            let usage_key = (&*space.tenant, &*space.plugin);
            let used = usage
                .get(usage_key)
                .map_err(storage)?
                .map_or((0, 0), |u| u.value());
            let used = quota.admit(used, &change)?;
            usage.insert(usage_key, used).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }
}

impl Quota {
    /// No limit: for writes that only give room back.
    pub const UNLIMITED: Self = Self {
        max_bytes: u64::MAX,
        max_keys: u64::MAX,
    };

    /// The usage `used` (bytes, keys) becomes with `change`, refused when
    /// the change grows it past this quota.
    pub fn admit(self, used: (u64, u64), change: &Change) -> Result<(u64, u64), KvError> {
        let bytes = used.0.saturating_add_signed(change.bytes);
        let keys = used.1.saturating_add_signed(change.keys);
        if change.bytes > 0 && bytes > self.max_bytes {
            return Err(KvError::Quota {
                limit: "max_bytes",
                value: self.max_bytes,
            });
        }
        if change.keys > 0 && keys > self.max_keys {
            return Err(KvError::Quota {
                limit: "max_keys",
                value: self.max_keys,
            });
        }
        Ok((bytes, keys))
    }
}

/// What a write changes in a key space's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    bytes: i64,
    keys: i64,
}

impl Change {
    /// The change of replacing a value of `old` bytes at `key` of `bucket`
    /// by one of `new` bytes (`None`: no value). An entry costs its
    /// bucket's name, its key and its value.
    pub fn of(bucket: &str, key: &str, old: Option<usize>, new: Option<usize>) -> Self {
        let size = |len: Option<usize>| {
            len.map_or(0, |len| {
                i64::try_from(bucket.len() + key.len() + len).unwrap_or(i64::MAX)
            })
        };
        Self {
            bytes: size(new) - size(old),
            keys: i64::from(new.is_some()) - i64::from(old.is_some()),
        }
    }

    /// Whether it takes more bytes or keys.
    pub fn grows(&self) -> bool {
        self.bytes > 0 || self.keys > 0
    }

    /// The change that takes this one back.
    #[must_use]
    pub fn undone(&self) -> Self {
        Self {
            bytes: -self.bytes,
            keys: -self.keys,
        }
    }
}

/// Refuses a bucket name or key over its length limit.
pub fn check_key(bucket: &str, key: &str) -> Result<(), KvError> {
    check_bucket_name(bucket)?;
    check_len("key", key, MAX_KEY)
}

/// The number `increment` stores at `key` when `old` is there (0 when
/// missing): `old` must be a decimal `u64` and the sum must fit one.
pub fn incremented(key: &str, old: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
    let current = match old {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                KvError::NotANumber(format!("the value of `{key}` is not a decimal u64"))
            })?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::NotANumber(format!("incrementing `{key}` overflows a u64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(tenant: &str) -> Space {
        Space {
            tenant: tenant.into(),
            plugin: "notes".into(),
        }
    }

    const ROOMY: Quota = Quota {
        max_bytes: 1 << 20,
        max_keys: 100,
    };

    #[test]
    fn values_survive_reopening_and_spaces_do_not_meet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = KvStore::open(&path).unwrap();
            kv.set(&space("a"), "b", "k", b"one", ROOMY).unwrap();
            kv.set(&space("b"), "b", "k", b"two", ROOMY).unwrap();
        }
        let kv = KvStore::open(&path).unwrap();
        assert_eq!(kv.get(&space("a"), "b", "k").unwrap().unwrap(), b"one");
        assert_eq!(kv.get(&space("b"), "b", "k").unwrap().unwrap(), b"two");
        assert_eq!(kv.get(&space("c"), "b", "k").unwrap(), None);
        assert_eq!(kv.get(&space("a"), "other", "k").unwrap(), None);
    }

    #[test]
    fn quotas_count_bytes_and_keys_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap();
        let quota = Quota {
            max_bytes: 12,
            max_keys: 2,
        };
        let a = space("a");
        kv.set(&a, "b", "k1", b"12", quota).unwrap(); // 5 bytes: bucket, key, value
        let refused = kv.set(&a, "b", "k2", b"12345", quota).unwrap_err(); // 13 > 12
        assert!(matches!(
            refused,
            KvError::Quota {
                limit: "max_bytes",
                ..
            }
        ));
        assert_eq!(kv.get(&a, "b", "k2").unwrap(), None);
        kv.set(&a, "b", "k2", b"1", quota).unwrap(); // 9 bytes, 2 keys
        let refused = kv.set(&a, "b", "k3", b"", quota).unwrap_err(); // 12 bytes, 3 keys
        assert!(matches!(
            refused,
            KvError::Quota {
                limit: "max_keys",
                ..
            }
        ));
        // Replacing and deleting give room back.
        kv.set(&a, "b", "k1", b"1", quota).unwrap();
        assert_eq!(kv.usage(&a).unwrap(), (8, 2));
        kv.delete(&a, "b", "k1").unwrap();
        kv.delete(&a, "b", "missing").unwrap();
        assert_eq!(kv.usage(&a).unwrap(), (4, 1));
    }

    #[test]
    fn bucket_names_count_and_names_and_keys_have_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap();
        let quota = Quota {
            max_bytes: 1000,
            max_keys: 100,
        };
        let a = space("a");
        let bucket = "b".repeat(MAX_BUCKET_NAME);
        for n in 0..3 {
            kv.set(&a, &bucket, &n.to_string(), b"", quota).unwrap();
        }
        assert_eq!(kv.usage(&a).unwrap(), (3 * 257, 3));
        let refused = kv.set(&a, &bucket, "3", b"", quota).unwrap_err();
        assert!(matches!(
            refused,
            KvError::Quota {
                limit: "max_bytes",
                ..
            }
        ));
        let long = "b".repeat(MAX_BUCKET_NAME + 1);
        let refused = kv.set(&a, &long, "k", b"", quota).unwrap_err();
        assert!(matches!(
            refused,
            KvError::TooLong {
                what: "bucket name",
                ..
            }
        ));
        let refused = kv
            .increment(&a, "b", &"k".repeat(MAX_KEY + 1), 1, quota)
            .unwrap_err();
        assert!(matches!(refused, KvError::TooLong { what: "key", .. }));
    }

    #[test]
    fn increments_count_from_zero_and_refuse_what_is_not_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap();
        let a = space("a");
        assert_eq!(kv.increment(&a, "b", "n", 5, ROOMY).unwrap(), 5);
        assert_eq!(kv.increment(&a, "b", "n", 2, ROOMY).unwrap(), 7);
        assert_eq!(kv.get(&a, "b", "n").unwrap().unwrap(), b"7");
        kv.set(&a, "b", "s", b"seven", ROOMY).unwrap();
        assert!(matches!(
            kv.increment(&a, "b", "s", 1, ROOMY),
            Err(KvError::NotANumber(_))
        ));
        kv.set(&a, "b", "max", u64::MAX.to_string().as_bytes(), ROOMY)
            .unwrap();
        assert!(matches!(
            kv.increment(&a, "b", "max", 1, ROOMY),
            Err(KvError::NotANumber(_))
        ));
    }

    #[test]
    fn keys_are_listed_in_pages_within_their_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap();
        let a = space("a");
        let quota = Quota {
            max_bytes: u64::MAX,
            max_keys: u64::MAX,
        };
        for n in 0..PAGE + 5 {
            kv.set(&a, "b", &format!("k{n:05}"), b"", quota).unwrap();
        }
        kv.set(&a, "c", "elsewhere", b"", quota).unwrap();
        kv.set(&space("z"), "b", "k99999", b"", quota).unwrap();
        let (first, next) = kv.list_keys(&a, "b", 0).unwrap();
        assert_eq!(first.len(), PAGE);
        assert_eq!(first[0], "k00000");
        let (rest, after) = kv.list_keys(&a, "b", next.unwrap()).unwrap();
        assert_eq!(rest, ["k01000", "k01001", "k01002", "k01003", "k01004"]);
        assert_eq!(after, None);
    }
}
