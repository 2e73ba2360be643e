//! Precompiled plugins on disk, keyed by engine and plugin digest.
//!
//! Compiling a component takes tens of milliseconds; loading a precompiled
//! artifact takes tens of microseconds. The key has two parts: a fingerprint
//! of the engine's compilation settings (and wasmtime version), and the
//! SHA-256 of the plugin, so a changed engine or plugin never loads a stale
//! artifact. Writes are atomic: write a temporary file, then rename.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir`, created if missing.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}-{digest}.cwasm", self.engine_key))
    }

    /// The compiled component of the plugin `digest`, and its size, if the
    /// cache has a usable one.
    pub(crate) fn get(&self, engine: &Engine, digest: &str) -> Option<(Component, u64)> {
        let path = self.path(digest);
        if !path.is_file() {
            return None;
        }
        let bytes = std::fs::read(&path)
            .inspect_err(
                |e| tracing::warn!(path = %path.display(), "cannot read a cached artifact: {e}"),
            )
            .ok()?;
        deserialize_bytes(engine, &bytes)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), "ignoring unusable cached artifact: {e}")
            })
            .ok()
            .map(|component| (component, bytes.len() as u64))
    }

    /// Deletes the compiled plugin `digest`, if the cache has it.
    pub(crate) fn remove(&self, digest: &str) {
        let path = self.path(digest);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "cannot delete a cached artifact: {e}");
        }
    }

    /// Keeps `artifact`, the compiled plugin `digest`. (Artifacts are read
    /// into memory rather than mapped: a mapped file that someone truncates
    /// or rewrites in place would crash the host with SIGBUS the next time
    /// its code runs.)
    pub(crate) fn put(&self, digest: &str, artifact: &[u8]) {
        let path = self.path(digest);
        if let Err(e) = write_atomically(&path, artifact) {
            tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {e}");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[allow(unsafe_code)]
pub(super) fn deserialize_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `bytes` are an artifact `Engine::precompile_component` produced,
    // either just now or earlier into the host's own data directory under a
    // name bound to this engine's compatibility hash; wasmtime checks the
    // header (version, settings) again before using it.
    unsafe { Component::deserialize(engine, bytes) }
}
