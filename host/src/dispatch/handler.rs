//! What runs an operation: a host function, once or as a stream, or an
//! operation of a loaded plugin. The registry stores these without looking
//! into them; the dispatcher is the one that runs them.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

use super::Dispatcher;
use crate::call::{Attachment, CallError, Identity, Origin};
use crate::registry;
use crate::runtime::Plugin;

/// What a native handler knows about its call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The request id.
    pub request_id: Arc<str>,
    /// Who is calling.
    pub identity: Identity,
    /// Where the call came from.
    pub origin: Origin,
    /// When the call must be done by, if it has a deadline.
    pub deadline: Option<Instant>,
    /// The dispatcher, for handlers that look at the registry or call others.
    pub dispatcher: Dispatcher,
    /// Bytes beside the input ([`CallRequest::attachment`](crate::CallRequest::attachment)).
    pub attachment: Option<Attachment>,
}

/// A once-operation implemented in the host.
pub type NativeOnce =
    Arc<dyn Fn(CallContext, Value) -> BoxFuture<'static, Result<Value, CallError>> + Send + Sync>;

/// A subscription implemented in the host.
pub type NativeStream = Arc<
    dyn Fn(
            CallContext,
            Value,
        )
            -> BoxFuture<'static, Result<BoxStream<'static, Result<Value, CallError>>, CallError>>
        + Send
        + Sync,
>;

/// What runs when an operation is called.
#[derive(Clone)]
pub enum Handler {
    /// A host function answering once.
    NativeOnce(NativeOnce),
    /// A host function answering with a stream.
    NativeStream(NativeStream),
    /// An operation of a loaded plugin, by its name inside the plugin.
    Plugin {
        /// The plugin.
        plugin: Arc<Plugin>,
        /// The operation's name inside the plugin.
        op: String,
    },
    /// An operation another host of the cluster holds: listed here, its
    /// calls forwarded there. Never in this host's registry.
    Elsewhere,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NativeOnce(_) => f.write_str("NativeOnce"),
            Self::NativeStream(_) => f.write_str("NativeStream"),
            Self::Plugin { plugin, op } => write!(f, "Plugin({}/{op})", plugin.name()),
            Self::Elsewhere => f.write_str("Elsewhere"),
        }
    }
}

/// A registered operation, as the dispatcher runs it.
pub type Operation = registry::Operation<Handler>;

/// The operations the dispatcher routes to.
pub type Registry = registry::Registry<Handler>;

/// `plugin`'s operations as registry entries, their schemas as the runtime
/// compiled them.
pub fn plugin_operations(plugin: &Arc<Plugin>) -> Vec<Operation> {
    plugin
        .operations()
        .into_iter()
        .map(|op| {
            let handler = Handler::Plugin {
                plugin: plugin.clone(),
                op: op.op,
            };
            Operation::new(op.spec, op.input, handler)
        })
        .collect()
}
