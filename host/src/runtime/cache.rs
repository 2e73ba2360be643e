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

    /// The compiled component for `wasm`, from the cache when it is there.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = self.path(digest);
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cached artifact: {e}")
                }
            }
        }
        let artifact = engine.precompile_component(wasm)?;
        if let Err(e) = write_atomically(&path, &artifact) {
            tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {e}");
        }
        deserialize_bytes(engine, &artifact)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the artifact into memory rather than mapping the file: a mapped file
/// that someone truncates or rewrites in place would crash the host with
/// SIGBUS the next time its code runs.
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(path)?;
    deserialize_bytes(engine, &bytes)
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `bytes` are an artifact `Engine::precompile_component` produced,
    // either just now or earlier into the host's own data directory under a
    // name bound to this engine's compatibility hash; wasmtime checks the
    // header (version, settings) again before using it.
    unsafe { Component::deserialize(engine, bytes) }
}
