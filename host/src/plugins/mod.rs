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
mod feed;
mod policy;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

pub use admin::{NAMESPACE, operations};
pub use compat::Break;
pub use policy::Refusal;

use crate::call::{AccessControl, CallError, ErrorCode};
use crate::call::{Event, Observer};
use crate::capabilities::Grants;
use crate::dispatch::{Dispatcher, Operation, plugin_operations};
use crate::registry::{Owner, RegistryError};
use crate::runtime::{LoadError, LoadOptions, Plugin, PluginLimits, PluginLimitsConfig, Runtime};
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
}

/// A plugin's settings, as an install or replace gives them: the `limits`
/// and `grants` of a `[[plugins]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    limits: PluginLimitsConfig,
    grants: Grants,
}

impl Settings {
    fn of(settings: &Value) -> Result<Self, PluginError> {
        serde_json::from_value(settings.clone()).map_err(|e| PluginError::Settings(e.to_string()))
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The settings are not valid.
    #[error("invalid plugin settings: {0}")]
    Settings(String),
    /// The component could not be loaded: it does not compile, link,
    /// describe itself, or fit its limits and grants.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The name is taken, or not held.
    #[error(transparent)]
    Register(#[from] RegistryError),
    /// No such plugin in the caller's view.
    #[error("no plugin named `{0}` is installed")]
    NotFound(String),
    /// The plugin is declared in the configuration file.
    #[error("plugin `{0}` is declared in the host's configuration; the API may not change it")]
    Fixed(String),
    /// The named tenant does not exist.
    #[error("there is no tenant `{0}`")]
    UnknownTenant(String),
    /// The new version breaks callers of the old one; a forced replace
    /// skips this check.
    #[error("the new version breaks {} use(s) of the old one; replace with `force` to install it anyway", .0.len())]
    Incompatible(Vec<Break>),
    /// A tenant's caller asked for more than its tenant's allowance.
    #[error(transparent)]
    Forbidden(#[from] Refusal),
    /// The store failed; the cause is logged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PluginError> for CallError {
    fn from(error: PluginError) -> Self {
        match &error {
            PluginError::Settings(_) | PluginError::UnknownTenant(_) => {
                CallError::invalid_input(error.to_string())
            }
            PluginError::Load(load) => CallError::invalid_input(error.to_string())
                .with_details(json!({ "cause": load_cause(load) })),
            PluginError::Register(RegistryError::NotHeld(name)) | PluginError::NotFound(name) => {
                CallError::not_found(name)
            }
            PluginError::Register(_) => CallError::new(ErrorCode::Conflict, error.to_string()),
            PluginError::Fixed(_) => CallError::new(ErrorCode::Forbidden, error.to_string()),
            PluginError::Forbidden(refusal) => {
                CallError::new(ErrorCode::Forbidden, error.to_string())
                    .with_details(json!({ "rule": refusal.rule }))
            }
            PluginError::Incompatible(breaks) => {
                let breaks: Vec<_> = breaks.iter().map(Break::to_json).collect();
                CallError::new(ErrorCode::Conflict, error.to_string())
                    .with_details(json!({ "breaks": breaks }))
            }
            PluginError::Store(cause) => {
                tracing::error!("{cause}");
                CallError::internal()
            }
        }
    }
}

/// Which step refused a component, for callers to act on.
fn load_cause(error: &LoadError) -> &'static str {
    match error {
        LoadError::Compile(_) => "compile",
        LoadError::Link(_) => "link",
        LoadError::Describe(_) => "describe",
        LoadError::Manifest(_) => "manifest",
        LoadError::Grant(_) => "grant",
        _ => "engine",
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
    /// The size of its component, for an installed one.
    bytes: u64,
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
    /// Where every change and refusal is recorded.
    events: Arc<EventLog>,
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
                policy,
                store: OnceLock::new(),
                changes: tokio::sync::Mutex::new(()),
                current: Mutex::default(),
                events,
            }),
        }
    }

    /// Loads a plugin the configuration declares (or a bundled example):
    /// fixed for the API.
    pub async fn declare(
        &self,
        wasm: &[u8],
        options: LoadOptions,
        owner: &Owner,
    ) -> Result<Arc<Plugin>, PluginError> {
        let _one = self.inner.changes.lock().await;
        let plugin = self.inner.runtime.load(wasm, options).await?;
        self.register(owner, &plugin)?;
        let entry = Entry {
            plugin: plugin.clone(),
            fixed: true,
            bytes: 0,
        };
        lock(&self.inner.current).insert(place(owner, plugin.name()), entry);
        Ok(plugin)
    }

    /// Loads every plugin the store holds, at start. One that no longer
    /// loads (its name taken by the configuration, say) is logged and left
    /// in the store, not served.
    pub async fn restore(&self) -> Result<usize, PluginError> {
        if !PluginStore::exists(&self.inner.policy.store_dir) {
            return Ok(0);
        }
        let store = self.store()?;
        let mut restored = 0;
        for record in store.all()? {
            let _one = self.inner.changes.lock().await;
            let result = async {
                let wasm = store.blob(&record.digest)?;
                // What a tenant installed stays held to its ceilings.
                let authority = if record.held {
                    Authority::Tenant
                } else {
                    Authority::Operator
                };
                let plugin = self.load(&wasm, &record, authority).await?;
                self.register(&owner_of(record.tenant.as_deref()), &plugin)?;
                Ok::<_, PluginError>(plugin)
            }
            .await;
            match result {
                Ok(plugin) => {
                    let entry = Entry {
                        plugin,
                        fixed: false,
                        bytes: record.bytes,
                    };
                    lock(&self.inner.current)
                        .insert((record.tenant.clone(), record.name.clone()), entry);
                    restored += 1;
                }
                Err(e) => tracing::error!(
                    plugin = record.name,
                    tenant = record.tenant.as_deref().unwrap_or("(shared)"),
                    "cannot restore an installed plugin: {e}"
                ),
            }
        }
        Ok(restored)
    }

    /// Installs a new plugin for `tenant` (`None`: shared), under `name`
    /// or its own. Refused, changing nothing, if it does not load, its
    /// name is taken, or (on a tenant's authority) it is beyond the
    /// tenant's allowance.
    pub async fn install(
        &self,
        authority: Authority,
        tenant: Option<&str>,
        name: Option<&str>,
        wasm: &[u8],
        settings: Value,
    ) -> Result<Arc<Plugin>, PluginError> {
        let result = self
            .try_install(authority, tenant, name, wasm, settings)
            .await;
        if let Err(error) = &result {
            self.refused("install", tenant, name, error);
        }
        result
    }

    async fn try_install(
        &self,
        authority: Authority,
        tenant: Option<&str>,
        name: Option<&str>,
        wasm: &[u8],
        settings: Value,
    ) -> Result<Arc<Plugin>, PluginError> {
        self.check_tenant(tenant)?;
        let _one = self.inner.changes.lock().await;
        let record = Installed {
            tenant: tenant.map(str::to_owned),
            name: name.unwrap_or_default().to_owned(),
            digest: String::new(),
            bytes: wasm.len() as u64,
            held: authority == Authority::Tenant,
            settings,
            installed_at_ms: now_ms(),
        };
        self.check_allowance(authority, &record, None)?;
        let mut record = record;
        let plugin = self.load(wasm, &record, authority).await?;
        let owner = owner_of(tenant);
        self.inner
            .dispatcher
            .registry()
            .check_free(&owner, plugin.name())?;
        let store = self.store()?;
        record.name = plugin.name().to_owned();
        record.digest = store.put_blob(wasm)?;
        store.put(&record)?;
        self.register(&owner, &plugin)?;
        let entry = Entry {
            plugin: plugin.clone(),
            fixed: false,
            bytes: record.bytes,
        };
        lock(&self.inner.current).insert(place(&owner, plugin.name()), entry);
        self.changed("plugin.installed", &record, &plugin, json!({}));
        Ok(plugin)
    }

    /// Replaces the plugin `name` of `tenant` with a new version, which
    /// keeps the name. Calls running on the old version finish on it.
    /// Unless `force`, a version that breaks callers of the old one (see
    /// [`compat`]) is refused.
    pub async fn replace(
        &self,
        authority: Authority,
        tenant: Option<&str>,
        name: &str,
        wasm: &[u8],
        settings: Value,
        force: bool,
    ) -> Result<Arc<Plugin>, PluginError> {
        let result = self
            .try_replace(authority, tenant, name, wasm, settings, force)
            .await;
        if let Err(error) = &result {
            self.refused("replace", tenant, Some(name), error);
        }
        result
    }

    async fn try_replace(
        &self,
        authority: Authority,
        tenant: Option<&str>,
        name: &str,
        wasm: &[u8],
        settings: Value,
        force: bool,
    ) -> Result<Arc<Plugin>, PluginError> {
        let _one = self.inner.changes.lock().await;
        let place = (tenant.map(str::to_owned), name.to_owned());
        let old = self.managed(&place)?;
        let mut record = Installed {
            tenant: place.0.clone(),
            name: name.to_owned(),
            digest: String::new(),
            bytes: wasm.len() as u64,
            held: authority == Authority::Tenant,
            settings,
            installed_at_ms: now_ms(),
        };
        self.check_allowance(authority, &record, Some(&place))?;
        let plugin = self.load(wasm, &record, authority).await?;
        if !force {
            let specs = |p: &Plugin| {
                p.operations()
                    .into_iter()
                    .map(|op| op.spec)
                    .collect::<Vec<_>>()
            };
            let breaks = compat::breaks(&specs(&old.plugin), &specs(&plugin));
            if !breaks.is_empty() {
                return Err(PluginError::Incompatible(breaks));
            }
        }
        let owner = owner_of(tenant);
        let operations = self.operations(&plugin);
        let store = self.store()?;
        record.digest = store.put_blob(wasm)?;
        store.put(&record)?;
        self.inner
            .dispatcher
            .registry()
            .replace_namespace(&owner, name, operations)?;
        let entry = Entry {
            plugin: plugin.clone(),
            fixed: false,
            bytes: record.bytes,
        };
        lock(&self.inner.current).insert(place, entry);
        old.plugin.retire(self.inner.policy.grace);
        let from = json!({ "version": old.plugin.version(), "digest": old.plugin.digest() });
        self.changed(
            "plugin.replaced",
            &record,
            &plugin,
            json!({ "from": from, "forced": force }),
        );
        Ok(plugin)
    }

    /// Removes the plugin `name` of `tenant`: new calls get `NOT_FOUND`,
    /// calls running on it finish.
    pub async fn remove(&self, tenant: Option<&str>, name: &str) -> Result<(), PluginError> {
        let result = self.try_remove(tenant, name).await;
        if let Err(error) = &result {
            self.refused("remove", tenant, Some(name), error);
        }
        result
    }

    async fn try_remove(&self, tenant: Option<&str>, name: &str) -> Result<(), PluginError> {
        let _one = self.inner.changes.lock().await;
        let place = (tenant.map(str::to_owned), name.to_owned());
        let old = self.managed(&place)?;
        self.store()?.remove(tenant, name)?;
        self.inner
            .dispatcher
            .registry()
            .remove_namespace(&owner_of(tenant), name);
        lock(&self.inner.current).remove(&place);
        old.plugin.retire(self.inner.policy.grace);
        tracing::info!(
            plugin = name,
            tenant = tenant.unwrap_or("(shared)"),
            "plugin removed"
        );
        self.inner.events.observe(Event {
            kind: "plugin.removed",
            tenant: tenant.map(str::to_owned),
            plugin: Some(name.to_owned()),
            detail: json!({ "version": old.plugin.version(), "digest": old.plugin.digest() }),
        });
        Ok(())
    }

    /// Logs and records a change made.
    fn changed(&self, kind: &'static str, record: &Installed, plugin: &Plugin, extra: Value) {
        tracing::info!(
            plugin = plugin.name(),
            tenant = record.tenant.as_deref().unwrap_or("(shared)"),
            version = plugin.version(),
            digest = plugin.digest(),
            "{kind}"
        );
        let mut detail = json!({ "version": plugin.version(), "digest": plugin.digest() });
        if let (Value::Object(detail), Value::Object(extra)) = (&mut detail, extra) {
            detail.extend(extra);
        }
        self.inner.events.observe(Event {
            kind,
            tenant: record.tenant.clone(),
            plugin: Some(plugin.name().to_owned()),
            detail,
        });
    }

    /// Records a change refused, in the words its caller got.
    fn refused(&self, action: &str, tenant: Option<&str>, name: Option<&str>, error: &PluginError) {
        let reason = match error {
            // The cause may name host paths: it is logged, not recorded.
            PluginError::Store(_) => "the plugin store failed".to_owned(),
            other => crate::call::cut(&other.to_string(), 1024).to_owned(),
        };
        self.inner.events.observe(Event {
            kind: "plugin.refused",
            tenant: tenant.map(str::to_owned),
            plugin: name.map(|n| crate::call::cut(n, 128).to_owned()),
            detail: json!({ "action": action, "reason": reason }),
        });
    }

    /// The event feed.
    pub fn events(&self) -> Arc<EventLog> {
        self.inner.events.clone()
    }

    /// Every plugin of every tenant: the operator's view.
    pub fn all(&self) -> Vec<Listed> {
        let mut plugins: Vec<_> = lock(&self.inner.current)
            .iter()
            .map(|(place, entry)| Listed {
                plugin: entry.plugin.clone(),
                tenant: place.0.clone(),
                fixed: entry.fixed,
            })
            .collect();
        plugins.sort_by(|a, b| (a.plugin.name(), &a.tenant).cmp(&(b.plugin.name(), &b.tenant)));
        plugins
    }

    /// The plugins `tenant` sees (its own and the shared ones), by name.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Listed> {
        let mut plugins: Vec<_> = lock(&self.inner.current)
            .iter()
            .filter(|((owner, _), _)| owner.is_none() || owner.as_deref() == tenant)
            .map(|(place, entry)| Listed {
                plugin: entry.plugin.clone(),
                tenant: place.0.clone(),
                fixed: entry.fixed,
            })
            .collect();
        plugins.sort_by(|a, b| (a.plugin.name(), &a.tenant).cmp(&(b.plugin.name(), &b.tenant)));
        plugins
    }

    /// The plugin `name` of `tenant` (`None`: shared), serving now.
    pub fn get(&self, tenant: Option<&str>, name: &str) -> Option<Arc<Plugin>> {
        lock(&self.inner.current)
            .get(&(tenant.map(str::to_owned), name.to_owned()))
            .map(|entry| entry.plugin.clone())
    }

    /// The entry at `place`, if the API may change it.
    fn managed(&self, place: &Place) -> Result<Entry, PluginError> {
        let entry = lock(&self.inner.current)
            .get(place)
            .cloned()
            .ok_or_else(|| PluginError::NotFound(place.1.clone()))?;
        if entry.fixed {
            return Err(PluginError::Fixed(place.1.clone()));
        }
        Ok(entry)
    }

    /// On a tenant's authority, whether `record` (replacing the plugin at
    /// `replacing`, if any) fits the tenant's allowance.
    fn check_allowance(
        &self,
        authority: Authority,
        record: &Installed,
        replacing: Option<&Place>,
    ) -> Result<(), PluginError> {
        let (Authority::Tenant, Some(tenant)) = (authority, record.tenant.as_deref()) else {
            return Ok(());
        };
        let tenants = self.inner.dispatcher.tenants();
        let allowance = tenants
            .allowance(tenant)
            .ok_or_else(|| PluginError::UnknownTenant(tenant.to_owned()))?;
        let settings = Settings::of(&record.settings)?;
        let mut holds = policy::Holding::default();
        for (place, entry) in lock(&self.inner.current).iter() {
            if place.0.as_deref() == Some(tenant) && !entry.fixed && Some(place) != replacing {
                holds.plugins += 1;
                holds.bytes += entry.bytes;
            }
        }
        policy::check(
            allowance,
            holds,
            replacing.is_none(),
            record.bytes,
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
        };
        Ok(self.inner.runtime.load(wasm, options).await?)
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
