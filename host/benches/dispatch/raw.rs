//! `raw`: bytes through a byte-stream operation (`echo/cat`, a pass-through)
//! over each transport, against the same bytes with no opbox in between;
//! then `echo/echo` calls over TCP and QUIC envelopes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use opbox::config::PluginConfig;
use opbox::envelope::client::{Client, RawEvent};
use opbox::{Host, HostConfig};

use super::common::*;
use super::relay::sampling_rss;

/// How much each transport carries.
const MIB: usize = 256;
/// The caller's chunks.
const CHUNK: usize = 64 << 10;

pub(crate) async fn bench_raw() {
    let limits = opbox::runtime::PluginLimitsConfig {
        output_bytes: Some(usize::MAX),
        ..Default::default()
    };
    let config = HostConfig {
        data_dir: data_dir().join("raw"),
        examples: false,
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin("echo"),
            reuse: None,
            name: None,
            tenant: None,
            grants: Default::default(),
            limits,
        }],
        ..HostConfig::demo()
    };
    // A certificate for the QUIC listener (and so the TCP one), made here:
    // both encrypted, as QUIC always is.
    let dir = data_dir().join("raw");
    std::fs::create_dir_all(&dir).expect("a directory");
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("a certificate");
    let files = opbox::net::TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).expect("written");
    std::fs::write(&files.key, made.signing_key.serialize_pem()).expect("written");
    let mut config = config;
    config.envelope.tls = Some(files.clone());
    let host = Host::start(config).await.expect("the host starts");
    let quic = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
        let addr = socket.local_addr().expect("its address");
        let host = host.clone();
        tokio::spawn(async move { host.serve_quic(socket, std::future::pending()).await });
        addr
    };
    let http = serve_host(&host).await;
    let tcp = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let host = host.clone();
        tokio::spawn(async move { host.serve_tcp(listener, std::future::pending()).await });
        addr
    };
    let tls = opbox::envelope::client::tls_config(Some(&files.cert)).expect("the certificate");
    let bare = serve(axum::Router::new().route(
        "/cat",
        axum::routing::post(|body: axum::body::Body| async move {
            axum::body::Body::from_stream(body.into_data_stream())
        }),
    ))
    .await;
    println!(
        "## Raw carriage: {MIB} MiB through `echo/cat`, {} KiB chunks\n",
        CHUNK >> 10
    );
    println!("| path | MiB/s | resident before | peak |\n|---|---|---|---|");
    for (name, path) in [
        (
            "HTTP/1.1, a bare axum handler echoing the body (no opbox)",
            Path::Bare(false),
        ),
        ("HTTP/2, the same bare handler", Path::Bare(true)),
        ("HTTP/1.1 `POST /raw/echo/cat`", Path::Http(false)),
        ("HTTP/2 `POST /raw/echo/cat`", Path::Http(true)),
        (
            "TCP + TLS envelopes, raw chunks",
            Path::Envelope(format!("tls://{tcp}")),
        ),
        (
            "WebSocket envelopes, raw chunks",
            Path::Envelope(format!("ws://{http}/call")),
        ),
        (
            "QUIC envelopes, raw chunks",
            Path::Envelope(format!("quic://{quic}")),
        ),
    ] {
        let tls = tls.clone();
        let (elapsed, before, peak) =
            sampling_rss(move || client_runtime().block_on(run(path, http, bare, tls))).await;
        println!(
            "| {name} | {:.0} | {} MiB | {} MiB |",
            MIB as f64 / elapsed.as_secs_f64(),
            before / 1024,
            peak / 1024
        );
    }
    println!();
    let (in_flight, seconds) = (
        super::envelope::IN_FLIGHT,
        super::envelope::ENVELOPE_SECONDS,
    );
    println!(
        "## Envelopes over TCP and QUIC: `echo/echo`, {in_flight} calls in flight for {seconds} s\n"
    );
    println!("| transport | calls/s | p50 | p99 |\n|---|---|---|---|");
    for (name, target) in [
        ("TCP + TLS, one connection", format!("tls://{tcp}")),
        (
            "QUIC, one connection, JSON calls on one stream",
            format!("quic://{quic}"),
        ),
    ] {
        super::envelope::echo_row(name, target, Some(tls.clone())).await;
    }
    println!();
}

enum Path {
    /// The bare handler; over HTTP/2 when true.
    Bare(bool),
    /// opbox's route; over HTTP/2 when true.
    Http(bool),
    /// An envelope client at this URL.
    Envelope(String),
}

/// Sends `MIB` MiB and reads them back; how long that took.
async fn run(
    path: Path,
    http: std::net::SocketAddr,
    bare: std::net::SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Duration {
    let chunk = Bytes::from(vec![b'r'; CHUNK]);
    let chunks = MIB * (1 << 20) / CHUNK;
    let started = Instant::now();
    let received = match path {
        Path::Bare(h2) | Path::Http(h2) => {
            let url = match path {
                Path::Bare(_) => format!("http://{bare}/cat"),
                _ => format!("http://{http}/raw/echo/cat"),
            };
            let client = if h2 {
                reqwest::Client::builder().http2_prior_knowledge()
            } else {
                reqwest::Client::builder().http1_only()
            }
            .build()
            .expect("a client");
            let body = futures::stream::repeat(chunk)
                .take(chunks)
                .map(Ok::<_, std::io::Error>);
            let response = client
                .post(url)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .expect("a response");
            let mut body = response.bytes_stream();
            let mut bytes = 0;
            while let Some(part) = body.next().await {
                bytes += part.expect("the body reads").len();
            }
            bytes
        }
        Path::Envelope(url) => {
            let client = Client::connect_with(&url, None, Some(tls))
                .await
                .expect("connects");
            let mut call = client
                .run_raw("echo/cat", serde_json::json!(null))
                .await
                .expect("starts");
            let input = call.input();
            let feeding = tokio::spawn(async move {
                for _ in 0..chunks {
                    input.write(&chunk).await.expect("stdin is taken");
                }
                input.close().expect("stdin closes");
            });
            let mut bytes = 0;
            loop {
                match call.next().await.expect("the call goes on") {
                    Ok(RawEvent::Stdout(data)) => bytes += data.len(),
                    Ok(RawEvent::Stderr(_)) => {}
                    Ok(RawEvent::Exit(_)) => break,
                    Err(e) => panic!("the call failed: {e}"),
                }
            }
            feeding.await.expect("fed");
            bytes
        }
    };
    assert_eq!(received, MIB << 20, "every byte came back");
    started.elapsed()
}
