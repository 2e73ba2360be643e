//! Logging into the host's log.
//!
//! Each line is attributed by the host to the plugin and to the request being
//! served, so there is nothing to add by hand.

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
