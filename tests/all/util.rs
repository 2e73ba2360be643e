//! The test harness: a host on a real socket, an HTTP client, an SSE reader.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use opbox::config::PluginConfig;
use opbox::{Host, HostConfig};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

/// The test-only plugins loaded next to the bundled examples: fixtures for
/// functional tests, `hostile-*` for containment tests.
pub const FIXTURES: &[&str] = &[
    "fixture-core",
    "fixture-hog",
    "fixture-panic",
    "fixture-slow",
    "hostile-ambient",
    "hostile-edge",
    "hostile-loop",
    "hostile-memory",
    "hostile-noise",
];

/// Where compiled plugins are cached, shared by every test.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("opbox-tests/cache")
}

/// A data directory of its own for one host (one host at a time may use
/// one). Those of earlier runs are deleted the first time.
pub fn data_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static CLEARED: std::sync::Once = std::sync::Once::new();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("opbox-tests/hosts");
    let pid = std::process::id();
    CLEARED.call_once(|| {
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{pid}-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("{pid}-{n}"));
    std::fs::create_dir_all(&dir).expect("a data directory");
    dir
}

/// A host serving HTTP on an ephemeral port; stops when dropped.
pub struct TestHost {
    pub host: Host,
    pub addr: SocketAddr,
    /// Where the envelope protocol is served over TCP.
    pub tcp_addr: SocketAddr,
    pub client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl TestHost {
    /// The examples and fixtures with default settings.
    pub async fn start() -> Self {
        Self::with_config(|_| {}).await
    }

    /// The examples and fixtures, with `configure` applied to the config.
    pub async fn with_config(configure: impl FnOnce(&mut HostConfig)) -> Self {
        let _ = tracing_subscriber_init();
        let mut config = HostConfig {
            data_dir: data_dir(),
            cache_dir: Some(cache_dir()),
            // As `opbox serve` does: uploads compiled in a child process.
            compiler: Some(PathBuf::from(env!("CARGO_BIN_EXE_opbox"))),
            plugins: FIXTURES
                .iter()
                .map(|name| PluginConfig {
                    path: opbox::bundled::built_plugin(name),
                    reuse: None,
                    name: None,
                    tenant: None,
                    grants: Default::default(),
                    limits: Default::default(),
                })
                .collect(),
            ..HostConfig::demo()
        };
        configure(&mut config);
        let host = Host::start(config).await.expect("the host starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tcp_addr = tcp.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = futures::FutureExt::shared(async {
            let _ = stopped.await;
        });
        tokio::spawn({
            let (host, stopped) = (host.clone(), stopped.clone());
            async move { host.serve(listener, stopped).await }
        });
        tokio::spawn({
            let host = host.clone();
            async move { host.serve_tcp(tcp, stopped).await }
        });
        Self {
            host,
            addr,
            tcp_addr,
            client: reqwest::Client::new(),
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a JSON body; returns the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// POSTs raw bytes; returns the status and the JSON answer.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// GETs a path; returns the status and the JSON answer.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// `POST /call` of `operation` with `input`.
    pub async fn call(&self, operation: &str, input: Value) -> (StatusCode, Value) {
        self.post(
            "/call",
            &serde_json::json!({ "operation": operation, "input": input }),
        )
        .await
    }

    /// `POST /call` of `operation` with `input`, as the holder of `token`.
    pub async fn call_as(&self, token: &str, operation: &str, input: Value) -> (StatusCode, Value) {
        call_as(&self.client, &self.url("/call"), token, operation, input).await
    }

    /// Opens `POST /subscribe` and returns its event reader.
    pub async fn subscribe(&self, operation: &str, input: Value) -> SseReader {
        let response = self
            .client
            .post(self.url("/subscribe"))
            .json(&serde_json::json!({ "operation": operation, "input": input }))
            .send()
            .await
            .expect("request sent");
        SseReader::of(response)
    }

    /// Waits until the host has exactly `n` live instances, for at most
    /// `within`; returns the last count seen.
    pub async fn wait_for_live(&self, n: usize, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            let live = self.host.runtime().live_instances();
            if live == n || start.elapsed() > within {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `POST` of `{operation, input}` to the `/call` URL `url` with `token`;
/// returns the status and the JSON answer. Owns nothing of a `TestHost`, so
/// it can run on a spawned task.
pub async fn call_as(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    operation: &str,
    input: Value,
) -> (StatusCode, Value) {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(&serde_json::json!({ "operation": operation, "input": input }))
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    (status, response.json().await.expect("a JSON answer"))
}

fn tracing_subscriber_init() -> Result<(), ()> {
    // Logs show with `--nocapture`; RUST_LOG picks the level.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init()
        .map_err(|_| ())
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// Reads events off an SSE response, skipping keep-alive comments.
pub struct SseReader {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    /// The events of `response`, which must be a 200 event stream.
    pub fn of(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Some(event);
                }
                continue;
            }
            let chunk = self.body.next().await?.expect("the stream reads");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Every remaining event.
    pub async fn collect(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent {
        event: "message".to_owned(),
        id: None,
        data: String::new(),
    };
    let mut any = false;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = Some(value.to_owned()),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => continue,
        }
        any = true;
    }
    any.then_some(event)
}

/// A raw TCP connection speaking length-prefixed frames, for tests that need
/// to send what no well-behaved client would.
pub struct Frames<S = tokio::net::TcpStream> {
    stream: S,
}

impl Frames {
    pub async fn connect(host: &TestHost) -> Self {
        Self::at(host.tcp_addr).await
    }

    /// Connects to the envelope listener at `addr`.
    pub async fn at(addr: impl tokio::net::ToSocketAddrs) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self::new(stream)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Frames<S> {
    /// Frames over a connection already open (TLS or not).
    pub fn new(stream: S) -> Self {
        Self { stream }
    }

    /// The raw connection.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends `bytes` as one frame.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let len = u32::try_from(bytes.len()).unwrap().to_be_bytes();
        self.stream.write_all(&len).await.unwrap();
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends an envelope.
    pub async fn send(&mut self, kind: &str, id: &str, payload: Value) {
        let envelope = serde_json::json!({"type": kind, "id": id, "payload": payload});
        self.send_raw(envelope.to_string().as_bytes()).await;
    }

    /// Sends `call.requested` for `operation` with `input`.
    pub async fn call(&mut self, id: &str, operation: &str, input: Value) {
        let payload = serde_json::json!({"operationId": operation, "input": input});
        self.send("call.requested", id, payload).await;
    }

    /// The next frame's bytes, whatever they are, or `None` when the host
    /// closed the connection. Fails the test after 30 s.
    pub async fn next_frame(&mut self) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.ok()?;
            let mut bytes = vec![0; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut bytes).await.ok()?;
            Some(bytes)
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("a frame within 30 s")
    }

    /// The next envelope, or `None` when the host closed the connection.
    /// Fails the test after 30 s.
    pub async fn next(&mut self) -> Option<Value> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.ok()?;
            let mut bytes = vec![0; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut bytes).await.ok()?;
            Some(serde_json::from_slice(&bytes).expect("the host sends JSON"))
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("an envelope within 30 s")
    }
}

/// A real `opbox serve` process, killed when dropped.
pub struct Server {
    child: std::process::Child,
    /// `http://ADDR` of its gateway.
    pub url: String,
    /// `ADDR` of its envelope listener, when the config has `tcp_listen`.
    pub tcp: Option<String>,
    /// `ADDR` of its QUIC listener, when the config has `quic_listen`.
    pub quic: Option<String>,
    /// Every line it has logged so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Its stderr, held open and never read (see [`Server::start_unread`]).
    _unread: Option<std::io::Lines<std::io::BufReader<std::process::ChildStderr>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Runs `opbox serve` with `config` as its configuration file, written
    /// to a directory of its own.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir.path(), config)
    }

    /// Runs `opbox serve` with `config` written to `dir/opbox.toml`, so
    /// relative paths in it are relative to `dir`.
    pub fn start_in(dir: &std::path::Path, config: &str) -> Self {
        Self::start_logging(dir, config, "warn,opbox=info")
    }

    /// [`Server::start_in`] with `RUST_LOG` set to `filter`.
    pub fn start_logging(dir: &std::path::Path, config: &str, filter: &str) -> Self {
        Self::start_with(dir, config, &[("RUST_LOG", filter)])
    }

    /// Runs `opbox serve` with `config` written to `dir/opbox.toml` and
    /// `env` set. Returns once it listens (on TCP and QUIC too, when
    /// `config` has `tcp_listen` or `quic_listen`).
    pub fn start_with(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(dir, config, env, true)
    }

    /// [`Server::start_in`], but once it listens nothing reads its stderr
    /// any more: a pipe that fills up and stays full.
    pub fn start_unread(dir: &std::path::Path, config: &str) -> Self {
        Self::launch(dir, config, &[], false)
    }

    fn launch(dir: &std::path::Path, config: &str, env: &[(&str, &str)], read_log: bool) -> Self {
        use std::io::{BufRead, BufReader};
        let path = dir.join("opbox.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opbox"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn,opbox=info")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let wants_tcp = config.contains("tcp_listen");
        let wants_quic = config.contains("quic_listen");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut http, mut tcp, mut quic, mut log) = (None, None, None, Vec::new());
        while http.is_none() || (wants_tcp && tcp.is_none()) || (wants_quic && quic.is_none()) {
            let line = lines.next().expect("the server starts").unwrap();
            // `serving on http://…` or `https://…`.
            if let Some((_, url)) = line.split_once("serving on ") {
                http = url
                    .trim()
                    .split_once("://")
                    .map(|(_, addr)| addr.to_owned());
            }
            // `envelopes on tcp://ADDR`, then ` (TLS)` when it is.
            let addr_after = |marker: &str| {
                let (_, rest) = line.split_once(marker)?;
                rest.split_whitespace().next().map(str::to_owned)
            };
            tcp = tcp.or_else(|| addr_after("envelopes on tcp://"));
            quic = quic.or_else(|| addr_after("envelopes on quic://"));
            log.push(line);
        }
        let log = std::sync::Arc::new(std::sync::Mutex::new(log));
        // Keep reading the log, so the server never blocks on a full pipe;
        // or hold the pipe open, unread.
        let (reader, unread) = if read_log {
            let log = log.clone();
            let reader = std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
            (Some(reader), None)
        } else {
            (None, Some(lines))
        };
        Self {
            child,
            url: format!("http://{}", http.unwrap()),
            tcp,
            quic,
            log,
            reader,
            _unread: unread,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has logged a line containing `text` so far.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    /// Whether it logs a line containing `text` within `within` (log lines
    /// are written a moment after they are made).
    pub fn logs_within(&self, text: &str, within: Duration) -> bool {
        let start = Instant::now();
        while !self.logged(text) {
            if start.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Waits for it to exit; every line it logged.
    pub fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        (status, log)
    }

    /// `POST /call` of `operation` with `input`, anonymously; the JSON
    /// answer.
    pub async fn call(&self, client: &reqwest::Client, operation: &str, input: Value) -> Value {
        client
            .post(format!("{}/call", self.url))
            .json(&serde_json::json!({ "operation": operation, "input": input }))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// Its resident memory, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Stops it as an operator would (SIGTERM: it drains and writes every
    /// log line it has queued); every line it logged.
    pub fn stop(self) -> Vec<String> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait().1
    }

    /// Kills it at once (SIGKILL: no shutdown, no flushing), as a power cut
    /// would; every line it logged.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.wait().1
    }
}

/// Tenants `acme` and `globex`, each with one token: its own name.
pub fn two_tenants(config: &mut HostConfig) {
    use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
    config.tenants = ["acme", "globex"]
        .iter()
        .map(|id| TenantConfig {
            id: (*id).into(),
            anonymous: false,
            tokens: vec![TokenConfig {
                id: format!("{id}-user"),
                sha256: hash_token_hex(id),
                scopes: vec![],
            }],
            quotas: Quotas::default(),
            plugins: Default::default(),
        })
        .collect();
}
