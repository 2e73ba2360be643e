//! TLS on every listener, with certificates the tests make (rcgen):
//! `/call`, `/subscribe`, the WebSocket and the TCP envelopes over TLS, and
//! a certificate rotated while connections stay open.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hyper::StatusCode;
use opbox::net::TlsConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Frames, TestHost};

/// A new self-signed certificate for `127.0.0.1` and `localhost`, written
/// over `files` (through a rename, as a certificate manager does); returns
/// it, for clients to trust.
fn issue(files: &TlsConfig) -> CertificateDer<'static> {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    for (path, pem) in [
        (&files.cert, made.cert.pem()),
        (&files.key, made.signing_key.serialize_pem()),
    ] {
        let partial = path.with_extension("partial");
        std::fs::write(&partial, pem).unwrap();
        std::fs::rename(&partial, path).unwrap();
    }
    made.cert.der().clone()
}

fn files(dir: &Path) -> TlsConfig {
    TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// A client configuration trusting `cert` only.
fn trusting(cert: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS connection to `addr` trusting `cert` only.
async fn connect(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(trusting(cert)));
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, stream).await
}

/// A host serving its gateway and TCP envelopes over TLS with `files`.
async fn tls_host(files: &TlsConfig) -> TestHost {
    TestHost::with_config(|config| {
        config.gateway.tls = Some(files.clone());
        config.envelope.tls = Some(files.clone());
    })
    .await
}

/// A WebSocket at the gateway's `/call`, over TLS trusting `cert`.
async fn websocket(
    host: &TestHost,
    cert: &CertificateDer<'static>,
) -> tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>> {
    let stream = connect(host.addr, cert).await.unwrap();
    let url = format!("wss://127.0.0.1:{}/call", host.addr.port());
    let (socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    socket
}

/// Calls `echo/echo` with `n` over an envelope WebSocket; returns the output.
async fn ws_echo(
    socket: &mut tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
    n: u64,
) -> Value {
    let envelope = json!({"type": "call.requested", "id": n.to_string(),
        "payload": {"operationId": "echo/echo", "input": n}});
    socket
        .send(Message::text(envelope.to_string()))
        .await
        .unwrap();
    loop {
        let reply: Value = match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => serde_json::from_str(&text).unwrap(),
            Message::Binary(bytes) => serde_json::from_slice(&bytes).unwrap(),
            _ => continue,
        };
        assert_eq!(reply["type"], "call.responded", "{reply}");
        return reply["payload"]["output"].clone();
    }
}

/// Calls `echo/echo` with `n` over a TCP envelope connection.
async fn tcp_echo(frames: &mut Frames<TlsStream<TcpStream>>, n: u64) -> Value {
    frames.call(&n.to_string(), "echo/echo", json!(n)).await;
    let reply = frames.next().await.expect("a reply");
    assert_eq!(reply["type"], "call.responded", "{reply}");
    reply["payload"]["output"].clone()
}

/// `POST path` with a JSON `body` over a TLS connection of its own
/// trusting `cert`; the status and the whole answer.
async fn post(
    host: &TestHost,
    cert: &CertificateDer<'static>,
    path: &str,
    body: &Value,
) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    let stream = connect(host.addr, cert).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", format!("127.0.0.1:{}", host.addr.port()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn every_listener_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    let cert = issue(&files);
    let host = tls_host(&files).await;
    let call = json!({"operation": "echo/echo", "input": {"over": "tls"}});
    let (status, body) = post(&host, &cert, "/call", &call).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["output"], json!({"over": "tls"}));

    let subscribe = json!({"operation": "ticker/count", "input": {"to": 3}});
    let (status, text) = post(&host, &cert, "/subscribe", &subscribe).await;
    assert_eq!(status, StatusCode::OK);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.len(), 4, "{text}");
    assert_eq!(data[2], r#"{"n":3}"#, "{text}");
    assert!(text.contains("event: completed"), "{text}");

    let mut socket = websocket(&host, &cert).await;
    assert_eq!(ws_echo(&mut socket, 7).await, 7);

    let mut frames = Frames::new(connect(host.tcp_addr, &cert).await.unwrap());
    assert_eq!(tcp_echo(&mut frames, 8).await, 8);

    // Plain HTTP on the TLS port gets no answer in HTTP.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/call", host.addr))
        .json(&json!({"operation": "echo/echo", "input": 1}))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_while_open_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    let old = issue(&files);
    let host = tls_host(&files).await;
    let mut socket = websocket(&host, &old).await;
    let mut frames = Frames::new(connect(host.tcp_addr, &old).await.unwrap());
    assert_eq!(ws_echo(&mut socket, 1).await, 1);
    assert_eq!(tcp_echo(&mut frames, 1).await, 1);

    let new = issue(&files);
    // New handshakes present the new certificate once the host has seen
    // the files change, on both listeners.
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in [host.addr, host.tcp_addr] {
        while connect(addr, &new).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{addr} still presents the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            connect(addr, &old).await.is_err(),
            "{addr} presents the old one too"
        );
    }
    let call = json!({"operation": "echo/echo", "input": 2});
    let (status, body) = post(&host, &new, "/call", &call).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The connections made before go on, on the session they have.
    assert_eq!(ws_echo(&mut socket, 3).await, 3);
    assert_eq!(tcp_echo(&mut frames, 3).await, 3);
}

#[tokio::test]
async fn a_certificate_that_does_not_fit_its_key_stops_the_start_and_a_bad_rotation_keeps_the_old()
{
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    let cert = issue(&files);
    // Another certificate's key.
    let other = tempfile::tempdir().unwrap();
    let stray = self::files(other.path());
    issue(&stray);
    let mismatched = TlsConfig {
        cert: files.cert.clone(),
        key: stray.key.clone(),
    };
    let config = opbox::HostConfig {
        data_dir: crate::util::data_dir(),
        cache_dir: Some(crate::util::cache_dir()),
        gateway: opbox::config::GatewaySection {
            tls: Some(mismatched),
            ..Default::default()
        },
        ..opbox::HostConfig::demo()
    };
    let error = opbox::Host::start(config).await.unwrap_err().to_string();
    assert!(error.contains("does not fit"), "{error}");
    assert!(error.contains("cert.pem"), "{error}");

    // Serving, then a half-written certificate and a reload (as SIGHUP
    // asks): the old certificate stays.
    let host = tls_host(&files).await;
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    host.host.reload_tls();
    let mut frames = Frames::new(connect(host.tcp_addr, &cert).await.unwrap());
    assert_eq!(tcp_echo(&mut frames, 4).await, 4);
}

#[tokio::test]
async fn a_client_offering_h2_gets_http2_over_tls() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    let cert = issue(&files);
    let host = tls_host(&files).await;
    let mut config = trusting(&cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let stream = TcpStream::connect(host.addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let body = json!({"operation": "echo/echo", "input": "h2"}).to_string();
    let request = hyper::Request::post(format!("https://127.0.0.1:{}/call", host.addr.port()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["output"], "h2");
}

/// `opbox call` reaches both TLS listeners (`wss://` and `tls://`) trusting
/// the certificate it is given, and refuses a host it cannot trust.
#[tokio::test]
async fn the_command_line_calls_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    issue(&files);
    let host = tls_host(&files).await;
    let call = |url: String, trust: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opbox"));
        command.args([
            "call",
            "echo/echo",
            r#"{"over": "tls"}"#,
            "--raw",
            "--url",
            &url,
        ]);
        if trust {
            command.arg("--cacert").arg(&files.cert);
        }
        command.output()
    };
    for url in [
        format!("wss://localhost:{}/call", host.addr.port()),
        format!("tls://localhost:{}", host.tcp_addr.port()),
    ] {
        let output = call(url.clone(), true).await.unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{url}: {output:?}");
        assert_eq!(said.trim(), r#"{"over":"tls"}"#, "{url}");
        // Without the certificate, the host is not trusted, and it says so.
        let output = call(url.clone(), false).await.unwrap();
        assert!(!output.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("certificate"), "{url}: {stderr}");
    }
}
