//! The glue between the WIT world and a [`Plugin`]: not part of the public API.
//!
//! [`export!`](crate::export) defines a type in the plugin crate whose
//! `handler` implementation forwards to the functions here.

use std::sync::Once;

use futures::{StreamExt, stream};

use crate::plugin::{Erased, Items, OpType};
use crate::{Context, Error, Plugin};

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "opbox:plugin/plugin-raw",
        pub_export_macro: true,
        export_macro_name: "__export_handler",
        default_bindings_module: "::opbox_sdk::__private",
        runtime_path: "::opbox_sdk::__private::wit_bindgen::rt",
        generate_all,
    });
}

pub use bindings::__export_handler;
pub use bindings::exports::opbox::plugin::handler::Guest;
pub use bindings::exports::opbox::plugin::raw::{Guest as RawGuest, RawSpec};
pub use bindings::opbox::plugin::types::{CallContext, CallError, Manifest};
pub use bindings::opbox::plugin::{invoke, log};
pub use bindings::wasi::config::store as wasi_config;
pub use bindings::wasi::keyvalue as wasi_keyvalue;
#[doc(hidden)]
pub use bindings::{exports, opbox, wit_future, wit_stream};
pub use wit_bindgen;

/// The item type of a subscription's stream, as the WIT world spells it.
pub type Item = Result<String, CallError>;

/// What `raw.run` hands back at once: stdout, stderr and the status.
pub type RawStarted = (
    wit_bindgen::StreamReader<u8>,
    wit_bindgen::StreamReader<u8>,
    wit_bindgen::FutureReader<Result<u8, CallError>>,
);

/// How many ready items are handed to the host in one stream write.
const WRITE_BATCH: usize = 64;

/// Routes panics to the host before the instance traps, so the caller's
/// `PLUGIN_FAILED` error carries the panic message.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "Box<dyn Any>".to_owned());
            let message = match info.location() {
                Some(at) => format!("{message} (at {}:{})", short_path(at.file()), at.line()),
                None => message,
            };
            log::fatal(&message);
        }));
    });
}

/// The last three components of a source path: enough to find the line, and
/// no absolute path of the machine the plugin was built on.
fn short_path(path: &str) -> String {
    let parts: Vec<&str> = path.rsplit(['/', '\\']).take(3).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// `describe`: the manifest of `plugin`.
pub fn describe(name: &str, version: &str, plugin: &Plugin) -> Manifest {
    install_panic_hook();
    use bindings::opbox::plugin::types::{OpType as WitOpType, OperationSpec};
    let operations = plugin
        .ops
        .iter()
        .map(|op| OperationSpec {
            name: op.name.clone(),
            op_type: match op.op_type {
                OpType::Query => WitOpType::Query,
                OpType::Mutation => WitOpType::Mutation,
                OpType::Subscription => WitOpType::Subscription,
            },
            description: op.description.clone(),
            input_schema: (op.input_schema)(),
            output_schema: (op.output_schema)(),
            internal: op.internal,
            required_scopes: op.required_scopes.clone(),
        })
        .collect();
    Manifest {
        name: name.to_owned(),
        version: version.to_owned(),
        operations,
    }
}

/// `call`: runs a query or mutation of `plugin`.
pub async fn call(
    plugin: &Plugin,
    ctx: CallContext,
    op: String,
    input: String,
) -> Result<String, CallError> {
    install_panic_hook();
    match plugin.op_named(&op).map(|op| &op.handler) {
        Some(Erased::Once(handler)) => Ok(handler(Context::from_wit(ctx), input).await?),
        Some(Erased::Stream(_)) => Err(wrong_type(&op, "a subscription")),
        None => Err(unknown(&op)),
    }
}

/// `subscribe`: starts a subscription of `plugin`; a spawned task feeds the
/// stream in batches of ready items while the host reads.
pub async fn subscribe(
    plugin: &Plugin,
    ctx: CallContext,
    op: String,
    input: String,
) -> Result<wit_bindgen::StreamReader<Item>, CallError> {
    install_panic_hook();
    let Some(found) = plugin.op_named(&op) else {
        return Err(unknown(&op));
    };
    let items = match &found.handler {
        Erased::Stream(handler) => handler(Context::from_wit(ctx), input).await?,
        Erased::Once(_) => return Err(wrong_type(&op, "a query or mutation")),
    };
    let items = match items {
        Items::Iter(items) if found.batched => Items::Stream(stream::iter(items).boxed_local()),
        items => items,
    };
    let (mut writer, reader) = wit_stream::new::<Item>();
    wit_bindgen::spawn_local(async move {
        match items {
            Items::Stream(items) => {
                let mut batches = items.ready_chunks(WRITE_BATCH);
                while let Some(batch) = batches.next().await {
                    let mut out = Vec::with_capacity(batch.len());
                    let mut failed = false;
                    for item in batch {
                        failed = item.is_err();
                        out.push(item.map_err(CallError::from));
                        if failed {
                            break;
                        }
                    }
                    // `write_all` hands back what the host did not take: the
                    // reader is gone, so nobody wants the rest.
                    if !writer.write_all(out).await.is_empty() || failed {
                        return;
                    }
                }
            }
            Items::Iter(items) => {
                for item in items {
                    let failed = item.is_err();
                    let unsent = writer.write_one(item.map_err(CallError::from)).await;
                    if unsent.is_some() || failed {
                        return;
                    }
                }
            }
        }
    });
    Ok(reader)
}

/// `raw.describe`: the byte-stream operations of `plugin`.
pub fn describe_raw(plugin: &Plugin) -> Vec<RawSpec> {
    install_panic_hook();
    plugin
        .raw
        .iter()
        .map(|op| RawSpec {
            name: op.name.clone(),
            description: op.description.clone(),
            input_schema: (op.input_schema)(),
            internal: op.internal,
            required_scopes: op.required_scopes.clone(),
        })
        .collect()
}

/// `raw.run`: starts a byte-stream operation of `plugin` on a task of its
/// own, and hands back its outputs and status at once.
pub fn run_raw(
    plugin: &'static Plugin,
    ctx: CallContext,
    op: String,
    input: String,
    stdin: wit_bindgen::StreamReader<u8>,
) -> Result<RawStarted, CallError> {
    install_panic_hook();
    let Some(found) = plugin.raw.iter().find(|raw| raw.name == op) else {
        return Err(match plugin.op_named(&op) {
            Some(_) => wrong_type(&op, "not a byte-stream operation"),
            None => unknown(&op),
        });
    };
    let (stdout, stdout_reader) = wit_stream::new::<u8>();
    let (stderr, stderr_reader) = wit_stream::new::<u8>();
    let (status, status_reader) = wit_future::new::<Result<u8, CallError>>(|| {
        Err(Error::internal("the operation ended without a status").into())
    });
    let pipes = crate::raw::Pipes {
        stdin: crate::raw::Reader::new(stdin),
        stdout: crate::raw::Writer::new(stdout),
        stderr: crate::raw::Writer::new(stderr),
    };
    let run = (found.handler)(Context::from_wit(ctx), input, pipes);
    wit_bindgen::spawn_local(async move {
        // The pipes were moved into `run`: its outputs end when it returns,
        // before the status is written.
        let exit = run.await.map_err(CallError::from);
        let _ = status.write(exit).await;
    });
    Ok((stdout_reader, stderr_reader, status_reader))
}

fn unknown(op: &str) -> CallError {
    Error::new("NOT_FOUND", format!("this plugin has no operation `{op}`")).into()
}

fn wrong_type(op: &str, what: &str) -> CallError {
    Error::new("INVALID_OPERATION_TYPE", format!("`{op}` is {what}")).into()
}
