//! The WebAssembly runtime: with [`crate::capabilities`], the only module
//! that knows wasmtime.
//!
//! One [`Runtime`] owns one wasmtime `Engine` (pooling allocator, epoch
//! interruption, component-model async) and the `Linker` every plugin is
//! instantiated with. [`Runtime::load`] turns plugin bytes into a [`Plugin`]:
//! compiled once (or taken from the artifact cache), pre-instantiated, asked
//! to `describe` itself and checked. Each call then gets a fresh `Store` with
//! the plugin's limits; see [`Plugin::call`] and [`Plugin::subscribe`].
//! What a guest may import is linked from [`crate::capabilities`], whose
//! [`View`](crate::capabilities::View) the store's state implements.

mod busy;
mod cache;
mod compile;
mod http;
mod invoke;
mod lanes;
mod limits;
mod manifest;
mod output;
mod plugin;
mod pool;
mod raw;
mod reuse;
mod state;
mod subscription;
mod trap;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Linker;

pub(crate) use busy::Busy;
pub use compile::{CompileLimits, child_main as compile_child_main};
pub use http::{HttpBodyError, HttpRequestBody, HttpResponse, HttpResponseBody, request_body};
pub use invoke::{Invocation, InvokeError};
pub use limits::{LimitHit, PluginLimits, PluginLimitsConfig};
pub use manifest::ManifestLimits;
pub use plugin::{Counted, HTTP_OPERATION, LoadOptions, Plugin, PluginOperation};
pub use pool::{KEEP_RESIDENT_BYTES, MemoryReset};
pub use raw::{RawCall, RawOutput};
pub use reuse::ReuseConfig;
pub(crate) use state::StoreState;
pub use subscription::Subscription;

use crate::call::{SharedObserver, Unobserved};
use crate::capabilities::keyvalue::{Keyspace, KvStore, LocalKeyspace};
use crate::capabilities::{self, bindings};
use cache::ArtifactCache;
use lanes::CpuLanes;
use state::LiveCounter;

/// Settings of the engine all plugins share.
///
/// | field | default |
/// |---|---|
/// | `max_instances` | 256 instances alive at once, across all plugins |
/// | `max_memory_bytes` | 1 GiB: no plugin's memory limit may exceed it |
/// | `cache_dir` | none: compile every plugin at every load |
/// | `epoch_tick` | 10 ms: the granularity of CPU-time limits |
/// | `fuel` | off: when on, every call counts instructions (for plugins with a `fuel` limit), which costs some speed |
/// | `enforce_limits` | on |
/// | `cpu_lanes` | one fewer than the machine's cores, at least one: how many CPU-bound guests run at once |
/// | `manifest` | what a plugin may declare: [`ManifestLimits`] |
/// | `compile` | how components callers bring are compiled: [`CompileLimits`] |
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most instances alive at once, across all plugins.
    pub max_instances: u32,
    /// The largest linear memory any instance may have.
    pub max_memory_bytes: usize,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
    /// The key-value database behind `wasi:keyvalue`, opened when the
    /// first plugin granted `keyvalue` loads; without one, such a plugin is
    /// refused.
    pub keyvalue_path: Option<PathBuf>,
    /// Key spaces kept elsewhere (a cluster's), used instead of
    /// `keyvalue_path` when set.
    pub keyspace: Option<Arc<dyn Keyspace>>,
    /// How often the engine's epoch advances.
    pub epoch_tick: Duration,
    /// Where capabilities a plugin was denied are reported.
    pub observer: SharedObserver,
    /// Whether instructions are counted, so plugins can have a `fuel` limit.
    pub fuel: bool,
    /// Whether plugin limits on CPU time and memory are enforced. Only for
    /// measuring what enforcing them costs: without them a plugin may spin
    /// forever and grow its memory up to `max_memory_bytes`. `opbox serve`
    /// always enforces them.
    pub enforce_limits: bool,
    /// How many guests that have run for more than a tick or two may run at
    /// once; the other executor workers stay free for short calls.
    pub cpu_lanes: usize,
    /// What a plugin may declare: operations, schema sizes and complexity.
    pub manifest: ManifestLimits,
    /// How components that callers bring are compiled, and within what.
    pub compile: CompileLimits,
    /// How a pooled linear memory is made clean between calls.
    pub memory_reset: MemoryReset,
    /// Bytes at the bottom of each pooled linear memory kept mapped and
    /// reset in place between calls; the rest is unmapped.
    pub keep_resident_bytes: usize,
    /// Compile plugins with Winch, wasmtime's baseline compiler: in about
    /// a quarter of Cranelift's time, to code that runs slower. For `opbox
    /// dev`, where a save waits for the compile.
    pub quick_compile: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 1 << 30,
            cache_dir: None,
            keyvalue_path: None,
            keyspace: None,
            epoch_tick: Duration::from_millis(10),
            observer: Arc::new(Unobserved),
            fuel: false,
            enforce_limits: true,
            cpu_lanes: std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1))
                .max(1),
            manifest: ManifestLimits::default(),
            compile: CompileLimits::default(),
            memory_reset: MemoryReset::Dirty,
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
            quick_compile: false,
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The engine could not be built.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    /// The bytes are not a valid component, or not one for this world.
    #[error("not a valid opbox plugin component: {0}")]
    Compile(String),
    /// The component needs imports the host does not offer.
    #[error("the plugin cannot be linked: {0}")]
    Link(String),
    /// `describe` trapped or returned something unusable.
    #[error("the plugin's describe failed: {0}")]
    Describe(String),
    /// The manifest breaks a rule (names, duplicates, schemas).
    #[error("invalid plugin manifest: {0}")]
    Manifest(String),
    /// A grant cannot be honoured (e.g. its directory does not exist).
    #[error("cannot grant the plugin what its configuration says: {0}")]
    Grant(String),
    /// Compiling it would cost more than a component brought by a caller
    /// may: its shape, or the compiler's memory, CPU or time.
    #[error("the component costs too much to compile: {0}")]
    TooLarge(String),
}

/// The engine and linker shared by all plugins.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: Option<ArtifactCache>,
    /// The configured key spaces, or the database opened by the first
    /// plugin granted `keyvalue`.
    pub(crate) kv: std::sync::OnceLock<Arc<dyn Keyspace>>,
    live: LiveCounter,
    /// Plugins loaded and not yet dropped, current and retired versions.
    plugins: LiveCounter,
    lanes: Arc<CpuLanes>,
    config: RuntimeConfig,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("live_instances", &self.live.get())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine and linker.
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let engine = Engine::new(&pool::engine_config(&config))
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        capabilities::add_to_linker(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine).map_err(|e| {
                LoadError::Engine(format!(
                    "cannot open the artifact cache {}: {e}",
                    dir.display()
                ))
            })?),
            None => None,
        };
        let lanes = Arc::new(CpuLanes::new(config.cpu_lanes));
        let ticker = EpochTicker::start(engine.clone(), lanes.clone(), config.epoch_tick)
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                kv: std::sync::OnceLock::new(),
                live: LiveCounter::default(),
                plugins: LiveCounter::default(),
                lanes,
                config,
                _ticker: ticker,
            }),
        })
    }

    /// How many instances are alive right now, across all plugins.
    pub fn live_instances(&self) -> usize {
        self.inner.live.get()
    }

    /// How many plugins are loaded, counting a replaced or removed version
    /// until its last call ends and its compiled code is released.
    pub fn loaded_plugins(&self) -> usize {
        self.inner.plugins.get()
    }

    /// The engine's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Compiles (or takes from the cache) and checks a plugin the operator
    /// trusts: compiled in this process, and cached at once.
    pub async fn load(&self, wasm: &[u8], options: LoadOptions) -> Result<Arc<Plugin>, LoadError> {
        let plugin = self.load_with(wasm, options, false).await?;
        self.keep(&plugin);
        Ok(plugin)
    }

    /// Compiles (or takes from the cache) and checks a plugin that a caller
    /// brought: within [`CompileLimits`], and cached only once
    /// [`keep`](Self::keep) says it was accepted, so that a refused one
    /// leaves nothing behind.
    pub async fn load_untrusted(
        &self,
        wasm: &[u8],
        options: LoadOptions,
    ) -> Result<Arc<Plugin>, LoadError> {
        self.load_with(wasm, options, true).await
    }

    /// Caches `plugin`'s compiled code, if it was compiled for this load.
    pub fn keep(&self, plugin: &Plugin) {
        if let (Some(cache), Some(artifact)) = (&self.inner.cache, plugin.take_unsaved()) {
            cache.put(plugin.digest(), &artifact);
        }
    }

    /// Deletes the cached compiled code of the plugin `digest`, which no
    /// plugin serving here uses any more.
    pub fn forget(&self, digest: &str) {
        if let Some(cache) = &self.inner.cache {
            cache.remove(digest);
        }
    }

    async fn load_with(
        &self,
        wasm: &[u8],
        options: LoadOptions,
        untrusted: bool,
    ) -> Result<Arc<Plugin>, LoadError> {
        check_header(wasm)?;
        if options.grants.keyvalue.is_some() {
            self.keyvalue()?;
        }
        let digest = digest(wasm);
        let engine = &self.inner.engine;
        let cached = self
            .inner
            .cache
            .as_ref()
            .and_then(|cache| cache.get(engine, &digest));
        let (component, compiled, artifact) = match cached {
            Some((component, compiled)) => (component, compiled, None),
            None => {
                let artifact = self.compile(wasm, untrusted).await?;
                let component = cache::deserialize_bytes(engine, &artifact)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                (component, artifact.len() as u64, Some(artifact))
            }
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let imports = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let plugin = Plugin::load(self.clone(), pre, digest, imports, options).await?;
        plugin.set_compiled(compiled, artifact);
        Ok(plugin)
    }

    /// The compiled artifact of `wasm`: for a component a caller brought,
    /// within the compile limits (in a child process, where one is
    /// configured); else in this process.
    async fn compile(&self, wasm: &[u8], untrusted: bool) -> Result<Vec<u8>, LoadError> {
        let limits = &self.inner.config.compile;
        if untrusted {
            compile::check_shape(wasm, limits)?;
            if let Some(program) = &limits.program {
                return compile::in_child(program, wasm, self.code_settings(), limits).await;
            }
        }
        self.inner
            .engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))
    }

    fn code_settings(&self) -> compile::CodeSettings {
        compile::CodeSettings {
            fuel: self.inner.config.fuel,
            epochs: self.inner.config.enforce_limits,
            quick: self.inner.config.quick_compile,
        }
    }
}

impl Runtime {
    /// The key-value database, opened on first use.
    fn keyvalue(&self) -> Result<&Arc<dyn Keyspace>, LoadError> {
        if let Some(kv) = self.inner.kv.get() {
            return Ok(kv);
        }
        if let Some(keyspace) = &self.inner.config.keyspace {
            return Ok(self.inner.kv.get_or_init(|| keyspace.clone()));
        }
        let Some(path) = &self.inner.config.keyvalue_path else {
            return Err(LoadError::Grant(
                "`keyvalue` is granted but this host has no key-value database".into(),
            ));
        };
        let kv = KvStore::open(path).map_err(|e| {
            LoadError::Engine(format!(
                "cannot open the keyvalue database {}: {e}",
                path.display()
            ))
        })?;
        Ok(self
            .inner
            .kv
            .get_or_init(|| Arc::new(LocalKeyspace::new(kv))))
    }
}

/// Refuses, in words an operator can act on, bytes that are not a
/// WebAssembly component at all.
fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    /// Version 1, layer 0: a core module.
    const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];
    if !wasm.starts_with(MAGIC) {
        return Err(LoadError::Compile(
            "the file is not WebAssembly (it does not start with `\\0asm`)".into(),
        ));
    }
    if wasm.get(4..8) == Some(&CORE_MODULE[..]) {
        return Err(LoadError::Compile(
            "the file is a core WebAssembly module, not a component: build it for wasm32-wasip2 with the opbox SDK".into(),
        ));
    }
    Ok(())
}

/// The digest a plugin is known by: the SHA-256 of its component, in hex.
pub fn digest(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

/// `bytes` as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Advances the engine's epoch every tick, from a thread of its own, until
/// dropped, and keeps the CPU lanes' clock.
#[derive(Debug)]
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, lanes: Arc<CpuLanes>, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("opbox-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                        lanes.tick();
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
