//! The one place that runs `bindgen!` over `wit/`. Everything else imports
//! the generated types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "opbox:plugin/plugin",
    imports: {
        "opbox:plugin/invoke.call": async | store,
        "opbox:plugin/invoke.subscribe": async | store,
        "opbox:plugin/invoke.run": async | store,
        "opbox:plugin/outbound.send": async | store,
        // Plain functions to the guest, which waits while they run.
        "opbox:plugin/blocking.call": async | store,
        "opbox:plugin/blocking.fetch": async | store,
        // Writes wait for the disk: on a blocking thread, not a worker.
        "wasi:keyvalue": async,
    },
    with: {
        "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::Bucket,
    },
    exports: { default: async | store },
});

pub use self::opbox::plugin::log::Level;
pub use self::opbox::plugin::types::{CallContext, CallError, Manifest, OpType, OperationSpec};

/// The optional export of byte-stream operations (`raw`, the world
/// `plugin-raw`): its own bindings, so that a plugin without it still
/// loads through [`PluginPre`]; every interface it shares with `plugin` is
/// the one generated above.
pub mod raw {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "opbox:plugin/plugin-raw",
        with: {
            "opbox:plugin/types": super::opbox::plugin::types,
            "opbox:plugin/log": super::opbox::plugin::log,
            "opbox:plugin/invoke": super::opbox::plugin::invoke,
            "opbox:plugin/outbound": super::opbox::plugin::outbound,
            "opbox:plugin/blocking": super::opbox::plugin::blocking,
            "wasi:config/store": super::wasi::config::store,
            "wasi:keyvalue/store": super::wasi::keyvalue::store,
            "wasi:keyvalue/atomics": super::wasi::keyvalue::atomics,
            "wasi:keyvalue/batch": super::wasi::keyvalue::batch,
        },
        exports: { default: async | store },
    });

    pub use self::exports::opbox::plugin::raw::{GuestIndices, RawSpec};
}
