//! What the host keeps on disk: the plugin store, every plugin installed
//! into a running host, so that a restart brings it back; and the event
//! feed ([`EventLog`]).
//!
//! A component is kept once, by its SHA-256, as `blobs/<hex>.wasm`: written
//! to a temporary file, synced, renamed into place and the directory synced,
//! before anything names it. What is installed under which name, for which
//! tenant and with which settings is a record in a redb database
//! (`plugins.redb`), written in one durable transaction. The commit of that
//! transaction is the moment an install, a replace or a removal happens:
//! killed before it, the host comes back with the old record (or none);
//! after it, with the new one. Blobs no record names are deleted when the
//! store is opened.

mod events;

pub use events::{EventLog, FOLLOW_BUFFER, QUEUE, ReadError, Stored};

use std::io::Write;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The database file, in the store's directory.
const DATABASE: &str = "plugins.redb";

/// (owner, name) → the record as JSON. The owner is the tenant's id, or
/// `""` for a shared plugin (tenant ids are never empty).
const PLUGINS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("plugins");

/// One installed plugin, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Installed {
    /// The tenant that owns it; shared when `None`.
    pub tenant: Option<String>,
    /// The namespace it is mounted under.
    pub name: String,
    /// The SHA-256 of its component, in hex ([`crate::runtime::digest`]).
    pub digest: String,
    /// Its settings as the operator gave them: `limits` and `grants`, the
    /// fields of a `[[plugins]]` entry.
    pub settings: Value,
    /// When it was installed or last replaced, in milliseconds since the
    /// Unix epoch.
    pub installed_at_ms: u64,
    /// The size of its component, in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Whether it was installed by the tenant's own caller, and is held to
    /// the tenant's allowance.
    #[serde(default)]
    pub held: bool,
}

/// Why the store failed. The message may name host paths: for logs, never
/// for callers.
#[derive(Debug, thiserror::Error)]
#[error("plugin store: {0}")]
pub struct StoreError(String);

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Opens (or creates) the database at `path`. The database is locked while
/// open, and a second host given the same data directory is told so, in
/// words an operator acts on.
fn create_database(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
            "{} is open in another opbox host (or another process): stop that one, or give this \
             one a `data_dir` of its own",
            path.display()
        )),
        e => failed(e),
    })
}

/// The plugins installed into this host, on disk.
#[derive(Debug)]
pub struct PluginStore {
    db: Database,
    blobs: PathBuf,
}

impl PluginStore {
    /// Whether a store was ever created in `dir`.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DATABASE).is_file()
    }

    /// Opens (or creates) the store in `dir`, and deletes blobs that no
    /// record names (left by an install cut short).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(failed)?;
        let db = create_database(&dir.join(DATABASE))?;
        let txn = db.begin_write().map_err(failed)?;
        txn.open_table(PLUGINS).map_err(failed)?;
        txn.commit().map_err(failed)?;
        let store = Self { db, blobs };
        store.collect_garbage()?;
        Ok(store)
    }

    /// Keeps `wasm` on disk, once, and returns its digest. Returns only
    /// when the bytes are durable.
    pub fn put_blob(&self, wasm: &[u8]) -> Result<String, StoreError> {
        let digest = crate::runtime::digest(wasm);
        let path = self.blob_path(&digest);
        if path.is_file() {
            return Ok(digest);
        }
        let partial = self
            .blobs
            .join(format!("{digest}.partial-{}", std::process::id()));
        let mut file = std::fs::File::create(&partial).map_err(failed)?;
        file.write_all(wasm).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        drop(file);
        std::fs::rename(&partial, &path).map_err(failed)?;
        std::fs::File::open(&self.blobs)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)?;
        Ok(digest)
    }

    /// The component with `digest`.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        std::fs::read(self.blob_path(digest)).map_err(failed)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs.join(format!("{digest}.wasm"))
    }

    /// Records `plugin` as installed, replacing what was installed under
    /// its tenant and name; durable when this returns.
    pub fn put(&self, plugin: &Installed) -> Result<(), StoreError> {
        let record = serde_json::to_vec(plugin).map_err(failed)?;
        let txn = self.db.begin_write().map_err(failed)?;
        {
            let mut table = txn.open_table(PLUGINS).map_err(failed)?;
            table
                .insert(
                    (owner_key(plugin.tenant.as_deref()), &*plugin.name),
                    &*record,
                )
                .map_err(failed)?;
        }
        txn.commit().map_err(failed)
    }

    /// Forgets the plugin `name` of `tenant`; whether it was installed.
    pub fn remove(&self, tenant: Option<&str>, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(failed)?;
        let removed = {
            let mut table = txn.open_table(PLUGINS).map_err(failed)?;
            table
                .remove((owner_key(tenant), name))
                .map_err(failed)?
                .is_some()
        };
        txn.commit().map_err(failed)?;
        Ok(removed)
    }

    /// Every installed plugin, shared ones first, then by tenant and name.
    pub fn all(&self) -> Result<Vec<Installed>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(PLUGINS).map_err(failed)?;
        let mut plugins = Vec::new();
        for entry in table.iter().map_err(failed)? {
            let (_, record) = entry.map_err(failed)?;
            plugins.push(serde_json::from_slice(record.value()).map_err(failed)?);
        }
        Ok(plugins)
    }

    /// Deletes every blob (and temporary file) no record names; how many.
    fn collect_garbage(&self) -> Result<usize, StoreError> {
        let named: std::collections::HashSet<String> = self
            .all()?
            .into_iter()
            .map(|plugin| format!("{}.wasm", plugin.digest))
            .collect();
        let mut deleted = 0;
        for entry in std::fs::read_dir(&self.blobs).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if !named.contains(&file) {
                std::fs::remove_file(entry.path()).map_err(failed)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

fn owner_key(tenant: Option<&str>) -> &str {
    tenant.unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: Option<&str>, name: &str, digest: &str) -> Installed {
        Installed {
            tenant: tenant.map(str::to_owned),
            name: name.into(),
            digest: digest.into(),
            settings: serde_json::json!({}),
            installed_at_ms: 1,
            bytes: 9,
            held: false,
        }
    }

    #[test]
    fn a_second_host_on_the_same_data_directory_is_told_why_it_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let _first = PluginStore::open(dir.path()).unwrap();
        let second = PluginStore::open(dir.path()).unwrap_err().to_string();
        assert!(second.contains("open in another opbox host"), "{second}");
        assert!(second.contains("data_dir"), "{second}");
        let _events = EventLog::open(dir.path(), 5).unwrap();
        let events = EventLog::open(dir.path(), 5).unwrap_err().to_string();
        assert!(events.contains("open in another opbox host"), "{events}");
    }

    #[test]
    fn records_survive_reopening_and_unnamed_blobs_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = PluginStore::open(dir.path()).unwrap();
        let kept = store.put_blob(b"\0asm kept").unwrap();
        let orphan = store.put_blob(b"\0asm orphan").unwrap();
        assert_eq!(store.put_blob(b"\0asm kept").unwrap(), kept, "stored once");
        store.put(&record(None, "echo", &kept)).unwrap();
        store.put(&record(Some("acme"), "echo", &kept)).unwrap();
        drop(store);
        let store = PluginStore::open(dir.path()).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(store.blob(&kept).unwrap(), b"\0asm kept");
        assert!(store.blob(&orphan).is_err(), "an unnamed blob is collected");
        assert!(store.remove(Some("acme"), "echo").unwrap());
        assert!(!store.remove(Some("acme"), "echo").unwrap());
        assert_eq!(store.all().unwrap(), [record(None, "echo", &kept)]);
    }

    #[test]
    fn a_replace_is_one_record_changing() {
        let dir = tempfile::tempdir().unwrap();
        let store = PluginStore::open(dir.path()).unwrap();
        let (v1, v2) = (
            store.put_blob(b"v1").unwrap(),
            store.put_blob(b"v2").unwrap(),
        );
        store.put(&record(None, "echo", &v1)).unwrap();
        store.put(&record(None, "echo", &v2)).unwrap();
        assert_eq!(store.all().unwrap(), [record(None, "echo", &v2)]);
    }
}
