//! Who is calling, and for how long.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// The context of one call, as the host sees it.
#[derive(Debug, Clone)]
pub struct Context {
    request_id: String,
    tenant: String,
    caller_id: Option<String>,
    scopes: Vec<String>,
    deadline: Duration,
}

impl Context {
    pub(crate) fn from_wit(ctx: crate::__private::CallContext) -> Self {
        Self {
            request_id: ctx.request_id,
            tenant: ctx.tenant,
            caller_id: ctx.caller_id,
            scopes: ctx.scopes,
            deadline: Duration::from_millis(ctx.deadline_ms),
        }
    }

    /// Unique per call; the same id appears in the host's logs.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The tenant this call runs for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The authenticated caller, if any.
    pub fn caller_id(&self) -> Option<&str> {
        self.caller_id.as_deref()
    }

    /// The caller's scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether the caller holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Time left, when the call started, before the host interrupts it.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Calls another query or mutation, `namespace/op`, and decodes its
    /// output. The call runs as this call's caller, with what is left of
    /// this call's deadline; this plugin's own internal operations are
    /// visible to it. Its errors come back as they are (a plugin's domain
    /// code, `NOT_FOUND`, `TIMEOUT`, …), ready to return with `?`.
    ///
    /// ```ignore
    /// let stats: Stats = ctx.call("textkit/stats", &json!({"text": text})).await?;
    /// ```
    pub async fn call<I, O>(&self, operation: &str, input: &I) -> Result<O>
    where
        I: Serialize + ?Sized,
        O: DeserializeOwned,
    {
        let input = encode(operation, input)?;
        let output = crate::__private::invoke::call(operation.to_owned(), input).await?;
        decode(operation, &output)
    }

    /// Subscribes to another operation's outputs, on the same terms as
    /// [`Context::call`]. Errors found before it starts come back here; later
    /// ones end the [`Subscription`]. Dropping the subscription, or returning
    /// from this call, aborts it on the host.
    ///
    /// ```ignore
    /// let mut ticks = ctx.subscribe::<_, Tick>("ticker/count", &json!({"to": 3})).await?;
    /// while let Some(tick) = ticks.next().await {
    ///     let tick = tick?;
    /// }
    /// ```
    pub async fn subscribe<I, O>(&self, operation: &str, input: &I) -> Result<Subscription<O>>
    where
        I: Serialize + ?Sized,
        O: DeserializeOwned,
    {
        let input = encode(operation, input)?;
        let reader = crate::__private::invoke::subscribe(operation.to_owned(), input).await?;
        Ok(Subscription {
            reader: Some(reader),
            operation: operation.to_owned(),
            _output: PhantomData,
        })
    }
}

/// The outputs of another operation this call subscribed to
/// ([`Context::subscribe`]).
pub struct Subscription<O> {
    /// `None` once the subscription has ended.
    reader: Option<wit_bindgen::StreamReader<crate::__private::Item>>,
    operation: String,
    _output: PhantomData<fn() -> O>,
}

impl<O> std::fmt::Debug for Subscription<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("operation", &self.operation)
            .field("ended", &self.reader.is_none())
            .finish()
    }
}

impl<O: DeserializeOwned> Subscription<O> {
    /// The next output; `None` once the subscription completed. An error is
    /// the last item.
    pub async fn next(&mut self) -> Option<Result<O>> {
        let item = self.reader.as_mut()?.next().await;
        let item = match item {
            Some(Ok(text)) => decode(&self.operation, &text),
            Some(Err(error)) => Err(error.into()),
            None => {
                self.reader = None;
                return None;
            }
        };
        if item.is_err() {
            self.reader = None;
        }
        Some(item)
    }

    /// The outputs as a [`futures::Stream`], e.g. to map and return as this
    /// operation's own subscription.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<O>> {
        futures::stream::unfold(self, |mut outputs| async move {
            let item = outputs.next().await?;
            Some((item, outputs))
        })
    }
}

/// The JSON text of `input` to `operation`.
pub(crate) fn encode<I: Serialize + ?Sized>(operation: &str, input: &I) -> Result<String> {
    serde_json::to_string(input)
        .map_err(|e| Error::internal(format!("cannot encode the input of `{operation}`: {e}")))
}

/// An output of `operation`, decoded.
fn decode<O: DeserializeOwned>(operation: &str, output: &str) -> Result<O> {
    crate::json::from_json(output)
        .map_err(|e| Error::internal(format!("unexpected output from `{operation}`: {e}")))
}
