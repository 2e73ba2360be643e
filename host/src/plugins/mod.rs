//! Plugins coming and going in a running host: install, replace and remove,
//! with no call dropped, kept in the [`PluginStore`] across restarts.
//!
//! A change is made in this order, one change at a time: the new version
//! is loaded and checked (compiled, `describe`d, its names free); its bytes
//! and record are made durable in the store; then its operations take the
//! place of the old ones in the registry, all at once. A call that looked
//! the operation up before the swap runs on the old version to its end; a
//! subscription on the old version gets the grace period to end on its own
//! and then ends with `UNAVAILABLE` (retryable). The old version's compiled
//! code and instances are released when its last call ends.
//!
//! Plugins declared in the configuration file (and the bundled examples)
//! are fixed: the API lists them but may not replace or remove them, and
//! may not install over their names.

mod admin;
mod compat;
mod error;
mod feed;
mod lifecycle;
mod policy;
mod replica;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::Value;

pub use admin::{NAMESPACE, operations};
pub use compat::Break;
pub use error::PluginError;
pub use policy::Refusal;
pub use replica::{Change, ChangeHook};

use crate::call::{AccessControl, CallError, ErrorCode};

use crate::dispatch::{Dispatcher, Operation, plugin_operations};
use crate::registry::{Owner, RegistryError};
use crate::runtime::{LoadOptions, Plugin, PluginLimits, Runtime};
use crate::store::{EventLog, Installed, PluginStore, StoreError};

/// How plugins installed through the API are set up.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The limits of a plugin that sets none of its own (`[plugin_limits]`).
    pub defaults: PluginLimits,
    /// The memory cap of each tenant's plugins, by tenant.
    pub memory_caps: HashMap<String, usize>,
    /// `[access]`: scopes that replace those an operation declares.
    pub access: BTreeMap<String, AccessControl>,
    /// How long a subscription on a replaced or removed version may run on.
    pub grace: Duration,
    /// Where the store lives; it is created with the first install.
    pub store_dir: PathBuf,
    /// This host's labels (`[cluster] labels`), which a plugin's
    /// `placement` must match for the host to hold it.
    pub labels: BTreeMap<String, String>,
    /// The largest component an install or replace may bring, by any
    /// route (`[admin] max_plugin_bytes`).
    pub max_plugin_bytes: usize,
    /// Components brought in (read, decoded, compiled) at once, all routes
    /// and callers together (`[admin] max_uploads`).
    pub max_uploads: usize,
}

/// A plugin's settings, as the `admin/*` operations' contract has them.
type Settings = crate::contract::PluginSettings;

impl Settings {
    fn of(settings: &Value) -> Result<Self, PluginError> {
        serde_json::from_value(settings.clone())
            .map_err(|e| PluginError::Settings(crate::contract::without_values(&e.to_string())))
    }

    /// Whether a host with `labels` may hold the plugin.
    fn placed_on(&self, labels: &BTreeMap<String, String>) -> bool {
        self.placement
            .iter()
            .all(|(label, value)| labels.get(label) == Some(value))
    }
}

/// A plugin's place: its tenant (`None`: shared) and namespace.
type Place = (Option<String>, String);

/// On whose authority a change is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The host operator (scope `admin`): any tenant's plugins and the
    /// shared ones, with no allowance.
    Operator,
    /// A tenant's caller (scope `plugins:write`): its own tenant's plugins,
    /// within the tenant's [`PluginAllowance`](crate::tenants::PluginAllowance).
    Tenant,
}

/// One plugin serving now.
#[derive(Debug, Clone)]
struct Entry {
    plugin: Arc<Plugin>,
    /// Declared by the configuration: the API may not change it.
    fixed: bool,
    /// The size of its component and of its compiled code, for an
    /// installed one: what it holds on disk.
    bytes: u64,
    /// Its settings, for an installed one.
    settings: Value,
}

/// A plugin as [`Plugins::list`] shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The version serving now.
    pub plugin: Arc<Plugin>,
    /// Its tenant; `None`: shared.
    pub tenant: Option<String>,
    /// Whether the configuration declares it.
    pub fixed: bool,
}

/// The plugins of a running host, and the one door through which they
/// change. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: Runtime,
    dispatcher: Dispatcher,
    policy: Policy,
    /// Opened at start when it exists, created by the first install.
    store: OnceLock<PluginStore>,
    /// One change at a time.
    changes: tokio::sync::Mutex<()>,
    /// Every plugin, by place: the version serving now.
    current: Mutex<HashMap<Place, Entry>>,
    /// The plugins of the cluster whose placement leaves this host out, by
    /// place: their placement, so that a change asked of this host is
    /// told where to go rather than that nothing is there.
    elsewhere: Mutex<HashMap<Place, String>>,
    /// Where every change and refusal is recorded.
    events: Arc<EventLog>,
    /// Told of every change made through the API.
    hook: OnceLock<Hook>,
    /// Turns to bring a component in: `policy.max_uploads` of them.
    uploads: Arc<tokio::sync::Semaphore>,
}

/// A [`ChangeHook`], shown by name only.
struct Hook(ChangeHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeHook")
    }
}

fn owner_of(tenant: Option<&str>) -> Owner {
    tenant.map_or(Owner::Shared, |t| Owner::Tenant(t.to_owned()))
}

/// A [`Plugins`] that does not keep the host alive: what the `admin/*`
/// operations hold, since the registry that holds them is the host's.
#[derive(Debug, Clone)]
pub(crate) struct WeakPlugins(std::sync::Weak<Inner>);

impl WeakPlugins {
    /// The plugins, while their host lives.
    pub(crate) fn upgrade(&self) -> Result<Plugins, CallError> {
        self.0
            .upgrade()
            .map(|inner| Plugins { inner })
            .ok_or_else(|| CallError::new(ErrorCode::Unavailable, "the host is shutting down"))
    }
}

impl Plugins {
    pub(crate) fn downgrade(&self) -> WeakPlugins {
        WeakPlugins(Arc::downgrade(&self.inner))
    }

    /// The plugins of `runtime`, routed by `dispatcher`, their changes
    /// recorded in `events`.
    pub fn new(
        runtime: Runtime,
        dispatcher: Dispatcher,
        policy: Policy,
        events: Arc<EventLog>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                dispatcher,
                uploads: Arc::new(tokio::sync::Semaphore::new(policy.max_uploads.max(1))),
                policy,
                store: OnceLock::new(),
                changes: tokio::sync::Mutex::new(()),
                current: Mutex::default(),
                elsewhere: Mutex::default(),
                events,
                hook: OnceLock::new(),
            }),
        }
    }

    /// A turn to bring a component in, held until it is installed or
    /// refused: `RESOURCE_EXHAUSTED` while `max_uploads` others hold one.
    pub(crate) fn upload_turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, CallError> {
        self.inner.uploads.clone().try_acquire_owned().map_err(|_| {
            CallError::new(
                ErrorCode::ResourceExhausted,
                "too many plugin uploads at once; try again shortly",
            )
            .with_details(serde_json::json!({
                "limit": "max_uploads",
                "value": self.inner.policy.max_uploads,
                "retry_after_ms": 1000,
            }))
        })
    }

    /// The largest component an install or replace may bring.
    pub(crate) fn max_plugin_bytes(&self) -> usize {
        self.inner.policy.max_plugin_bytes
    }

    /// The event feed.
    pub fn events(&self) -> Arc<EventLog> {
        self.inner.events.clone()
    }

    /// Instances alive now, across every plugin.
    pub fn live_instances(&self) -> u64 {
        self.inner.runtime.live_instances() as u64
    }

    /// Every plugin of every tenant: the operator's view.
    pub fn all(&self) -> Vec<Listed> {
        self.listed(|_| true)
    }

    /// The plugins `tenant` sees (its own and the shared ones), by name.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Listed> {
        self.listed(|owner| owner.is_none() || owner.as_deref() == tenant)
    }

    /// The plugins whose owner `keep` keeps, by name, then tenant.
    fn listed(&self, keep: impl Fn(&Option<String>) -> bool) -> Vec<Listed> {
        let mut plugins: Vec<_> = lock(&self.inner.current)
            .iter()
            .filter(|((owner, _), _)| keep(owner))
            .map(|(place, entry)| Listed {
                plugin: entry.plugin.clone(),
                tenant: place.0.clone(),
                fixed: entry.fixed,
            })
            .collect();
        plugins.sort_by(|a, b| (a.plugin.name(), &a.tenant).cmp(&(b.plugin.name(), &b.tenant)));
        plugins
    }

    /// The entry at `place`, if the API may change it. A plugin the
    /// cluster holds on other hosts only is `NotPlaced` here.
    fn managed(&self, place: &Place) -> Result<Entry, PluginError> {
        let entry = lock(&self.inner.current).get(place).cloned();
        let entry = entry.ok_or_else(|| match lock(&self.inner.elsewhere).get(place) {
            Some(placement) => PluginError::NotPlaced(placement.clone()),
            None => PluginError::NotFound(place.1.clone()),
        })?;
        if entry.fixed {
            return Err(PluginError::Fixed(place.1.clone()));
        }
        Ok(entry)
    }

    /// On a tenant's authority, whether `record` (replacing the plugin at
    /// `replacing`, if any), its compiled code of `compiled` bytes (0 before
    /// it is compiled) counted with it, fits the tenant's allowance.
    fn check_allowance(
        &self,
        authority: Authority,
        record: &Installed,
        replacing: Option<&Place>,
        compiled: u64,
    ) -> Result<(), PluginError> {
        let (Authority::Tenant, Some(tenant)) = (authority, record.tenant.as_deref()) else {
            return Ok(());
        };
        let tenants = self.inner.dispatcher.tenants();
        let allowance = tenants
            .allowance(tenant)
            .ok_or_else(|| PluginError::UnknownTenant(tenant.to_owned()))?;
        let settings = Settings::of(&record.settings)?;
        if settings.reuse.is_some() {
            return Err(policy::Refusal {
                rule: "reuse".into(),
                message: "instance reuse is for the host operator to allow".into(),
            }
            .into());
        }
        let mut holds = policy::Holding::default();
        for (place, entry) in lock(&self.inner.current).iter() {
            if place.0.as_deref() == Some(tenant) && !entry.fixed && Some(place) != replacing {
                holds.plugins += 1;
                holds.bytes += entry.bytes;
            }
        }
        policy::check(
            allowance,
            &self.inner.policy.defaults,
            holds,
            replacing.is_none(),
            record.bytes.saturating_add(compiled),
            &settings.limits,
            &settings.grants,
        )?;
        Ok(())
    }

    fn check_tenant(&self, tenant: Option<&str>) -> Result<(), PluginError> {
        match tenant {
            Some(t) if !self.inner.dispatcher.tenants().contains(t) => {
                Err(PluginError::UnknownTenant(t.to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a change made here of a plugin whose placement leaves this
    /// host out: no host holds a plugin its labels do not match.
    fn check_placed(&self, record: &Installed) -> Result<(), PluginError> {
        let settings = Settings::of(&record.settings)?;
        if settings.placed_on(&self.inner.policy.labels) {
            return Ok(());
        }
        Err(PluginError::NotPlaced(
            serde_json::to_string(&settings.placement).unwrap_or_default(),
        ))
    }

    /// Whether this host's labels match the placement in `settings`;
    /// `true` for settings that do not parse, which the change itself then
    /// refuses.
    fn placed_here(&self, settings: &Value) -> bool {
        Settings::of(settings)
            .ok()
            .is_none_or(|s| s.placed_on(&self.inner.policy.labels))
    }

    /// Loads `wasm` with `record`'s settings, mounted under its name (or
    /// its own when the record has none yet). On a tenant's authority, the
    /// limits it does not set are held to the tenant's ceilings.
    async fn load(
        &self,
        wasm: &[u8],
        record: &Installed,
        authority: Authority,
    ) -> Result<Arc<Plugin>, PluginError> {
        let settings = Settings::of(&record.settings)?;
        let mut limits = settings.limits.apply(self.inner.policy.defaults.clone());
        if let Some(tenant) = record.tenant.as_deref() {
            if let Some(cap) = self.inner.policy.memory_caps.get(tenant) {
                limits.memory_bytes = limits.memory_bytes.min(*cap);
            }
            let tenants = self.inner.dispatcher.tenants();
            if let (Authority::Tenant, Some(allowance)) = (authority, tenants.allowance(tenant)) {
                limits = policy::hold_to(limits, &allowance.limits);
            }
        }
        if limits.fuel.is_some() && !self.inner.runtime.config().fuel {
            return Err(PluginError::Settings(
                "a `fuel` limit needs a host that counts instructions: set `fuel` in \
                 [plugin_limits] or on a configured plugin"
                    .into(),
            ));
        }
        let options = LoadOptions {
            name: Some(record.name.clone()).filter(|n| !n.is_empty()),
            limits,
            grants: settings.grants,
            reuse: settings.reuse,
        };
        Ok(self.inner.runtime.load_untrusted(wasm, options).await?)
    }

    /// `plugin`'s operations, with the scopes `[access]` sets.
    fn operations(&self, plugin: &Arc<Plugin>) -> Vec<Operation> {
        let mut operations = plugin_operations(plugin);
        for op in &mut operations {
            if let Some(access) = self.inner.policy.access.get(&op.spec.name) {
                op.spec.access_control = access.clone();
            }
        }
        operations
    }

    fn register(&self, owner: &Owner, plugin: &Arc<Plugin>) -> Result<(), RegistryError> {
        self.inner.dispatcher.registry().insert_namespace(
            owner,
            plugin.name(),
            self.operations(plugin),
        )
    }

    /// Deletes the cached compiled code of `digest` unless a plugin serving
    /// here still uses it: what a replaced or removed plugin took in the
    /// cache goes with it.
    fn forget_unused(&self, digest: &str) {
        let used = lock(&self.inner.current)
            .values()
            .any(|entry| entry.plugin.digest() == digest);
        if !used {
            self.inner.runtime.forget(digest);
        }
    }

    fn store(&self) -> Result<&PluginStore, StoreError> {
        if let Some(store) = self.inner.store.get() {
            return Ok(store);
        }
        let store = PluginStore::open(&self.inner.policy.store_dir)?;
        Ok(self.inner.store.get_or_init(|| store))
    }
}

fn place(owner: &Owner, name: &str) -> Place {
    let tenant = match owner {
        Owner::Shared => None,
        Owner::Tenant(t) => Some(t.clone()),
    };
    (tenant, name.to_owned())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
