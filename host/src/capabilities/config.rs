//! `wasi:config/store`: the values an operator configured for a plugin
//! (`[plugins.grants.config]` and `[plugins.grants.secrets]`). A plugin
//! without such a grant gets an error from every call, never a trap.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use wasmtime::component::{HasSelf, Linker};

use super::bindings::wasi::config::store::{self, Error, Host};
use super::denied::{Asked, Denial};
use super::grants::Grants;

/// A configuration value that is never displayed.
#[derive(Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// What one call of a plugin reads its configuration from.
#[derive(Debug)]
pub struct ConfigState {
    grants: Arc<Grants>,
    denial: Denial,
}

impl ConfigState {
    pub(super) fn new(grants: Arc<Grants>, denial: Denial) -> Self {
        Self { grants, denial }
    }

    fn granted(&self) -> Result<(), Error> {
        if self.grants.config_granted() {
            Ok(())
        } else {
            self.denial.report(Asked::Nothing);
            Err(Error::Upstream(
                "denied: wasi:config is not granted to this plugin".into(),
            ))
        }
    }
}

impl Host for ConfigState {
    fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        self.granted()?;
        Ok(self.grants.config_value(&key).map(str::to_owned))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
        self.granted()?;
        Ok(self.grants.config_values())
    }
}

pub(super) fn add_to_linker<T: super::View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn state<T: super::View>(store: &mut T) -> &mut ConfigState {
        &mut store.capabilities().0.config
    }
    store::add_to_linker::<T, HasSelf<ConfigState>>(linker, state)
}
