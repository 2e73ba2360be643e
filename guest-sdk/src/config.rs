//! Values the operator configured for this plugin, secrets included
//! (`wasi:config/store`).
//!
//! ```toml
//! [[plugins]]
//! path = "greeter.wasm"
//! [plugins.grants.config]
//! greeting = "Hello"
//! [plugins.grants.secrets]       # like config, but never logged or shown
//! api_key = "…"
//! ```
//!
//! ```ignore
//! let greeting = opbox_sdk::config::get("greeting")?.unwrap_or_else(|| "Hi".into());
//! ```
//!
//! Without a grant, every function fails with the code `CONFIG_DENIED`.

use crate::__private::wasi_config::{self, Error as WasiError};
use crate::{Error, Result};

/// The value of `key`, or `None` when the operator set none.
pub fn get(key: &str) -> Result<Option<String>> {
    wasi_config::get(key).map_err(error)
}

/// Every key and value configured for this plugin.
pub fn all() -> Result<Vec<(String, String)>> {
    wasi_config::get_all().map_err(error)
}

fn error(e: WasiError) -> Error {
    let message = match e {
        WasiError::Upstream(message) | WasiError::Io(message) => message,
    };
    let code = if message.starts_with("denied") {
        "CONFIG_DENIED"
    } else {
        "CONFIG_UNAVAILABLE"
    };
    Error::new(code, message)
}
