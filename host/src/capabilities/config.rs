//! `wasi:config/store`: the values an operator configured for a plugin
//! (`[plugins.grants.config]` and `[plugins.grants.secrets]`). A plugin
//! without such a grant gets an error from every call, never a trap.

use crate::runtime::StoreState;
use crate::runtime::bindings::wasi::config::store::{Error, Host};

impl Host for StoreState {
    fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        self.config_granted()?;
        Ok(self.grants.config_value(&key).map(str::to_owned))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
        self.config_granted()?;
        Ok(self.grants.config_values())
    }
}

impl StoreState {
    fn config_granted(&self) -> Result<(), Error> {
        if self.grants.config_granted() {
            Ok(())
        } else {
            Err(Error::Upstream(
                "denied: wasi:config is not granted to this plugin".into(),
            ))
        }
    }
}
