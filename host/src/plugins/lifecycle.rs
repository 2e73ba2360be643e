//! Changes to the plugins: declared at start, restored from the store,
//! installed, replaced and removed while serving, each recorded as an
//! event.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::replica::{Change, Source};
use super::{Authority, Entry, PluginError, Plugins, compat, lock, owner_of, place};
use crate::call::{Event, Happening, Observer, Version};
use crate::registry::Owner;
use crate::runtime::{LoadOptions, Plugin};
use crate::store::{Installed, PluginStore};

impl Plugins {
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
            settings: Value::Null,
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
                self.inner.runtime.keep(&plugin);
                Ok::<_, PluginError>(plugin)
            }
            .await;
            match result {
                Ok(plugin) => {
                    let entry = Entry {
                        bytes: record.bytes.saturating_add(plugin.compiled_bytes()),
                        plugin,
                        fixed: false,
                        settings: record.settings.clone(),
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
        self.install_from(Source::Api, authority, tenant, name, wasm, settings)
            .await
    }

    pub(super) async fn install_from(
        &self,
        source: Source,
        authority: Authority,
        tenant: Option<&str>,
        name: Option<&str>,
        wasm: &[u8],
        settings: Value,
    ) -> Result<Arc<Plugin>, PluginError> {
        let result = self
            .try_install(source, authority, tenant, name, wasm, settings)
            .await;
        if let Err(error) = &result {
            self.refused("install", tenant, name, error);
        }
        result
    }

    async fn try_install(
        &self,
        source: Source,
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
        self.check_allowance(authority, &record, None, 0)?;
        self.check_placed(&record)?;
        let mut record = record;
        let plugin = self.load(wasm, &record, authority).await?;
        self.check_allowance(authority, &record, None, plugin.compiled_bytes())?;
        let owner = owner_of(tenant);
        self.inner
            .dispatcher
            .registry()
            .check_free(&owner, plugin.name())?;
        let store = self.store()?;
        record.name = plugin.name().to_owned();
        record.digest = store.put_blob(wasm)?;
        store.put(&record)?;
        self.inner.runtime.keep(&plugin);
        self.register(&owner, &plugin)?;
        let entry = Entry {
            plugin: plugin.clone(),
            fixed: false,
            bytes: record.bytes.saturating_add(plugin.compiled_bytes()),
            settings: record.settings.clone(),
        };
        lock(&self.inner.current).insert(place(&owner, plugin.name()), entry);
        self.changed(
            &record,
            &plugin,
            Happening::PluginInstalled(version_of(&plugin)),
        );
        self.tell(source, || Change::Put {
            record,
            wasm: Arc::from(wasm),
        });
        Ok(plugin)
    }

    /// Replaces the plugin `name` of `tenant` with a new version, which
    /// keeps the name. Calls running on the old version finish on it.
    /// Unless `force`, a version that breaks callers of the old one (an
    /// operation gone or changed in kind, an input narrowed, an output
    /// widened: [`Break`](super::Break)) is refused.
    pub async fn replace(
        &self,
        authority: Authority,
        tenant: Option<&str>,
        name: &str,
        wasm: &[u8],
        settings: Value,
        force: bool,
    ) -> Result<Arc<Plugin>, PluginError> {
        self.replace_from(Source::Api, authority, tenant, name, wasm, settings, force)
            .await
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "replace's, and where it comes from"
    )]
    pub(super) async fn replace_from(
        &self,
        source: Source,
        authority: Authority,
        tenant: Option<&str>,
        name: &str,
        wasm: &[u8],
        settings: Value,
        force: bool,
    ) -> Result<Arc<Plugin>, PluginError> {
        let result = self
            .try_replace(source, authority, tenant, name, wasm, settings, force)
            .await;
        if let Err(error) = &result {
            self.refused("replace", tenant, Some(name), error);
        }
        result
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "replace's, and where it comes from"
    )]
    async fn try_replace(
        &self,
        source: Source,
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
        self.check_allowance(authority, &record, Some(&place), 0)?;
        self.check_placed(&record)?;
        let plugin = self.load(wasm, &record, authority).await?;
        self.check_allowance(authority, &record, Some(&place), plugin.compiled_bytes())?;
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
        // Before any call reaches it, so its log lines are counted on
        // from the old version's.
        plugin.log_tail().continue_from(old.plugin.log_tail());
        self.inner.runtime.keep(&plugin);
        self.inner
            .dispatcher
            .registry()
            .replace_namespace(&owner, name, operations)?;
        let entry = Entry {
            plugin: plugin.clone(),
            fixed: false,
            bytes: record.bytes.saturating_add(plugin.compiled_bytes()),
            settings: record.settings.clone(),
        };
        lock(&self.inner.current).insert(place, entry);
        old.plugin.retire(self.inner.policy.grace);
        self.forget_unused(old.plugin.digest());
        let replaced = Happening::PluginReplaced {
            now: version_of(&plugin),
            from: version_of(&old.plugin),
            forced: force,
        };
        self.changed(&record, &plugin, replaced);
        self.tell(source, || Change::Put {
            record,
            wasm: Arc::from(wasm),
        });
        Ok(plugin)
    }

    /// Removes the plugin `name` of `tenant`: new calls get `NOT_FOUND`,
    /// calls running on it finish.
    pub async fn remove(&self, tenant: Option<&str>, name: &str) -> Result<(), PluginError> {
        self.remove_from(Source::Api, tenant, name).await
    }

    pub(super) async fn remove_from(
        &self,
        source: Source,
        tenant: Option<&str>,
        name: &str,
    ) -> Result<(), PluginError> {
        let result = self.try_remove(source, tenant, name).await;
        if let Err(error) = &result {
            self.refused("remove", tenant, Some(name), error);
        }
        result
    }

    async fn try_remove(
        &self,
        source: Source,
        tenant: Option<&str>,
        name: &str,
    ) -> Result<(), PluginError> {
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
        self.forget_unused(old.plugin.digest());
        tracing::info!(
            plugin = name,
            tenant = tenant.unwrap_or("(shared)"),
            "plugin removed"
        );
        self.inner.events.observe(Event {
            what: Happening::PluginRemoved(version_of(&old.plugin)),
            tenant: tenant.map(str::to_owned),
            plugin: Some(name.to_owned()),
        });
        let (tenant, name) = place;
        self.tell(source, || Change::Removed { tenant, name });
        Ok(())
    }

    /// Logs and records a change made.
    fn changed(&self, record: &Installed, plugin: &Plugin, what: Happening) {
        tracing::info!(
            plugin = plugin.name(),
            tenant = record.tenant.as_deref().unwrap_or("(shared)"),
            version = plugin.version(),
            digest = plugin.digest(),
            "{}",
            what.kind()
        );
        self.inner.events.observe(Event {
            what,
            tenant: record.tenant.clone(),
            plugin: Some(plugin.name().to_owned()),
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
            what: Happening::PluginRefused {
                action: action.to_owned(),
                reason,
            },
            tenant: tenant.map(str::to_owned),
            plugin: name.map(|n| crate::call::cut(n, 128).to_owned()),
        });
    }
}

/// `plugin`'s version, as events name it.
fn version_of(plugin: &Plugin) -> Version {
    Version {
        version: plugin.version().to_owned(),
        digest: plugin.digest().to_owned(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
