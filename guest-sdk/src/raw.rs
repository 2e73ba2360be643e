//! Byte-stream operations: the raw carriage.
//!
//! A raw operation takes typed arguments first, like any operation, then
//! reads the caller's bytes from [`Pipes::stdin`] while it writes its own to
//! [`Pipes::stdout`] and [`Pipes::stderr`], and ends with an exit code.
//! Both directions hold back: a read waits until the caller has sent
//! something, a write until the caller has taken what came before.
//!
//! Any operation can start another byte-stream operation with
//! [`Context::run`], and write and read it through a [`Child`].
//!
//! ```
//! use opbox_sdk::raw::Pipes;
//! use opbox_sdk::{Context, Plugin, Result};
//!
//! /// Copies stdin to stdout, upper-cased.
//! async fn shout(_ctx: Context, mut pipes: Pipes) -> Result<u8> {
//!     while let Some(chunk) = pipes.stdin.read().await {
//!         if pipes.stdout.write(chunk.to_ascii_uppercase()).await.is_err() {
//!             break; // the caller went away
//!         }
//!     }
//!     Ok(0)
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new().raw("shout", "Upper-cases a byte stream.", shout)
//! }
//! # let _ = plugin();
//! ```

use std::fmt;
use std::future::Future;

use futures::future::LocalBoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wit_bindgen::{FutureReader, StreamReader, StreamResult, StreamWriter};

use crate::{Context, Error, Result};

/// The most bytes one [`Reader::read`] returns.
pub const READ_BYTES: usize = 64 * 1024;

/// Bytes as they arrive: the caller's, in an operation's stdin; an
/// operation's output, in a [`Child`].
pub struct Reader {
    reader: Option<StreamReader<u8>>,
}

impl Reader {
    pub(crate) fn new(reader: StreamReader<u8>) -> Self {
        Self {
            reader: Some(reader),
        }
    }

    /// The bytes that have arrived, at most [`READ_BYTES`], waiting until
    /// there are some; `None` once the writer has closed its side.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        let reader = self.reader.as_mut()?;
        loop {
            let (result, bytes) = reader.read(Vec::with_capacity(READ_BYTES)).await;
            match result {
                StreamResult::Complete(_) if !bytes.is_empty() => return Some(bytes),
                StreamResult::Complete(_) | StreamResult::Cancelled => continue,
                StreamResult::Dropped => {
                    self.reader = None;
                    return None;
                }
            }
        }
    }

    /// Everything the writer sends, until it closes its side.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(bytes) = self.read().await {
            all.extend_from_slice(&bytes);
        }
        all
    }
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("open", &self.reader.is_some())
            .finish()
    }
}

/// The reader is gone: nobody reads these bytes any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nobody reads this stream any more")
    }
}

impl std::error::Error for Closed {}

impl From<Closed> for Error {
    fn from(closed: Closed) -> Self {
        Error::new("CLOSED", closed.to_string())
    }
}

/// Bytes going out: an operation's stdout or stderr, or the stdin of a
/// [`Child`]. Dropping it closes the stream.
pub struct Writer {
    writer: StreamWriter<u8>,
}

impl Writer {
    pub(crate) fn new(writer: StreamWriter<u8>) -> Self {
        Self { writer }
    }

    /// Writes all of `bytes`, waiting while the reader has not taken what
    /// came before; [`Closed`] if the reader went away.
    pub async fn write(&mut self, bytes: impl Into<Vec<u8>>) -> std::result::Result<(), Closed> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Ok(());
        }
        if self.writer.write_all(bytes).await.is_empty() {
            Ok(())
        } else {
            Err(Closed)
        }
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// What a raw operation reads and writes. Dropping an output ends it for
/// the caller; both end when the operation returns.
#[derive(Debug)]
pub struct Pipes {
    /// The caller's bytes.
    pub stdin: Reader,
    /// The operation's output.
    pub stdout: Writer,
    /// The operation's diagnostics, kept apart from its output.
    pub stderr: Writer,
}

impl Context {
    /// Starts another byte-stream operation, `namespace/op`, with its
    /// arguments, on the same terms as [`Context::call`]: as this call's
    /// caller, within what is left of its deadline. Errors found before it
    /// starts come back here; then write its stdin and read its outputs
    /// through the [`Child`].
    ///
    /// Its outputs are handed over only as fast as they are read, and its
    /// stdin only as fast as it reads: write and read at the same time
    /// (`futures::join!`), or a large output fills while you are still
    /// writing and neither side moves. Returning from this call stops it.
    ///
    /// ```ignore
    /// let mut gzip = ctx.run("gzip/compress", &json!({"level": 9})).await?;
    /// let write = async move {
    ///     let _ = gzip.stdin.write(text).await;
    ///     // `stdin` is dropped here: the operation's input ends.
    /// };
    /// let (_, compressed) = futures::join!(write, gzip.stdout.read_to_end());
    /// let code = gzip.status.wait().await?;
    /// ```
    pub async fn run<I: Serialize + ?Sized>(&self, operation: &str, input: &I) -> Result<Child> {
        let input = crate::context::encode(operation, input)?;
        let (stdin, stdin_reader) = crate::__private::wit_stream::new::<u8>();
        let (stdout, stderr, status) =
            crate::__private::invoke::run(operation.to_owned(), input, stdin_reader).await?;
        Ok(Child {
            stdin: Writer::new(stdin),
            stdout: Reader::new(stdout),
            stderr: Reader::new(stderr),
            status: Status(status),
        })
    }
}

/// A byte-stream operation this call started ([`Context::run`]). Its parts
/// are apart so that they can be used at once; dropping one you do not
/// need is fine (an output dropped is thrown away), and dropping them all
/// stops the operation.
#[derive(Debug)]
#[non_exhaustive]
pub struct Child {
    /// Its input; dropping it closes its stdin.
    pub stdin: Writer,
    /// Its output.
    pub stdout: Reader,
    /// Its diagnostics.
    pub stderr: Reader,
    /// How it ended.
    pub status: Status,
}

/// How a [`Child`] ended.
pub struct Status(FutureReader<std::result::Result<u8, crate::__private::CallError>>);

impl Status {
    /// Waits until the operation has ended: its exit code, or the error
    /// that ended it (a limit, a trap, an abort), as it came.
    pub async fn wait(self) -> Result<u8> {
        Ok(self.0.await?)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status").finish_non_exhaustive()
    }
}

type RawFn = Box<dyn Fn(Context, String, Pipes) -> LocalBoxFuture<'static, Result<u8>>>;

/// One registered byte-stream operation.
pub(crate) struct RawOp {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) input_schema: fn() -> String,
    pub(crate) internal: bool,
    pub(crate) required_scopes: Vec<String>,
    pub(crate) handler: RawFn,
}

/// One byte-stream operation and its settings, for
/// [`Plugin::raw_op`](crate::Plugin::raw_op).
pub struct RawOperation(pub(crate) RawOp);

impl fmt::Debug for RawOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawOperation")
            .field("name", &self.0.name)
            .field("internal", &self.0.internal)
            .field("required_scopes", &self.0.required_scopes)
            .finish_non_exhaustive()
    }
}

impl RawOperation {
    /// A byte-stream operation; see [`Plugin::raw`](crate::Plugin::raw).
    pub fn new<Args>(name: &str, description: &str, handler: impl RawHandler<Args>) -> Self {
        let (input_schema, handler) = handler.into_parts();
        Self(RawOp {
            name: name.to_owned(),
            description: description.to_owned(),
            input_schema,
            internal: false,
            required_scopes: Vec::new(),
            handler,
        })
    }

    /// Callable only from other operations, never from the wire.
    #[must_use]
    pub fn internal(mut self) -> Self {
        self.0.internal = true;
        self
    }

    /// Scopes a caller must all hold.
    #[must_use]
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.0.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

/// A handler of a byte-stream operation: an `async fn(Context, In, Pipes)
/// -> Result<u8>`, or an `async fn(Context, Pipes) -> Result<u8>` for one
/// without arguments. The `u8` is the exit code (0 is success); an `Err`
/// ends the call with that error instead.
pub trait RawHandler<Args>: 'static {
    #[doc(hidden)]
    fn into_parts(self) -> (fn() -> String, RawFn);
}

impl<F, Fut, In> RawHandler<(In,)> for F
where
    F: Fn(Context, In, Pipes) -> Fut + 'static,
    Fut: Future<Output = Result<u8>> + 'static,
    In: DeserializeOwned + JsonSchema + 'static,
{
    fn into_parts(self) -> (fn() -> String, RawFn) {
        let handler = move |ctx: Context, input: String, pipes: Pipes| {
            let run: LocalBoxFuture<'static, Result<u8>> =
                match crate::json::from_json::<In>(&input) {
                    Ok(input) => Box::pin(self(ctx, input, pipes)),
                    Err(e) => {
                        let e = Error::invalid_input(e.to_string());
                        Box::pin(async move { Err(e) })
                    }
                };
            run
        };
        (crate::schema::input::<In>, Box::new(handler))
    }
}

impl<F, Fut> RawHandler<()> for F
where
    F: Fn(Context, Pipes) -> Fut + 'static,
    Fut: Future<Output = Result<u8>> + 'static,
{
    fn into_parts(self) -> (fn() -> String, RawFn) {
        let handler = move |ctx: Context, _input: String, pipes: Pipes| {
            let run: LocalBoxFuture<'static, Result<u8>> = Box::pin(self(ctx, pipes));
            run
        };
        (crate::schema::no_input, Box::new(handler))
    }
}
