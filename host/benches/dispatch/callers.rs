//! `callers`: one `echo/echo` as an MCP tool call against `POST /call`, and
//! each over TLS against plain TCP; sequentially over one connection, then
//! with 32 connections each keeping a call in flight. The same hyper HTTP/1
//! client speaks to all four, from a thread and runtime of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opbox::net::TlsConfig;
use opbox::{Host, HostConfig};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use super::common::{Stats, client_runtime, data_dir, latency_table};

const SEQUENTIAL: usize = 2_000;
const IN_FLIGHT: usize = 32;
const SECONDS: u64 = 5;

/// Where and how to reach a host.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One HTTP/1 connection to `target`.
async fn connect(target: &Target) -> SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(target.addr)
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    match &target.tls {
        None => {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            sender
        }
        Some(config) => {
            let name = ServerName::try_from("127.0.0.1").expect("a name");
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            sender
        }
    }
}

/// POSTs `body` to `path`; the answer's headers and whole body.
async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    path: &str,
    session: Option<&str>,
    body: &Value,
) -> (hyper::HeaderMap, Bytes) {
    let mut request = hyper::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request");
    sender.ready().await.expect("the connection is ready");
    let response = sender.send_request(request).await.expect("a response");
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (headers, body)
}

/// How a caller makes one `echo/echo` call.
#[derive(Clone, Copy, Debug)]
enum Way {
    Call,
    Mcp,
}

/// A connection ready to make calls one way: for MCP, with a session.
struct Caller {
    sender: SendRequest<Full<Bytes>>,
    session: Option<String>,
    way: Way,
}

impl Caller {
    async fn new(target: &Target, way: Way) -> Self {
        let mut sender = connect(target).await;
        let session = match way {
            Way::Call => None,
            Way::Mcp => {
                let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"}}});
                let (headers, _) = post(&mut sender, "/mcp", None, &initialize).await;
                let session = headers["mcp-session-id"]
                    .to_str()
                    .expect("ASCII")
                    .to_owned();
                let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                post(&mut sender, "/mcp", Some(&session), &initialized).await;
                Some(session)
            }
        };
        Self {
            sender,
            session,
            way,
        }
    }

    async fn echo(&mut self, n: u64) {
        match self.way {
            Way::Call => {
                let body = json!({"operation": "echo/echo", "input": {"x": n}});
                let (_, answer) = post(&mut self.sender, "/call", None, &body).await;
                assert!(answer.starts_with(b"{"), "{answer:?}");
            }
            Way::Mcp => {
                let body = json!({"jsonrpc": "2.0", "id": n + 1, "method": "tools/call",
                    "params": {"name": "echo.echo", "arguments": {"input": {"x": n}}}});
                let session = self.session.as_deref();
                let (_, answer) = post(&mut self.sender, "/mcp", session, &body).await;
                let text = std::str::from_utf8(&answer).expect("UTF-8");
                assert!(text.contains("\"structuredContent\""), "{text}");
            }
        }
    }
}

/// Sequential calls over one connection.
fn sequential(target: &Target, way: Way) -> Stats {
    client_runtime().block_on(async {
        let mut caller = Caller::new(target, way).await;
        let mut samples = Vec::with_capacity(SEQUENTIAL);
        for n in 0..(SEQUENTIAL + 200) as u64 {
            let start = Instant::now();
            caller.echo(n).await;
            if n >= 200 {
                samples.push(start.elapsed());
            }
        }
        Stats::of(samples)
    })
}

/// `IN_FLIGHT` connections each making calls one after another for
/// `SECONDS`; calls per second and their latencies.
fn in_flight(target: &Target, way: Way) -> (f64, Stats) {
    client_runtime().block_on(async {
        let mut callers = Vec::new();
        for _ in 0..IN_FLIGHT {
            callers.push(Caller::new(target, way).await);
        }
        let until = Instant::now() + Duration::from_secs(SECONDS);
        let start = Instant::now();
        let tasks: Vec<_> = callers
            .into_iter()
            .map(|mut caller| {
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut n = 0;
                    while Instant::now() < until {
                        let call = Instant::now();
                        caller.echo(n).await;
                        samples.push(call.elapsed());
                        n += 1;
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.expect("a caller"));
        }
        let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
        (rate, Stats::of(samples))
    })
}

/// A host like the bench's, serving over TLS with a certificate made here.
async fn tls_host(dir: &std::path::Path) -> (Host, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("a certificate");
    let files = TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).expect("write");
    std::fs::write(&files.key, made.signing_key.serialize_pem()).expect("write");
    let mut config = HostConfig {
        data_dir: dir.join("data"),
        cache_dir: Some(data_dir().join("cache")),
        ..HostConfig::demo()
    };
    config.gateway.tls = Some(files);
    (
        Host::start(config).await.expect("the TLS host starts"),
        made.cert.der().clone(),
    )
}

async fn serve(host: &Host) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let host = host.clone();
    tokio::spawn(async move { host.serve(listener, std::future::pending()).await });
    addr
}

pub(crate) async fn bench_callers(host: &Host) {
    println!(
        "## Callers: `echo/echo` through `/call` and as an MCP tool, plain and over TLS\n\n\
         Sequential: {SEQUENTIAL} calls over one connection. In flight: {IN_FLIGHT} connections, \
         each with one call at a time, for {SECONDS} s.\n"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (tls, cert) = tls_host(dir.path()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("the certificate");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let targets = [
        (
            "plain",
            Target {
                addr: serve(host).await,
                tls: None,
            },
        ),
        (
            "TLS",
            Target {
                addr: serve(&tls).await,
                tls: Some(Arc::new(client)),
            },
        ),
    ];
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for (transport, target) in &targets {
        for way in [Way::Call, Way::Mcp] {
            let name = format!("{way:?} ({transport})");
            let target = target.clone();
            let (stats, (rate, flight)) = tokio::task::spawn_blocking(move || {
                (sequential(&target, way), in_flight(&target, way))
            })
            .await
            .expect("the clients");
            rows.push((format!("{name}, sequential"), stats));
            rows.push((format!("{name}, {IN_FLIGHT} in flight"), flight));
            rates.push((name, rate));
        }
    }
    let table: Vec<(&str, &Stats)> = rows.iter().map(|(n, s)| (n.as_str(), s)).collect();
    latency_table("caller", &table);
    println!("\n| caller | calls/s with {IN_FLIGHT} in flight |\n|---|---|");
    for (name, rate) in &rates {
        println!("| {name} | {rate:.0} |");
    }
    println!();
}
