//! `GET /call` upgraded to a WebSocket: the envelope protocol, one message
//! per envelope (binary, or text holding the same JSON). Replies are always
//! text messages.
//!
//! The upgrade is done here rather than by axum's extractor, so that the
//! socket's buffers are ours to bound: incoming messages are held to the
//! connection's frame limit (small unless the upgrade carried a valid bearer
//! token), a message begun must be finished within `frame_timeout`, and
//! replies go out in fragments of at most 64 KiB, which keeps the write
//! buffer, automatic pongs included, within a fixed size however the peer
//! behaves.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Sink, SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::{ApiError, AppState, bearer};
use crate::call::{CallError, Transport};
use crate::envelope::session::{self, FrameLimit, Inbound};
use crate::net::ConnectionPermit;

/// The largest WebSocket frame the host sends; longer replies are fragmented.
const FRAGMENT: usize = 64 << 10;
/// Bytes the socket gathers before writing them out.
const WRITE_BUFFER: usize = 64 << 10;

pub(super) async fn upgrade(State(state): State<AppState>, mut request: Request) -> Response {
    let (Some(key), Some(on_upgrade)) = (
        handshake_key(request.headers()),
        request.extensions_mut().remove::<OnUpgrade>(),
    ) else {
        return ApiError::from(CallError::invalid_input(
            "GET /call is the envelope protocol over WebSocket: send a WebSocket upgrade, or POST /call for a single call",
        ))
        .with_status(StatusCode::UPGRADE_REQUIRED)
        .into_response();
    };
    let permit = request.extensions_mut().remove::<Arc<ConnectionPermit>>();
    // A bearer token on the upgrade names the connection's caller; without
    // one, the first envelope carrying an `auth_token` does.
    let identity = bearer(request.headers())
        .and_then(|token| state.dispatcher.authenticate(Some(token)).ok())
        .filter(|identity| !identity.is_anonymous());
    let envelope = Arc::new(state.config.envelope.clone());
    let limit = FrameLimit::for_connection(&envelope, identity.as_ref());
    let socket_config = WebSocketConfig::default()
        .max_message_size(Some(limit.get()))
        .max_frame_size(Some(limit.get()))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * FRAGMENT + 1024);
    state.websockets.spawn(async move {
        // Holds the connection's place until the WebSocket closes.
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!("WebSocket upgrade failed: {e}"),
        };
        let counted = Counted::new(TokioIo::new(upgraded));
        let read = counted.read.clone();
        let socket =
            WebSocketStream::from_raw_socket(counted, Role::Server, Some(socket_config)).await;
        let (sink, stream) = socket.split();
        let manner = Arc::new(Manner::default());
        let incoming = envelopes(
            Finishing::new(stream, read, envelope.frame_timeout),
            manner.clone(),
        );
        let outgoing = Replies {
            socket: sink,
            pending: VecDeque::new(),
            manner,
            closing: false,
        };
        session::serve(
            state.dispatcher,
            Transport::WebSocket,
            identity,
            envelope,
            limit,
            incoming,
            Box::pin(outgoing),
        )
        .await;
    });
    switching(&key)
}

/// `101 Switching Protocols` for the upgrade whose key is `key`.
pub(super) fn switching(key: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = derive_accept_key(key.as_bytes()).parse() {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The socket's messages as the session takes them: envelopes, and then the
/// violation that ends the connection, if one does, with the close code it
/// calls for left in `manner`. Pings are answered by the socket; more than
/// [`MAX_PINGS_PER_SECOND`] of them is a violation.
fn envelopes<M>(messages: M, manner: Arc<Manner>) -> BoxStream<'static, Inbound>
where
    M: futures::Stream<Item = Result<Message, WsError>> + Send + 'static,
{
    messages
        .scan(Reading::default(), move |reading, message| {
                let item = match message {
                    _ if reading.ended => None,
                    Ok(Message::Binary(bytes)) => Some(Some(Inbound::Frame(bytes))),
                    Ok(Message::Text(text)) => Some(Some(Inbound::Frame(Bytes::from(text)))),
                    Ok(Message::Close(_)) => None,
                    Ok(Message::Ping(_)) if reading.one_ping_too_many() => {
                        manner.close_with(CloseCode::Policy);
                        Some(Some(Inbound::Violation(format!(
                            "more than {MAX_PINGS_PER_SECOND} pings in a second"
                        ))))
                    }
                    // Pings are answered by the socket.
                    Ok(_) => Some(None),
                    Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                        manner.close_with(CloseCode::Size);
                        Some(Some(Inbound::Violation(format!(
                            "a message of {size} bytes is longer than this connection takes ({max_size} bytes)"
                        ))))
                    }
                    Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                        manner.close_with(CloseCode::Policy);
                        Some(Some(Inbound::Violation(e.to_string())))
                    }
                    Err(_) => None,
                };
                reading.ended = !matches!(item, Some(None | Some(Inbound::Frame(_))));
                std::future::ready(item)
        })
        .filter_map(std::future::ready)
        .boxed()
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request.
pub(super) fn handshake_key(headers: &HeaderMap) -> Option<String> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let version = headers.get("sec-websocket-version")?;
    (has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket") && version == "13")
        .then(|| {
            headers
                .get(SEC_WEBSOCKET_KEY)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .flatten()
}

/// A socket that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read: Arc::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The socket's messages, ending with a violation when bytes of a message
/// have arrived and the message is not finished within `timeout`. A message
/// (of any kind, pings included) marks everything read so far as finished.
struct Finishing<M> {
    messages: M,
    read: Arc<AtomicU64>,
    finished: u64,
    timeout: Duration,
    started: Option<Pin<Box<Sleep>>>,
}

impl<M> Finishing<M> {
    fn new(messages: M, read: Arc<AtomicU64>, timeout: Duration) -> Self {
        Self {
            messages,
            read,
            finished: 0,
            timeout,
            started: None,
        }
    }
}

impl<M: futures::Stream<Item = Result<Message, WsError>> + Unpin> futures::Stream for Finishing<M> {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Poll::Ready(item) = this.messages.poll_next_unpin(cx) {
            this.finished = this.read.load(Ordering::Relaxed);
            this.started = None;
            return Poll::Ready(item);
        }
        if this.read.load(Ordering::Relaxed) == this.finished {
            return Poll::Pending;
        }
        let timeout = this.timeout;
        let started = this
            .started
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(started.as_mut().poll(cx));
        Poll::Ready(Some(Err(WsError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "a message was not finished within {} ms",
                timeout.as_millis()
            ),
        )))))
    }
}

/// The most pings a peer may send in one second: a client checking that
/// the connection lives sends a few a minute; a flood costs the host a read
/// and a pong each, and is closed with 1008.
const MAX_PINGS_PER_SECOND: u32 = 32;

/// What the reading side of one WebSocket keeps between messages.
#[derive(Debug)]
struct Reading {
    ended: bool,
    pings: u32,
    window: std::time::Instant,
}

impl Default for Reading {
    fn default() -> Self {
        Self {
            ended: false,
            pings: 0,
            window: std::time::Instant::now(),
        }
    }
}

impl Reading {
    /// Counts a ping; whether it is one more than a second allows.
    fn one_ping_too_many(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = std::time::Instant::now();
            self.pings = 0;
        }
        self.pings += 1;
        self.pings > MAX_PINGS_PER_SECOND
    }
}

/// The close code a violation on one WebSocket calls for, once one has.
#[derive(Debug, Default)]
struct Manner {
    close: AtomicU16,
}

impl Manner {
    fn close_with(&self, code: CloseCode) {
        self.close.store(code.into(), Ordering::Relaxed);
    }
}

/// The session's side of the socket: each reply goes out as the frames of
/// one message; closing sends the close frame a violation called for (1009
/// for a message too long, 1008 for one not finished in time) first.
struct Replies<S> {
    socket: S,
    /// Frames of the reply being sent.
    pending: VecDeque<Message>,
    manner: Arc<Manner>,
    closing: bool,
}

impl<S: Sink<Message, Error = WsError> + Unpin> Sink<Bytes> for Replies<S> {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = &mut *self;
        while !this.pending.is_empty() {
            ready!(this.socket.poll_ready_unpin(cx))?;
            if let Some(frame) = this.pending.pop_front() {
                this.socket.start_send_unpin(frame)?;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, reply: Bytes) -> Result<(), WsError> {
        self.pending.extend(fragments(reply));
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.as_mut().poll_ready(cx))?;
        self.socket.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.as_mut().poll_ready(cx))?;
        let code = self.manner.close.load(Ordering::Relaxed);
        if code != 0 && !self.closing {
            ready!(self.socket.poll_ready_unpin(cx))?;
            self.socket
                .start_send_unpin(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: "".into(),
                })))?;
            self.closing = true;
        }
        self.socket.poll_close_unpin(cx)
    }
}

/// A reply as WebSocket messages: one text message (an envelope is UTF-8
/// JSON, and a browser gets a string it can `JSON.parse`), or one binary
/// message for a raw chunk of a byte-stream call, sent as frames of at most
/// [`FRAGMENT`] bytes.
pub(super) fn fragments(bytes: Bytes) -> impl Iterator<Item = Message> {
    let len = bytes.len();
    let count = len.div_ceil(FRAGMENT).max(1);
    let first = if crate::envelope::wire::is_chunk(&bytes) {
        Data::Binary
    } else {
        Data::Text
    };
    (0..count).map(move |n| {
        let chunk = bytes.slice(n * FRAGMENT..((n + 1) * FRAGMENT).min(len));
        let opcode = if n == 0 { first } else { Data::Continue };
        Message::Frame(Frame::message(chunk, OpCode::Data(opcode), n + 1 == count))
    })
}
