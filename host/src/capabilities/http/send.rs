//! Sending one outbound request to an address the host has checked.
//!
//! The host name is resolved here, and each address is checked before the
//! host connects to it: an address inside the host's own networks (loopback,
//! link-local such as cloud metadata, private, shared or unspecified) is
//! only reached where the grant allows it explicitly. Connecting to the
//! checked address, rather than handing the name to a resolver again, closes
//! DNS rebinding. TLS still verifies the certificate against the name in the
//! URL.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, WasiBody};

/// How a request may be sent.
pub(super) struct Policy {
    /// Whether addresses inside the host's networks may be reached.
    pub(super) allow_internal: bool,
    pub(super) connect_timeout: Duration,
    pub(super) first_byte_timeout: Duration,
    pub(super) between_bytes_timeout: Duration,
    /// What lives as long as the exchange: the places it holds in flight.
    pub(super) held: Arc<dyn Send + Sync>,
}

/// What `send` hands back: the response, and the connection's own future,
/// which ends when the exchange is over.
pub(super) type Sent = (
    Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends `request` under `policy`; the response body is cut off with
/// `HttpResponseBodySize` past `max_response_bytes`.
pub(super) async fn send(
    mut request: Request<WasiBody>,
    policy: Policy,
    max_response_bytes: u64,
) -> Result<Sent, Error> {
    let uri = request.uri();
    let tls = uri.scheme_str() == Some("https");
    let (Some(host), Some(port)) = (uri.host(), super::port_of(uri)) else {
        return Err(Error::HttpRequestUriInvalid);
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let stream = tokio::time::timeout(policy.connect_timeout, connect(&host, port, &policy))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let stream: Box<dyn Stream> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let config = TLS.clone().ok_or(Error::TlsProtocolError)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(policy.connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = tokio::time::timeout(
        policy.connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The request line carries the path only; the scheme and authority were
    // for reaching the server.
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let mut connection = Box::pin(connection);
    let exchange = async {
        let response =
            tokio::time::timeout(policy.first_byte_timeout, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)??;
        Ok::<_, Error>(response)
    };
    let mut exchange = std::pin::pin!(exchange);
    // Drive the connection while waiting for the response head. A
    // connection can end cleanly right after a whole response (a body of
    // known length, `Content-Length: 0` among them, then the server
    // closes): the response is then already waiting for the exchange.
    let (response, open) = tokio::select! {
        biased;
        response = exchange.as_mut() => (response?, true),
        done = connection.as_mut() => {
            done?;
            (exchange.await?, false)
        }
    };
    let held = policy.held;
    let response = response.map(|incoming| {
        Capped {
            inner: incoming.map_err(Error::from).boxed_unsync(),
            left: max_response_bytes,
            max: max_response_bytes,
            between_bytes: policy.between_bytes_timeout,
            stall: None,
            _held: held.clone(),
        }
        .boxed_unsync()
    });
    let io = async move {
        let _held = held;
        if open {
            connection.await.map_err(Error::from)?;
        }
        Ok(())
    };
    Ok((response, Box::new(io)))
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The client configuration for TLS: the web's root certificates, with
/// ring's cryptography. `None` only if ring lacked the default protocol
/// versions, which it does not.
static TLS: LazyLock<Option<Arc<rustls::ClientConfig>>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?;
    Some(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
});

/// Resolves `host` and connects to the first address the policy allows.
async fn connect(host: &str, port: u16, policy: &Policy) -> Result<TcpStream, Error> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Error::DnsError {
            rcode: None,
            info_code: None,
        })?
        .collect();
    if addresses.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    let mut last = Error::DestinationIpProhibited;
    for address in addresses {
        if !policy.allow_internal && is_internal(address.ip()) {
            tracing::warn!(host, %address, "outbound request to an internal address refused");
            continue;
        }
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Error::ConnectionRefused;
            }
            Err(e) => last = Error::Connect(e),
        }
    }
    Err(last)
}

/// Whether `ip` is inside the host's own networks: loopback, unspecified,
/// link-local (which includes cloud metadata at 169.254.169.254), private,
/// shared (carrier-grade NAT), unique-local, multicast or broadcast, or an
/// IPv6 address that wraps such an IPv4 one.
pub(super) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_link_local()
                || ip.is_private()
                || ip.is_multicast()
                || ip.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A response body cut off with `HttpResponseBodySize` past `max` bytes,
/// and with `ConnectionReadTimeout` when no byte comes for `between_bytes`.
struct Capped {
    inner: WasiBody,
    left: u64,
    max: u64,
    between_bytes: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    _held: Arc<dyn Send + Sync>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(other) => {
                self.stall = None;
                return Poll::Ready(other);
            }
            Poll::Pending => {
                let wait = self.between_bytes;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                ready!(stall.as_mut().poll(cx));
                return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
            }
        };
        self.stall = None;
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                self.left = 0;
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.max)))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for external in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_internal(external.parse().unwrap()), "{external}");
        }
    }
}
