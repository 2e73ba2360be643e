//! The gateway on a socket: HTTP/1.1 and HTTP/2 on the same port (hyper,
//! the protocol told by the connection's first bytes: HTTP/2 with prior
//! knowledge, `h2c`, or chosen by ALPN over TLS), with the limits of
//! [`ConnectionConfig`].
//!
//! Every accepted connection is admitted first ([`Connections`]); a refused
//! one gets a one-line HTTP answer and is closed. An admitted one has
//! `header_timeout` to send each HTTP/1 request's headers (a TLS handshake
//! has as long), and is closed once nothing has been open on it for as
//! long ([`Activity`]); an HTTP/2 one carries at most
//! `max_http2_streams` requests at once. Its writes are [`Guarded`]
//! beneath TLS. Its permit rides along in each request's extensions, so a
//! connection upgraded to a WebSocket keeps its place until the WebSocket
//! closes.
//!
//! A caller who hangs up stops its call: hyper watches an HTTP/1
//! connection for its end while a request is being answered (so half-close
//! stays off) and resets an HTTP/2 stream, and either way drops the
//! handler's future, and with it the guest's instance.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{CONNECTION, HeaderName};
use axum::http::{HeaderValue, StatusCode, Version};
use axum::response::Response;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::idle::{Activity, Tracked};
use crate::call::new_request_id;
use crate::net::{
    self, ConnectionConfig, ConnectionPermit, Connections, Doorman, Guarded, Refusal, Tls,
};

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets each connection finish the request it is serving, and
/// waits for them to close.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    router: Router,
    connections: Connections,
    config: &ConnectionConfig,
    shutdown: impl Future<Output = ()>,
) {
    let http = builder(config);
    // The time to send headers is also how long a TLS handshake may take
    // and how long a connection may stay idle.
    let header_timeout = config.header_timeout;
    let keep_alive = keep_alive_hint(header_timeout);
    let stop = CancellationToken::new();
    let open = TaskTracker::new();
    let doorman = Doorman::new("http");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = net::accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let permit = match connections.admit(peer.ip()) {
            Ok(permit) => Arc::new(permit),
            Err(refusal) => {
                doorman.refuse(stream, peer, refusal, answer).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = Guarded::new(stream, config.write_timeout);
        let service = Admitted {
            router: router.clone(),
            permit,
            activity: Activity::new(),
            keep_alive: keep_alive.clone(),
        };
        let (http, stop, tls) = (http.clone(), stop.clone(), tls.clone());
        open.spawn(async move {
            let served = match tls {
                None => connection(&http, io, service, header_timeout, &stop).await,
                Some(tls) => match tls.accept(io, header_timeout).await {
                    Ok(io) => connection(&http, io, service, header_timeout, &stop).await,
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    stop.cancel();
    open.close();
    open.wait().await;
}

/// HTTP/1.1 and HTTP/2 with the limits of `config`.
fn builder(config: &ConnectionConfig) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // Half-close stays off: hyper then reads on while a request is being
    // answered, and a caller who hangs up ends the connection, its call too.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_http2_streams)
        .max_header_list_size(MAX_HTTP2_HEADERS)
        // A peer that vanished without closing is found by its unanswered
        // ping, as a peer that stops reading is by `Guarded`.
        .keep_alive_interval(config.write_timeout / 2)
        .keep_alive_timeout(config.write_timeout / 2);
    http
}

/// The most bytes of headers, decoded, one HTTP/2 request may send (hyper's
/// own default is 16 MiB).
const MAX_HTTP2_HEADERS: u32 = 64 * 1024;

/// An error of one connection, as hyper's auto builder reports it.
type ConnectionError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one connection until it closes, has been idle for `idle_timeout`,
/// or `stop`: then lets the requests it is serving finish.
async fn connection<IO>(
    http: &auto::Builder<TokioExecutor>,
    io: IO,
    service: Admitted,
    idle_timeout: std::time::Duration,
    stop: &CancellationToken,
) -> Result<(), ConnectionError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = service.activity.clone();
    let connection = http.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let idle = tokio::select! {
        served = connection.as_mut() => return served,
        () = stop.cancelled() => false,
        () = activity.idle_for(idle_timeout) => true,
    };
    connection.as_mut().graceful_shutdown();
    if !idle {
        return connection.await;
    }
    // An HTTP/2 peer is told with a GOAWAY, and its acknowledgement is
    // waited for; one that never gives it is not waited for longer.
    match tokio::time::timeout(idle_timeout, connection).await {
        Ok(served) => served,
        Err(_) => Ok(()),
    }
}

/// What a refused peer is told: an HTTP response that closes.
fn answer(refusal: Refusal) -> Vec<u8> {
    let error = refusal.to_error();
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({ "request_id": new_request_id(), "result": "error", "error": error });
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    );
    response.into_bytes()
}

/// What an HTTP/1 response tells its client of how long the connection
/// stays open idle (`Keep-Alive: timeout=N`, as Node's server and nginx
/// send it): a client that reads it (undici, Node's `fetch`) retires a
/// pooled connection before the host closes it, rather than sending a
/// request into a connection that is closing. None under a second.
fn keep_alive_hint(idle: std::time::Duration) -> Option<HeaderValue> {
    match idle.as_secs() {
        0 => None,
        secs => HeaderValue::try_from(format!("timeout={secs}")).ok(),
    }
}

/// `Keep-Alive`, which `http` has no constant for.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The router, for the requests of one admitted connection.
#[derive(Clone)]
struct Admitted {
    router: Router,
    permit: Arc<ConnectionPermit>,
    activity: Arc<Activity>,
    keep_alive: Option<HeaderValue>,
}

impl hyper::service::Service<Request<Incoming>> for Admitted {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Tracked>, Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.permit.clone());
        let open = self.activity.begin();
        // HTTP/2 has no connection headers; its idle close is a GOAWAY.
        let keep_alive = (request.version() < Version::HTTP_2)
            .then(|| self.keep_alive.clone())
            .flatten();
        let mut router = self.router.clone();
        let response = tower_service::Service::call(&mut router, request);
        Box::pin(async move {
            let mut response = response.await?;
            let stays_open = response.status() != StatusCode::SWITCHING_PROTOCOLS
                && !response.headers().contains_key(CONNECTION);
            if let Some(hint) = keep_alive.filter(|_| stays_open) {
                response.headers_mut().insert(KEEP_ALIVE, hint);
            }
            Ok(response.map(|body| Tracked::new(body, open)))
        })
    }
}
