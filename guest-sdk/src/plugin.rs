//! The typed operation registry a plugin author builds.

use std::fmt;
use std::future::Future;

use futures::future::LocalBoxFuture;
use futures::stream::{LocalBoxStream, Stream, StreamExt};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Error, Result};

type OnceHandler = Box<dyn Fn(Context, String) -> LocalBoxFuture<'static, Result<String>>>;
type StreamHandler = Box<dyn Fn(Context, String) -> LocalBoxFuture<'static, Result<Items>>>;

/// A subscription's encoded outputs.
pub(crate) enum Items {
    /// From an async stream: ready items are written to the host in batches.
    Stream(LocalBoxStream<'static, Result<String>>),
    /// From an iterator, which may block in `next`: each item is written as
    /// soon as it exists.
    Iter(Box<dyn Iterator<Item = Result<String>>>),
}

/// Whether an operation is a query, a mutation or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpType {
    /// No side effects; one output.
    Query,
    /// May change state; one output.
    Mutation,
    /// A stream of outputs.
    Subscription,
}

pub(crate) enum Handler {
    Once(OnceHandler),
    Stream(StreamHandler),
}

/// One registered operation: its spec and its handler.
pub(crate) struct Op {
    pub(crate) name: String,
    pub(crate) op_type: OpType,
    pub(crate) description: String,
    /// Schemas are only needed by `describe`: generated on demand, not in
    /// every instance that serves a call.
    pub(crate) input_schema: fn() -> String,
    pub(crate) output_schema: fn() -> String,
    pub(crate) internal: bool,
    pub(crate) required_scopes: Vec<String>,
    pub(crate) handler: Handler,
}

/// The operations of a plugin.
///
/// Build one in a function and hand that function to [`export!`](crate::export):
///
/// ```
/// use opbox_sdk::{Context, Plugin, Result};
///
/// async fn shout(_ctx: Context, text: String) -> Result<String> {
///     Ok(text.to_uppercase())
/// }
///
/// fn plugin() -> Plugin {
///     Plugin::new().query("shout", "Upper-cases a string.", shout)
/// }
/// # let _ = plugin();
/// ```
///
/// Inputs are decoded with serde (a mismatch answers `INVALID_INPUT` with
/// serde's message), outputs encoded with serde, and both JSON Schemas derived
/// with schemars. Modifiers such as [`Plugin::internal`] and
/// [`Plugin::scopes`] apply to the operation added last.
#[derive(Default)]
pub struct Plugin {
    pub(crate) ops: Vec<Op>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.ops.iter().map(|op| op.name.as_str()).collect();
        f.debug_struct("Plugin").field("ops", &names).finish()
    }
}

impl Plugin {
    /// A plugin with no operations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a query: an operation without side effects.
    ///
    /// `handler` is an `async fn(Context, In) -> Result<Out>`.
    #[must_use]
    pub fn query<In, Out, F, Fut>(self, name: &str, description: &str, handler: F) -> Self
    where
        In: DeserializeOwned + JsonSchema + 'static,
        Out: Serialize + JsonSchema + 'static,
        F: Fn(Context, In) -> Fut + 'static,
        Fut: Future<Output = Result<Out>> + 'static,
    {
        self.once(OpType::Query, name, description, handler)
    }

    /// Adds a mutation: an operation that may change state.
    ///
    /// `handler` is an `async fn(Context, In) -> Result<Out>`.
    #[must_use]
    pub fn mutation<In, Out, F, Fut>(self, name: &str, description: &str, handler: F) -> Self
    where
        In: DeserializeOwned + JsonSchema + 'static,
        Out: Serialize + JsonSchema + 'static,
        F: Fn(Context, In) -> Fut + 'static,
        Fut: Future<Output = Result<Out>> + 'static,
    {
        self.once(OpType::Mutation, name, description, handler)
    }

    /// Adds a subscription whose outputs come from an async stream.
    ///
    /// `handler` is an `async fn(Context, In) -> Result<impl Stream<Item =
    /// Result<Out>>>`. An `Err` before the stream starts fails the call; an
    /// `Err` item ends the subscription with that error; the end of the stream
    /// completes it. The host pulls items only as fast as the caller takes
    /// them.
    #[must_use]
    pub fn subscription<In, Out, F, Fut, S>(self, name: &str, description: &str, handler: F) -> Self
    where
        In: DeserializeOwned + JsonSchema + 'static,
        Out: Serialize + JsonSchema + 'static,
        F: Fn(Context, In) -> Fut + 'static,
        Fut: Future<Output = Result<S>> + 'static,
        S: Stream<Item = Result<Out>> + 'static,
    {
        let handler =
            move |ctx: Context, input: String| -> LocalBoxFuture<'static, Result<Items>> {
                match decode::<In>(&input) {
                    Ok(input) => {
                        let started = handler(ctx, input);
                        Box::pin(async move {
                            let items = started.await?;
                            let encoded = items.map(|item| item.and_then(|out| encode(&out)));
                            Ok(Items::Stream(encoded.boxed_local()))
                        })
                    }
                    Err(e) => Box::pin(async move { Err(e) }),
                }
            };
        self.push::<In, Out>(
            OpType::Subscription,
            name,
            description,
            Handler::Stream(Box::new(handler)),
        )
    }

    /// Adds a subscription whose outputs come from an iterator.
    ///
    /// `handler` is a `fn(Context, In) -> Result<impl IntoIterator<Item =
    /// Result<Out>>>`. The iterator runs lazily and may block (e.g.
    /// `std::thread::sleep`) between items: each item goes to the host as soon
    /// as `next` returns it. For high item rates prefer
    /// [`Plugin::subscription`] with an async stream, whose ready items are
    /// handed over in batches.
    #[must_use]
    pub fn subscription_iter<In, Out, F, I>(self, name: &str, description: &str, handler: F) -> Self
    where
        In: DeserializeOwned + JsonSchema + 'static,
        Out: Serialize + JsonSchema + 'static,
        F: Fn(Context, In) -> Result<I> + 'static,
        I: IntoIterator<Item = Result<Out>> + 'static,
    {
        let handler =
            move |ctx: Context, input: String| -> LocalBoxFuture<'static, Result<Items>> {
                let items = decode::<In>(&input)
                    .and_then(|input| handler(ctx, input))
                    .map(|items| {
                        let encoded = items
                            .into_iter()
                            .map(|item| item.and_then(|out| encode(&out)));
                        Items::Iter(Box::new(encoded))
                    });
                Box::pin(async move { items })
            };
        self.push::<In, Out>(
            OpType::Subscription,
            name,
            description,
            Handler::Stream(Box::new(handler)),
        )
    }

    /// Marks the operation added last as internal: callable only from other
    /// operations, never from the wire.
    #[must_use]
    pub fn internal(mut self) -> Self {
        if let Some(op) = self.ops.last_mut() {
            op.internal = true;
        }
        self
    }

    /// Requires callers of the operation added last to hold all of `scopes`.
    #[must_use]
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        if let Some(op) = self.ops.last_mut() {
            op.required_scopes = scopes.into_iter().map(Into::into).collect();
        }
        self
    }

    fn once<In, Out, F, Fut>(
        self,
        op_type: OpType,
        name: &str,
        description: &str,
        handler: F,
    ) -> Self
    where
        In: DeserializeOwned + JsonSchema + 'static,
        Out: Serialize + JsonSchema + 'static,
        F: Fn(Context, In) -> Fut + 'static,
        Fut: Future<Output = Result<Out>> + 'static,
    {
        let handler =
            move |ctx: Context, input: String| -> LocalBoxFuture<'static, Result<String>> {
                match decode::<In>(&input) {
                    Ok(input) => {
                        let output = handler(ctx, input);
                        Box::pin(async move { encode(&output.await?) })
                    }
                    Err(e) => Box::pin(async move { Err(e) }),
                }
            };
        self.push::<In, Out>(op_type, name, description, Handler::Once(Box::new(handler)))
    }

    fn push<In: JsonSchema, Out: JsonSchema>(
        mut self,
        op_type: OpType,
        name: &str,
        description: &str,
        handler: Handler,
    ) -> Self {
        self.ops.push(Op {
            name: name.to_owned(),
            op_type,
            description: description.to_owned(),
            input_schema: schema_of::<In>,
            output_schema: schema_of::<Out>,
            internal: false,
            required_scopes: Vec::new(),
            handler,
        });
        self
    }

    pub(crate) fn op(&self, name: &str) -> Option<&Op> {
        self.ops.iter().find(|op| op.name == name)
    }
}

fn schema_of<T: JsonSchema>() -> String {
    schemars::schema_for!(T).to_value().to_string()
}

fn decode<In: DeserializeOwned>(input: &str) -> Result<In> {
    crate::json::from_json(input).map_err(|e| Error::invalid_input(e.to_string()))
}

fn encode<Out: Serialize>(output: &Out) -> Result<String> {
    serde_json::to_string(output)
        .map_err(|e| Error::internal(format!("cannot encode the output: {e}")))
}
