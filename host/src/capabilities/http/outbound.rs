//! `opbox:plugin/outbound`: the same requests as `wasi:http`, through the
//! same policy ([`OutboundHooks`](super::OutboundHooks)), as an async
//! function a guest can await while its other futures run, with bodies as
//! component-model streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, HasSelf, Linker, Source, StreamConsumer, StreamProducer, StreamReader,
    StreamResult,
};
use wasmtime_wasi_http::{Error, WasiBody, WasiHttpHooks};

use super::HttpState;
use crate::capabilities::bindings::CallError;
use crate::capabilities::bindings::opbox::plugin::outbound;

/// One item of a response body, as the guest reads it.
type Chunk = Result<Vec<u8>, CallError>;

pub(in crate::capabilities) fn add_to_linker<T: crate::capabilities::View>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    fn state<T: crate::capabilities::View>(store: &mut T) -> &mut HttpState {
        &mut store.capabilities().0.http
    }
    outbound::add_to_linker::<T, HasSelf<HttpState>>(linker, state)
}

impl outbound::Host for HttpState {}

impl<T> outbound::HostWithStore<T> for HasSelf<HttpState> {
    async fn send(
        accessor: &Accessor<T, Self>,
        head: outbound::Request,
        body: StreamReader<Vec<u8>>,
    ) -> Result<(outbound::Response, StreamReader<Chunk>), CallError> {
        // One chunk in flight: the guest writes only as fast as the
        // upstream takes the body.
        let (chunks, received) = mpsc::channel(1);
        let request = request(head, received)?;
        let sending = accessor.with(|mut store| {
            body.pipe(&mut store, RequestBody(PollSender::new(chunks)))
                .map_err(|e| failed(&format!("cannot read the request body: {e:#}")))?;
            let noop = Box::new(async { Ok(()) });
            Ok::<_, CallError>(store.get().hooks.send_request(request, None, noop))
        })?;
        let (response, connection) = Pin::from(sending).await.map_err(refused)?;
        // The connection carries the response body: it runs until the
        // exchange is over (or the guest drops the body).
        tokio::spawn(async move {
            let _ = Pin::from(connection).await;
        });
        let (parts, body) = response.into_parts();
        let head = outbound::Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
        };
        let body = accessor
            .with(|mut store| StreamReader::new(&mut store, ResponseBody(body)))
            .map_err(|e| failed(&format!("cannot hand the response body over: {e:#}")))?;
        Ok((head, body))
    }
}

/// An exchange begun by [`HttpState::send_whole`]: the response's head
/// and its body, once the head has arrived.
pub(in crate::capabilities) type Sending = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    >,
>;

impl HttpState {
    /// Begins sending `head` with the whole of `body`, under the same
    /// policy as [`outbound::HostWithStore::send`].
    pub(in crate::capabilities) fn send_whole(
        &mut self,
        head: outbound::Request,
        body: Vec<u8>,
    ) -> Result<Sending, CallError> {
        let (chunk, received) = mpsc::channel(1);
        if !body.is_empty() {
            // Room for one chunk: this never waits, and never fails.
            let _ = chunk.try_send(Bytes::from(body));
        }
        drop(chunk);
        let request = request(head, received)?;
        let noop = Box::new(async { Ok(()) });
        Ok(Pin::from(self.hooks.send_request(request, None, noop)))
    }
}

/// Waits for the exchange `sending` and its whole response body, of at
/// most `max_bytes` (`HTTP_TOO_LARGE` past it, as past the grant's cap).
pub(in crate::capabilities) async fn gather(
    sending: Sending,
    max_bytes: usize,
) -> Result<(outbound::Response, Vec<u8>), CallError> {
    let (response, connection) = sending.await.map_err(refused)?;
    tokio::spawn(async move {
        let _ = Pin::from(connection).await;
    });
    let (parts, mut body) = response.into_parts();
    let head = outbound::Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
    };
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| match refused(error) {
            too_large if too_large.code == "HTTP_TOO_LARGE" => too_large,
            other => failed(&format!("reading the response failed: {}", other.message)),
        })?;
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > max_bytes {
                return Err(CallError {
                    code: "HTTP_TOO_LARGE".into(),
                    message: format!(
                        "the response is over {max_bytes} bytes, the most a blocking fetch gathers"
                    ),
                    details: None,
                });
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok((head, whole))
}

/// The `http` request for a guest's head, its body the chunks `received`.
fn request(
    head: outbound::Request,
    received: mpsc::Receiver<Bytes>,
) -> Result<http::Request<WasiBody>, CallError> {
    let chunks = futures::stream::unfold(received, |mut received| async move {
        let chunk = received.recv().await?;
        Some((Ok::<_, Error>(Frame::data(chunk)), received))
    });
    let mut request = http::Request::builder()
        .method(head.method.as_str())
        .uri(head.url.as_str());
    for (name, value) in &head.headers {
        request = request.header(name.as_str(), value.as_slice());
    }
    request
        .body(StreamBody::new(chunks).boxed_unsync())
        .map_err(|e| failed(&format!("invalid request: {e}")))
}

fn failed(message: &str) -> CallError {
    CallError {
        code: "HTTP_FAILED".into(),
        message: message.into(),
        details: None,
    }
}

/// What the guest is told when a request is refused or fails.
fn refused(error: Error) -> CallError {
    match error {
        Error::HttpRequestDenied => CallError {
            code: "HTTP_DENIED".into(),
            message: "denied: the host is not in this plugin's allowed_outbound_hosts".into(),
            details: None,
        },
        Error::HttpResponseBodySize(_) => CallError {
            code: "HTTP_TOO_LARGE".into(),
            message: format!("the response is too large: {error:?}"),
            details: None,
        },
        other => failed(&format!("the request failed: {other:?}")),
    }
}

/// The guest's request body, a chunk at a time, into the channel the
/// upstream request reads.
struct RequestBody(PollSender<Bytes>);

impl<D> StreamConsumer<D> for RequestBody {
    type Item = Vec<u8>;

    fn poll_consume(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'_, D>,
        mut source: Source<'_, Vec<u8>>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        match self.0.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {
                let mut chunk: Option<Vec<u8>> = None;
                source.read(&mut store, &mut chunk)?;
                let Some(chunk) = chunk else {
                    return Poll::Ready(Ok(StreamResult::Completed));
                };
                match self.0.send_item(Bytes::from(chunk)) {
                    Ok(()) => Poll::Ready(Ok(StreamResult::Completed)),
                    Err(_) => Poll::Ready(Ok(StreamResult::Dropped)),
                }
            }
            // The request is over (sent, or failed): nothing more is read.
            Poll::Ready(Err(_)) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body as the guest reads it: one chunk per read, pulled from
/// the upstream only when the guest asks, and a terminal error item when the
/// body fails (past the cap, a stall).
struct ResponseBody(WasiBody);

impl<D> StreamProducer<D> for ResponseBody {
    type Item = Chunk;
    type Buffer = Option<Chunk>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, Chunk, Option<Chunk>>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        // A zero-length read asks whether a chunk is ready; saying yes
        // without taking one keeps bytes from being read ahead.
        if destination.remaining(&mut store) == Some(0) {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let body = &mut self.get_mut().0;
        loop {
            return match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        destination.set_buffer(Some(Ok(data.to_vec())));
                        Poll::Ready(Ok(StreamResult::Completed))
                    }
                    // Trailers: nothing the guest is shown.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(error))) => {
                    let error = match refused(error) {
                        too_large if too_large.code == "HTTP_TOO_LARGE" => too_large,
                        other => failed(&format!("reading the response failed: {}", other.message)),
                    };
                    destination.set_buffer(Some(Err(error)));
                    Poll::Ready(Ok(StreamResult::Dropped))
                }
                Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
                Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
