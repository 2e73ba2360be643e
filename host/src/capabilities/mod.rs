//! Host capabilities a plugin imports. One file per capability, each with the
//! same shape: the `Host` impl for the store state and its grant check.

mod config;
pub(crate) mod http;
mod invoke;
pub(crate) mod keyvalue;
mod log;
