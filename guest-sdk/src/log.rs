//! Logging into the host's log.
//!
//! Each line is attributed by the host to the plugin and to the request being
//! served, so there is nothing to add by hand. The macros take `format!`
//! arguments:
//!
//! ```ignore
//! opbox_sdk::info!("{} of {} done", done, total);
//! opbox_sdk::log::warn("a line as it is");
//! ```

use crate::__private::log::{self as wit, Level};

/// Logs at trace level.
pub fn trace(message: impl AsRef<str>) {
    wit::log(Level::Trace, message.as_ref());
}

/// Logs at debug level.
pub fn debug(message: impl AsRef<str>) {
    wit::log(Level::Debug, message.as_ref());
}

/// Logs at info level.
pub fn info(message: impl AsRef<str>) {
    wit::log(Level::Info, message.as_ref());
}

/// Logs at warn level.
pub fn warn(message: impl AsRef<str>) {
    wit::log(Level::Warn, message.as_ref());
}

/// Logs at error level.
pub fn error(message: impl AsRef<str>) {
    wit::log(Level::Error, message.as_ref());
}

/// Logs a formatted line at trace level: `opbox_sdk::trace!("{n} items")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log::trace(::std::format!($($arg)+))
    };
}

/// Logs a formatted line at debug level: `opbox_sdk::debug!("{n} items")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log::debug(::std::format!($($arg)+))
    };
}

/// Logs a formatted line at info level: `opbox_sdk::info!("{n} items")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log::info(::std::format!($($arg)+))
    };
}

/// Logs a formatted line at warn level: `opbox_sdk::warn!("{n} items")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::warn(::std::format!($($arg)+))
    };
}

/// Logs a formatted line at error level: `opbox_sdk::error!("{n} items")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log::error(::std::format!($($arg)+))
    };
}
