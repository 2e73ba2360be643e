//! The gateway on a socket: hyper's HTTP/1, over TLS when configured, with
//! the limits of [`ConnectionConfig`].
//!
//! Every accepted connection is admitted first ([`Connections`]); a refused
//! one gets a one-line HTTP answer and is closed. An admitted one has
//! `header_timeout` to send each request's headers (which also closes idle
//! keep-alive connections; a TLS handshake has as long), and its writes are
//! [`Guarded`] beneath TLS. Its permit rides
//! along in each request's extensions, so a connection upgraded to a
//! WebSocket keeps its place until the WebSocket closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::new_request_id;
use crate::net::{self, ConnectionConfig, ConnectionPermit, Connections, Guarded, Refusal, Tls};

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
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let stop = CancellationToken::new();
    let open = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = net::accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let permit = match connections.admit(peer.ip()) {
            Ok(permit) => Arc::new(permit),
            Err(refusal) => {
                refuse(&stream, peer, refusal);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = Guarded::new(stream, config.write_timeout);
        let service = Admitted {
            router: router.clone(),
            permit,
        };
        let (http, stop, tls) = (http.clone(), stop.clone(), tls.clone());
        let handshake_timeout = config.header_timeout;
        open.spawn(async move {
            let served = match tls {
                None => connection(&http, io, service, &stop).await,
                Some(tls) => match tls.accept(io, handshake_timeout).await {
                    Ok(io) => connection(&http, io, service, &stop).await,
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

/// Serves one connection until it closes, or until `stop`: then lets the
/// request it is serving finish.
async fn connection<IO>(
    http: &hyper::server::conn::http1::Builder,
    io: IO,
    service: Admitted,
    stop: &CancellationToken,
) -> hyper::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Tells a refused peer why, with what fits in the socket's buffer right
/// now (never waiting on it); the connection closes when `stream` drops.
fn refuse(stream: &TcpStream, peer: SocketAddr, refusal: Refusal) {
    tracing::debug!(%peer, ?refusal, "HTTP connection refused");
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
    let _ = stream.try_write(response.as_bytes());
}

/// The router, for the requests of one admitted connection.
#[derive(Clone)]
struct Admitted {
    router: Router,
    permit: Arc<ConnectionPermit>,
}

impl hyper::service::Service<Request<Incoming>> for Admitted {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.permit.clone());
        let mut router = self.router.clone();
        tower_service::Service::call(&mut router, request)
    }
}
