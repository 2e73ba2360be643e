//! How a [`Client`](super::client::Client) reaches a host: the transport
//! its URL names, with TLS where the scheme asks for it.
//!
//! | URL | transport |
//! |---|---|
//! | `tcp://HOST:PORT` | length-prefixed frames over TCP |
//! | `tls://HOST:PORT` | the same inside TLS (`[envelope] tls`) |
//! | `ws://HOST:PORT/call` | one envelope per WebSocket message |
//! | `wss://HOST:PORT/call` | the same inside TLS (`[gateway] tls`) |
//! | `quic://HOST:PORT` | length-prefixed frames on QUIC streams: one for JSON calls, one for each byte-stream call (`quic_listen`) |
//!
//! TLS checks the host's certificate against the web's roots and any
//! certificates the caller adds (a private CA, or a self-signed host's own
//! certificate), and its name against the URL's host.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::client::ClientError;
use super::{EnvelopeConfig, tcp};

/// Frames from the host, as they arrive.
pub(super) type Incoming = Box<dyn Stream<Item = Result<Bytes, String>> + Send + Unpin>;

/// Frames to the host.
pub(super) type Outgoing = Box<dyn futures::Sink<Bytes, Error = String> + Send + Unpin>;

/// The TLS a client trusts: the web's roots, and the PEM certificates of
/// `ca_file` when given.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    if let Some(file) = ca_file {
        let unreadable = |e: &dyn std::fmt::Display| {
            ClientError::Tls(format!(
                "cannot read certificates from {}: {e}",
                file.display()
            ))
        };
        let certificates = CertificateDer::pem_file_iter(file).map_err(|e| unreadable(&e))?;
        let mut added = 0;
        for certificate in certificates {
            let certificate = certificate.map_err(|e| unreadable(&e))?;
            roots.add(certificate).map_err(|e| unreadable(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(unreadable(&"no PEM certificate in it"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What dialing a URL gives a client.
pub(super) enum Dialed {
    /// One connection for all calls: the frames in and out, and whether
    /// `token` went on the connection itself (a WebSocket upgrade's
    /// `Authorization`) rather than with each call.
    Frames(Incoming, Outgoing, bool),
    /// A QUIC connection, on which streams are opened as calls need them
    /// ([`open_stream`]).
    Quic(quinn::Connection),
}

/// Connects to `url`.
pub(super) async fn dial(
    url: &str,
    token: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Dialed, ClientError> {
    let failed = |message: String| ClientError::Connect {
        url: url.to_owned(),
        message,
    };
    let tls = || match &tls {
        Some(config) => Ok(config.clone()),
        None => tls_config(None),
    };
    if let Some(addr) = url.strip_prefix("tcp://") {
        let (incoming, outgoing) = framed(tcp_to(addr).await.map_err(failed)?);
        return Ok(Dialed::Frames(incoming, outgoing, false));
    }
    if let Some(addr) = url.strip_prefix("quic://") {
        let connection = quic_to(addr, tls()?).await.map_err(failed)?;
        return Ok(Dialed::Quic(connection));
    }
    if let Some(addr) = url.strip_prefix("tls://") {
        let stream = tcp_to(addr).await.map_err(failed)?;
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let stream = handshake(stream, host, tls()?).await.map_err(failed)?;
        let (incoming, outgoing) = framed(stream);
        return Ok(Dialed::Frames(incoming, outgoing, false));
    }
    let secure = url.starts_with("wss://");
    if !secure && !url.starts_with("ws://") {
        return Err(ClientError::Url(url.to_owned()));
    }
    let mut request = url
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| failed("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let stream = tcp_to(&format!("{host}:{port}")).await.map_err(failed)?;
    let websocket = if secure {
        let stream = handshake(stream, host, tls()?).await.map_err(failed)?;
        upgraded(request, stream).await
    } else {
        upgraded(request, stream).await
    };
    let (incoming, outgoing) = websocket.map_err(failed)?;
    Ok(Dialed::Frames(incoming, outgoing, true))
}

async fn tcp_to(addr: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A QUIC connection to `addr`, the host's certificate checked for its
/// name.
async fn quic_to(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<quinn::Connection, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_matches(['[', ']']);
    let peer = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("`{addr}` resolves to no address"))?;
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![super::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| format!("QUIC TLS: {e}"))?;
    let local: std::net::SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
        .connect(peer, host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC: {e}"))
}

/// A bidirectional stream of its own on `connection`, framed as TCP is.
pub(super) async fn open_stream(
    connection: &quinn::Connection,
) -> Result<(Incoming, Outgoing), String> {
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("QUIC: {e}"))?;
    Ok(framed(tokio::io::join(recv, send)))
}

/// `stream` inside TLS, the host's certificate checked for `host`.
async fn handshake(
    stream: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| format!("`{host}` is not a name TLS can check"))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

/// Length-prefixed frames over `stream`.
fn framed<S>(stream: S) -> (Incoming, Outgoing)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let codec = tcp::codec(EnvelopeConfig::default().max_frame_bytes);
    let incoming = FramedRead::new(read, codec.clone()).map(|frame| {
        frame
            .map(bytes::BytesMut::freeze)
            .map_err(|e| e.to_string())
    });
    let outgoing =
        SinkExt::<Bytes>::sink_map_err(FramedWrite::new(write, codec), |e| e.to_string());
    (Box::new(incoming), Box::new(outgoing))
}

/// A WebSocket upgrade of `stream` for `request`: one envelope a message.
async fn upgraded<S>(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
) -> Result<(Incoming, Outgoing), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| e.to_string())?;
    let (sink, stream) = socket.split();
    let incoming = stream.filter_map(|message| {
        std::future::ready(match message {
            Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(_) => None,
            Err(e) => Some(Err(e.to_string())),
        })
    });
    let outgoing = sink
        .with(|bytes: Bytes| {
            std::future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(
                Message::Binary(bytes),
            ))
        })
        .sink_map_err(|e| e.to_string());
    Ok((Box::new(incoming), Box::new(outgoing)))
}
