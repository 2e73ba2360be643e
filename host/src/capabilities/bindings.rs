//! The one place that runs `bindgen!` over `wit/`. Everything else imports
//! the generated types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "opbox:plugin/plugin",
    imports: {
        "opbox:plugin/invoke.call": async | store,
        "opbox:plugin/invoke.subscribe": async | store,
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
