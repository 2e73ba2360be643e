//! Plugins changed on other hosts of a cluster, applied here; and the
//! changes made here through the API, told to whoever passes them on.
//!
//! A change from another host goes through the same steps as one from the
//! API (loaded and checked, stored, then swapped in, no call dropped), with
//! the authority it was made on, but without the compatibility check: the
//! host that made it checked, or was forced.

use std::sync::Arc;

use super::{Authority, Hook, PluginError, Plugins, lock};
use crate::store::Installed;

/// A change made through this host's API.
#[derive(Debug, Clone)]
pub enum Change {
    /// A plugin installed or replaced: its record as stored, and its
    /// component.
    Put {
        /// The record.
        record: Installed,
        /// The component.
        wasm: Arc<[u8]>,
    },
    /// A plugin removed.
    Removed {
        /// Its tenant; `None`: shared.
        tenant: Option<String>,
        /// Its name.
        name: String,
    },
}

/// What is told of each change made through the API.
pub type ChangeHook = Arc<dyn Fn(Change) + Send + Sync>;

/// Where a change comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// This host's API (or a caller of its `admin/*` operations).
    Api,
    /// Another host of the cluster.
    Cluster,
}

impl Plugins {
    /// Tells `hook` of every change made through the API from now on; not
    /// of those [`Plugins::apply_put`] and [`Plugins::apply_remove`] make.
    /// Once: a second hook is refused (`false`).
    pub fn on_change(&self, hook: ChangeHook) -> bool {
        self.inner.hook.set(Hook(hook)).is_ok()
    }

    /// Tells the hook, if there is one, of a change made through the API;
    /// `change` is made only then (it copies the component).
    pub(super) fn tell(&self, source: Source, change: impl FnOnce() -> Change) {
        if let (Source::Api, Some(Hook(hook))) = (source, self.inner.hook.get()) {
            hook(change());
        }
    }

    /// Makes the plugin at `record`'s place the one it describes, as
    /// another host did: installs it, replaces the one there, or (when it
    /// serves that component with those settings already) does nothing.
    /// A plugin whose placement leaves this host out is not held here: one
    /// held before is removed. `wasm` fetches the component, and is called
    /// only when this host installs or replaces it. Whether it changed
    /// anything.
    pub async fn apply_put<F>(&self, record: Installed, wasm: F) -> Result<bool, PluginError>
    where
        F: AsyncFnOnce() -> Result<Vec<u8>, String>,
    {
        let place = (record.tenant.clone(), record.name.clone());
        if !self.placed_here(&record.settings) {
            let removed = self
                .apply_remove(record.tenant.as_deref(), &record.name)
                .await;
            let placement = record
                .settings
                .get("placement")
                .cloned()
                .unwrap_or_default();
            lock(&self.inner.elsewhere).insert(place, placement.to_string());
            return removed;
        }
        lock(&self.inner.elsewhere).remove(&place);
        let current = lock(&self.inner.current).get(&place).cloned();
        let authority = if record.held {
            Authority::Tenant
        } else {
            Authority::Operator
        };
        let tenant = record.tenant.as_deref();
        if let Some(entry) = &current
            && entry.plugin.digest() == record.digest
            && entry.settings == record.settings
        {
            return Ok(false);
        }
        let wasm = wasm().await.map_err(PluginError::Unfetched)?;
        match current {
            Some(_) => {
                let settings = record.settings.clone();
                self.replace_from(
                    Source::Cluster,
                    authority,
                    tenant,
                    &record.name,
                    &wasm,
                    settings,
                    true,
                )
                .await?;
                Ok(true)
            }
            None => {
                let settings = record.settings.clone();
                self.install_from(
                    Source::Cluster,
                    authority,
                    tenant,
                    Some(&record.name),
                    &wasm,
                    settings,
                )
                .await?;
                Ok(true)
            }
        }
    }

    /// Removes the plugin at a place, as another host did; whether one was
    /// there.
    pub async fn apply_remove(
        &self,
        tenant: Option<&str>,
        name: &str,
    ) -> Result<bool, PluginError> {
        let place = (tenant.map(str::to_owned), name.to_owned());
        lock(&self.inner.elsewhere).remove(&place);
        if !lock(&self.inner.current).contains_key(&place) {
            return Ok(false);
        }
        self.remove_from(Source::Cluster, tenant, name).await?;
        Ok(true)
    }
}
