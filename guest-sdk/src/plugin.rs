//! The typed operation registry a plugin author builds.

use std::fmt;
use std::future::Future;

use futures::future::LocalBoxFuture;
use futures::stream::{LocalBoxStream, Stream, StreamExt};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Error, Result};

type OnceFn = Box<dyn Fn(Context, String) -> LocalBoxFuture<'static, Result<String>>>;
type StreamFn = Box<dyn Fn(Context, String) -> LocalBoxFuture<'static, Result<Items>>>;

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

pub(crate) enum Erased {
    Once(OnceFn),
    Stream(StreamFn),
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
    /// An iterator's items are written in batches (see
    /// [`Operation::batched`]).
    pub(crate) batched: bool,
    pub(crate) handler: Erased,
}

/// The operations of a plugin.
///
/// Build one in a function and hand that function to [`export!`](crate::export):
///
/// ```
/// use opbox_sdk::{Context, Operation, Plugin, Result};
///
/// async fn shout(_ctx: Context, text: String) -> Result<String> {
///     Ok(text.to_uppercase())
/// }
///
/// async fn version(_ctx: Context) -> Result<&'static str> {
///     Ok("1.0")
/// }
///
/// fn plugin() -> Plugin {
///     Plugin::new()
///         .query("shout", "Upper-cases a string.", shout)
///         .op(Operation::query("version", "The plugin's version.", version).internal())
/// }
/// # let _ = plugin();
/// ```
///
/// A handler takes the call's [`Context`] and, if the operation has one, its
/// input. Inputs are decoded with serde (a mismatch answers `INVALID_INPUT`
/// with serde's message), outputs encoded with serde, and both JSON Schemas
/// derived with schemars (inputs closed to unknown fields; see the crate's
/// `schema` module). An operation without an input accepts `null` or
/// `{}`. Settings such as [`Operation::internal`] and [`Operation::scopes`]
/// belong to the [`Operation`] they are called on.
#[derive(Default)]
pub struct Plugin {
    pub(crate) ops: Vec<Op>,
    pub(crate) raw: Vec<crate::raw::RawOp>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.ops.iter().map(|op| op.name.as_str()).collect();
        let raw: Vec<&str> = self.raw.iter().map(|op| op.name.as_str()).collect();
        f.debug_struct("Plugin")
            .field("ops", &names)
            .field("raw", &raw)
            .finish()
    }
}

impl Plugin {
    /// A plugin with no operations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an operation built with its settings.
    #[must_use]
    pub fn op(mut self, operation: Operation) -> Self {
        self.ops.push(operation.0);
        self
    }

    /// Adds a query: an operation without side effects.
    ///
    /// `handler` is an `async fn(Context, In) -> Result<Out>`, or an
    /// `async fn(Context) -> Result<Out>` for a query without input.
    #[must_use]
    pub fn query<Args>(self, name: &str, description: &str, handler: impl Handler<Args>) -> Self {
        self.op(Operation::query(name, description, handler))
    }

    /// Adds a mutation: an operation that may change state. `handler` is
    /// as for [`Plugin::query`].
    #[must_use]
    pub fn mutation<Args>(
        self,
        name: &str,
        description: &str,
        handler: impl Handler<Args>,
    ) -> Self {
        self.op(Operation::mutation(name, description, handler))
    }

    /// Adds a subscription whose outputs come from an async stream.
    ///
    /// `handler` is an `async fn(Context, In) -> Result<impl Stream<Item =
    /// Result<Out>>>` (or without `In`). An `Err` before the stream starts
    /// fails the call; an `Err` item ends the subscription with that error;
    /// the end of the stream completes it. The host pulls items only as fast
    /// as the caller takes them.
    #[must_use]
    pub fn subscription<Args>(
        self,
        name: &str,
        description: &str,
        handler: impl StreamHandler<Args>,
    ) -> Self {
        self.op(Operation::subscription(name, description, handler))
    }

    /// Adds a subscription whose outputs come from an iterator.
    ///
    /// `handler` is a `fn(Context, In) -> Result<impl IntoIterator<Item =
    /// Result<Out>>>` (or without `In`). The iterator runs lazily and may
    /// block (e.g. `std::thread::sleep`) between items: each item goes to
    /// the host as soon as `next` returns it. For high item rates, mark an
    /// iterator that never waits [`Operation::batched`], or write an async
    /// stream ([`Plugin::subscription`]): both hand items over in batches.
    #[must_use]
    pub fn subscription_iter<Args>(
        self,
        name: &str,
        description: &str,
        handler: impl IterHandler<Args>,
    ) -> Self {
        self.op(Operation::subscription_iter(name, description, handler))
    }

    /// Adds a byte-stream operation (the raw carriage, [`crate::raw`]).
    ///
    /// `handler` is an `async fn(Context, In, Pipes) -> Result<u8>`, or an
    /// `async fn(Context, Pipes) -> Result<u8>` for one without arguments:
    /// it reads the caller's bytes from `pipes.stdin`, writes to
    /// `pipes.stdout` and `pipes.stderr`, and returns its exit code.
    #[must_use]
    pub fn raw<Args>(
        self,
        name: &str,
        description: &str,
        handler: impl crate::raw::RawHandler<Args>,
    ) -> Self {
        self.raw_op(crate::raw::RawOperation::new(name, description, handler))
    }

    /// Adds a byte-stream operation built with its settings.
    #[must_use]
    pub fn raw_op(mut self, operation: crate::raw::RawOperation) -> Self {
        self.raw.push(operation.0);
        self
    }

    pub(crate) fn op_named(&self, name: &str) -> Option<&Op> {
        self.ops.iter().find(|op| op.name == name)
    }
}

/// One operation and its settings, for [`Plugin::op`].
///
/// ```
/// # use opbox_sdk::{Context, Operation, Result};
/// # async fn purge(_ctx: Context) -> Result<u32> { Ok(0) }
/// let purge = Operation::mutation("purge", "Deletes everything.", purge).scopes(["admin"]);
/// ```
pub struct Operation(Op);

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.0.name)
            .field("op_type", &self.0.op_type)
            .field("internal", &self.0.internal)
            .field("required_scopes", &self.0.required_scopes)
            .finish_non_exhaustive()
    }
}

impl Operation {
    /// A query; see [`Plugin::query`].
    pub fn query<Args>(name: &str, description: &str, handler: impl Handler<Args>) -> Self {
        Self::new(OpType::Query, name, description, handler.into_parts())
    }

    /// A mutation; see [`Plugin::mutation`].
    pub fn mutation<Args>(name: &str, description: &str, handler: impl Handler<Args>) -> Self {
        Self::new(OpType::Mutation, name, description, handler.into_parts())
    }

    /// A subscription from an async stream; see [`Plugin::subscription`].
    pub fn subscription<Args>(
        name: &str,
        description: &str,
        handler: impl StreamHandler<Args>,
    ) -> Self {
        Self::new(
            OpType::Subscription,
            name,
            description,
            handler.into_parts(),
        )
    }

    /// A subscription from an iterator; see [`Plugin::subscription_iter`].
    pub fn subscription_iter<Args>(
        name: &str,
        description: &str,
        handler: impl IterHandler<Args>,
    ) -> Self {
        Self::new(
            OpType::Subscription,
            name,
            description,
            handler.into_parts(),
        )
    }

    /// Makes it internal: callable only from other operations, never from
    /// the wire.
    #[must_use]
    pub fn internal(mut self) -> Self {
        self.0.internal = true;
        self
    }

    /// Writes a subscription iterator's items to the host in batches of up
    /// to 64, as an async stream's ready items are, instead of one write per
    /// item: several times cheaper per item when items are small.
    ///
    /// Only for an iterator whose `next` never waits (no sleep, no host call
    /// that blocks): a batch goes out when it is full or the iterator ends,
    /// so the items made before a `next` that waits are held until it
    /// returns, and lost if the call ends there. Has no effect on queries,
    /// mutations or async streams.
    ///
    /// ```
    /// # use opbox_sdk::{Context, Operation, Plugin, Result};
    /// fn squares(_ctx: Context, to: u64) -> Result<impl Iterator<Item = Result<u64>>> {
    ///     Ok((0..to).map(|n| Ok(n * n)))
    /// }
    /// let plugin = Plugin::new()
    ///     .op(Operation::subscription_iter("squares", "Squares below `to`.", squares).batched());
    /// # let _ = plugin;
    /// ```
    #[must_use]
    pub fn batched(mut self) -> Self {
        self.0.batched = true;
        self
    }

    /// Requires its callers to hold all of `scopes` (operators may replace
    /// them).
    #[must_use]
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.0.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    fn new(op_type: OpType, name: &str, description: &str, parts: Parts) -> Self {
        Self(Op {
            name: name.to_owned(),
            op_type,
            description: description.to_owned(),
            input_schema: parts.input_schema,
            output_schema: parts.output_schema,
            internal: false,
            required_scopes: Vec::new(),
            batched: false,
            handler: parts.handler,
        })
    }
}

/// What a handler becomes: its schemas and its type-erased function.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct Parts {
    input_schema: fn() -> String,
    output_schema: fn() -> String,
    handler: Erased,
}

/// A query's or mutation's function: `async fn(Context, In) -> Result<Out>`
/// or `async fn(Context) -> Result<Out>`. `Args` tells the two apart; it is
/// inferred.
pub trait Handler<Args>: 'static {
    #[doc(hidden)]
    fn into_parts(self) -> Parts;
}

/// A subscription's function returning an async stream:
/// `async fn(Context, In) -> Result<impl Stream<Item = Result<Out>>>` or
/// `async fn(Context) -> …`.
pub trait StreamHandler<Args>: 'static {
    #[doc(hidden)]
    fn into_parts(self) -> Parts;
}

/// A subscription's function returning an iterator:
/// `fn(Context, In) -> Result<impl IntoIterator<Item = Result<Out>>>` or
/// `fn(Context) -> …`.
pub trait IterHandler<Args>: 'static {
    #[doc(hidden)]
    fn into_parts(self) -> Parts;
}

impl<F, Fut, In, Out> Handler<(In,)> for F
where
    F: Fn(Context, In) -> Fut + 'static,
    Fut: Future<Output = Result<Out>> + 'static,
    In: DeserializeOwned + JsonSchema + 'static,
    Out: Serialize + JsonSchema + 'static,
{
    fn into_parts(self) -> Parts {
        let handler =
            move |ctx: Context, input: String| -> LocalBoxFuture<'static, Result<String>> {
                match decode::<In>(&input) {
                    Ok(input) => {
                        let output = self(ctx, input);
                        Box::pin(async move { encode(&output.await?) })
                    }
                    Err(e) => Box::pin(async move { Err(e) }),
                }
            };
        Parts {
            input_schema: crate::schema::input::<In>,
            output_schema: crate::schema::output::<Out>,
            handler: Erased::Once(Box::new(handler)),
        }
    }
}

impl<F, Fut, Out> Handler<()> for F
where
    F: Fn(Context) -> Fut + 'static,
    Fut: Future<Output = Result<Out>> + 'static,
    Out: Serialize + JsonSchema + 'static,
{
    fn into_parts(self) -> Parts {
        let handler =
            move |ctx: Context, _input: String| -> LocalBoxFuture<'static, Result<String>> {
                let output = self(ctx);
                Box::pin(async move { encode(&output.await?) })
            };
        Parts {
            input_schema: crate::schema::no_input,
            output_schema: crate::schema::output::<Out>,
            handler: Erased::Once(Box::new(handler)),
        }
    }
}

impl<F, Fut, S, In, Out> StreamHandler<(In,)> for F
where
    F: Fn(Context, In) -> Fut + 'static,
    Fut: Future<Output = Result<S>> + 'static,
    S: Stream<Item = Result<Out>> + 'static,
    In: DeserializeOwned + JsonSchema + 'static,
    Out: Serialize + JsonSchema + 'static,
{
    fn into_parts(self) -> Parts {
        let handler =
            move |ctx: Context, input: String| -> LocalBoxFuture<'static, Result<Items>> {
                match decode::<In>(&input) {
                    Ok(input) => stream_items(self(ctx, input)),
                    Err(e) => Box::pin(async move { Err(e) }),
                }
            };
        Parts {
            input_schema: crate::schema::input::<In>,
            output_schema: crate::schema::output::<Out>,
            handler: Erased::Stream(Box::new(handler)),
        }
    }
}

impl<F, Fut, S, Out> StreamHandler<()> for F
where
    F: Fn(Context) -> Fut + 'static,
    Fut: Future<Output = Result<S>> + 'static,
    S: Stream<Item = Result<Out>> + 'static,
    Out: Serialize + JsonSchema + 'static,
{
    fn into_parts(self) -> Parts {
        let handler = move |ctx: Context, _input: String| stream_items(self(ctx));
        Parts {
            input_schema: crate::schema::no_input,
            output_schema: crate::schema::output::<Out>,
            handler: Erased::Stream(Box::new(handler)),
        }
    }
}

impl<F, I, In, Out> IterHandler<(In,)> for F
where
    F: Fn(Context, In) -> Result<I> + 'static,
    I: IntoIterator<Item = Result<Out>> + 'static,
    In: DeserializeOwned + JsonSchema + 'static,
    Out: Serialize + JsonSchema + 'static,
{
    fn into_parts(self) -> Parts {
        let handler =
            move |ctx: Context, input: String| -> LocalBoxFuture<'static, Result<Items>> {
                let items = decode::<In>(&input)
                    .and_then(|input| self(ctx, input))
                    .map(iter_items);
                Box::pin(async move { items })
            };
        Parts {
            input_schema: crate::schema::input::<In>,
            output_schema: crate::schema::output::<Out>,
            handler: Erased::Stream(Box::new(handler)),
        }
    }
}

impl<F, I, Out> IterHandler<()> for F
where
    F: Fn(Context) -> Result<I> + 'static,
    I: IntoIterator<Item = Result<Out>> + 'static,
    Out: Serialize + JsonSchema + 'static,
{
    fn into_parts(self) -> Parts {
        let handler =
            move |ctx: Context, _input: String| -> LocalBoxFuture<'static, Result<Items>> {
                let items = self(ctx).map(iter_items);
                Box::pin(async move { items })
            };
        Parts {
            input_schema: crate::schema::no_input,
            output_schema: crate::schema::output::<Out>,
            handler: Erased::Stream(Box::new(handler)),
        }
    }
}

/// A started async stream as encoded items.
fn stream_items<Fut, S, Out>(started: Fut) -> LocalBoxFuture<'static, Result<Items>>
where
    Fut: Future<Output = Result<S>> + 'static,
    S: Stream<Item = Result<Out>> + 'static,
    Out: Serialize + 'static,
{
    Box::pin(async move {
        let items = started.await?;
        let encoded = items.map(|item| item.and_then(|out| encode(&out)));
        Ok(Items::Stream(encoded.boxed_local()))
    })
}

/// An iterator as encoded items.
fn iter_items<I, Out>(items: I) -> Items
where
    I: IntoIterator<Item = Result<Out>> + 'static,
    Out: Serialize + 'static,
{
    let encoded = items
        .into_iter()
        .map(|item| item.and_then(|out| encode(&out)));
    Items::Iter(Box::new(encoded))
}

fn decode<In: DeserializeOwned>(input: &str) -> Result<In> {
    crate::json::from_json(input).map_err(|e| Error::invalid_input(e.to_string()))
}

fn encode<Out: Serialize>(output: &Out) -> Result<String> {
    serde_json::to_string(output)
        .map_err(|e| Error::internal(format!("cannot encode the output: {e}")))
}
