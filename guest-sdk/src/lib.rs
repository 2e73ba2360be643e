//! Write [opbox] plugins in Rust.
//!
//! A plugin is one WebAssembly component offering typed operations: queries,
//! mutations and subscriptions, each with a JSON input and JSON output described
//! by JSON Schema. You write plain async Rust functions over serde types; the
//! SDK derives the schemas (with [schemars]), decodes inputs, encodes outputs,
//! lists the operations for the host and turns a panic into a readable error.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greeter"
//! version = "0.1.0"            # what `services/plugin` and `opbox inspect` show
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! # Not on crates.io yet: a path to (or a git checkout of) opbox's guest-sdk.
//! opbox-sdk = { path = "../opbox/guest-sdk" }
//! schemars = "1"
//! serde = { version = "1", features = ["derive"] }
//! serde_json = "1"             # for `serde_json::Value` inputs and nested calls
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use opbox_sdk::{Context, Error, Plugin, Result};
//! use opbox_sdk::futures::{Stream, stream};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Greet {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Greeting {
//!     message: String,
//! }
//!
//! async fn hello(_ctx: Context, input: Greet) -> Result<Greeting> {
//!     if input.name.is_empty() {
//!         return Err(Error::new("EMPTY_NAME", "say who to greet"));
//!     }
//!     Ok(Greeting { message: format!("Hello, {}!", input.name) })
//! }
//!
//! async fn countdown(_ctx: Context, from: u32) -> Result<impl Stream<Item = Result<u32>>> {
//!     Ok(stream::iter((0..=from).rev().map(Ok)))
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new()
//!         .query("hello", "Greets someone by name.", hello)
//!         .subscription("countdown", "Counts down to zero.", countdown)
//! }
//!
//! opbox_sdk::export!(plugin);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the file
//! `target/wasm32-wasip2/release/greeter.wasm` is the plugin. Callers then
//! reach `greeter/hello` and `greeter/countdown`.
//!
//! Writing plugins in Python or JavaScript, `opbox new` and `opbox dev`:
//! see the guide, [`docs/plugins.md`].
//!
//! # Operations without input, and settings
//!
//! A handler may take the [`Context`] alone (`async fn(Context) ->
//! Result<Out>`): the operation then accepts `null` or `{}`. Settings belong
//! to the operation they are called on:
//!
//! ```ignore
//! Plugin::new()
//!     .op(Operation::query("stats", "Usage figures.", stats).internal())
//!     .op(Operation::mutation("purge", "Deletes everything.", purge).scopes(["admin"]))
//! ```
//!
//! # Subscriptions take turns with the host
//!
//! A subscription written as an async stream hands the host its items when
//! it yields to it: at an `.await` that waits (a timer, a nested call, a
//! read). A stream that blocks between items instead (`std::thread::sleep`,
//! a busy loop) yields nothing until it is done, so its caller gets every
//! item at the end. Call [`yield_now`] after each item (before blocking
//! work), wait with an async timer between items (see `plugins/ticker`), or
//! write the subscription as an iterator ([`Plugin::subscription_iter`]),
//! whose items go out one by one as they are made. An iterator whose `next`
//! never waits may be [`Operation::batched`]: its items then go out in
//! batches, several times cheaper each.
//!
//! # Errors the host keeps for itself
//!
//! An [`Error`]'s code is the plugin's own. Codes the protocol reserves for
//! the host (`NOT_FOUND`, `UNAUTHORIZED`, `RESOURCE_EXHAUSTED`, …) may be
//! used, but reach the caller as the plugin's error: HTTP status 400, not
//! retryable, no `Retry-After`. Errors count against the plugin's
//! `output_bytes` like outputs.
//!
//! # What the host sees
//!
//! - The plugin's name and version come from its crate (`CARGO_PKG_NAME`,
//!   `CARGO_PKG_VERSION`); operators may mount it under another name.
//! - An input that does not decode answers `INVALID_INPUT` with serde's
//!   message. The host has already checked it against the derived schema.
//! - An [`Error`] is passed to the caller with its code and message.
//! - A panic traps the instance; the host answers `PLUGIN_FAILED` with the
//!   panic message and keeps serving everyone else. Every call runs in a fresh
//!   instance, so nothing survives from one call to the next.
//!
//! # Calling other operations
//!
//! [`Context::call`] calls a query or mutation, [`Context::subscribe`]
//! subscribes to a subscription and [`Context::run`] starts a byte-stream
//! operation ([`raw::Child`]), by full name, through the host's
//! dispatcher: as the same caller (tenant, scopes), within what is left of
//! the current call's deadline, with this plugin's internal operations
//! visible. Errors come back as the callee returned them, ready for `?`.
//! Returning (or being aborted) aborts everything the call started.
//!
//! ```ignore
//! let stats: Stats = ctx.call("textkit/stats", &json!({"text": text})).await?;
//! let ticks = ctx.subscribe::<_, Tick>("ticker/count", &json!({"to": 3})).await?;
//! Ok(ticks.into_stream())   // pass another subscription's outputs on
//! ```
//!
//! # Access control
//!
//! [`Operation::scopes`] names the scopes callers of an operation must hold;
//! operators may replace them. [`Context::scopes`] and [`Context::tenant`]
//! tell who is calling, for decisions finer than that.
//!
//! # Modules
//!
//! - [`log`] and the macros [`info!`], [`warn!`], …: log lines attributed to
//!   the plugin and the request.
//! - [`config`]: values (and secrets) the operator configured for the plugin.
//! - [`keyvalue`]: a persistent key-value store of the plugin's own.
//! - [`http`]: outbound HTTP requests, to the hosts the operator granted.
//!
//! [opbox]: https://github.com/opbox/opbox
//! [`docs/plugins.md`]: https://github.com/opbox/opbox/blob/main/docs/plugins.md
#![deny(missing_docs)]

// Lets the generated bindings name this crate the same way from inside it and
// from the plugin crates that expand `export!`.
extern crate self as opbox_sdk;

pub mod config;
mod context;
mod error;
pub mod http;
mod json;
pub mod keyvalue;
pub mod log;
mod plugin;
pub mod raw;
mod schema;

#[doc(hidden)]
#[path = "guest.rs"]
pub mod __private;

pub use context::{Context, Subscription};
pub use error::{Error, Result};
pub use futures;
pub use plugin::{Handler, IterHandler, OpType, Operation, Plugin, StreamHandler};

/// Gives the host a turn: in an async stream, the items ready so far are
/// handed over before the stream goes on. Useful before blocking work (such
/// as `std::thread::sleep`) inside a stream, which would otherwise hold back
/// the items already produced.
pub async fn yield_now() {
    wit_bindgen::yield_async().await;
}

/// Exports a plugin built by a function `fn() -> Plugin`.
///
/// Use it once, at the root of the plugin crate:
///
/// ```ignore
/// fn plugin() -> opbox_sdk::Plugin { /* … */ }
/// opbox_sdk::export!(plugin);
/// ```
///
/// The plugin is named after the crate (`CARGO_PKG_NAME`), versioned after it
/// (`CARGO_PKG_VERSION`), and built afresh in every instance.
#[macro_export]
macro_rules! export {
    ($build:path) => {
        #[doc(hidden)]
        struct __OpboxPlugin;

        impl __OpboxPlugin {
            fn plugin() -> &'static $crate::Plugin {
                ::std::thread_local! {
                    static PLUGIN: &'static $crate::Plugin =
                        ::std::boxed::Box::leak(::std::boxed::Box::new($build()));
                }
                PLUGIN.with(|plugin| *plugin)
            }
        }

        impl $crate::__private::Guest for __OpboxPlugin {
            fn describe() -> $crate::__private::Manifest {
                $crate::__private::describe(
                    ::std::env!("CARGO_PKG_NAME"),
                    ::std::env!("CARGO_PKG_VERSION"),
                    Self::plugin(),
                )
            }

            async fn call(
                ctx: $crate::__private::CallContext,
                op: ::std::string::String,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__private::CallError> {
                $crate::__private::call(Self::plugin(), ctx, op, input).await
            }

            async fn subscribe(
                ctx: $crate::__private::CallContext,
                op: ::std::string::String,
                input: ::std::string::String,
            ) -> ::std::result::Result<
                $crate::__private::wit_bindgen::StreamReader<$crate::__private::Item>,
                $crate::__private::CallError,
            > {
                $crate::__private::subscribe(Self::plugin(), ctx, op, input).await
            }
        }

        impl $crate::__private::RawGuest for __OpboxPlugin {
            fn describe() -> ::std::vec::Vec<$crate::__private::RawSpec> {
                $crate::__private::describe_raw(Self::plugin())
            }

            async fn run(
                ctx: $crate::__private::CallContext,
                op: ::std::string::String,
                input: ::std::string::String,
                stdin: $crate::__private::wit_bindgen::StreamReader<u8>,
            ) -> ::std::result::Result<$crate::__private::RawStarted, $crate::__private::CallError> {
                $crate::__private::run_raw(Self::plugin(), ctx, op, input, stdin)
            }
        }

        $crate::__private::__export_handler!(__OpboxPlugin with_types_in $crate::__private);
    };
}
