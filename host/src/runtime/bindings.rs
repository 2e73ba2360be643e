//! The one place that runs `bindgen!` over `wit/`. Everything else imports
//! the generated types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "opbox:plugin/plugin",
    imports: {
        "opbox:plugin/invoke.call": async | store,
        "opbox:plugin/invoke.subscribe": async | store,
    },
    exports: { default: async | store },
});

pub use self::opbox::plugin::log::Level;
pub use self::opbox::plugin::types::{CallContext, CallError, Manifest, OpType, OperationSpec};
