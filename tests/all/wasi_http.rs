//! Standard `wasi:http` components as plugins (`docs/wasi-http.md`),
//! mounted at `/http/{name}/`: `plugins/wasi-http-echo` and
//! `plugins/wasi-http-hello`, built against WASI 0.2 alone, unmodified.

use std::path::PathBuf;
use std::time::Duration;

use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{TestHost, two_tenants};

/// A component of the plugins workspace, as `[[plugins]]` declares it.
fn component(file: &str, name: &str, tenant: Option<&str>) -> PluginConfig {
    PluginConfig {
        path: PathBuf::from(env!("OPBOX_PLUGINS_DIR")).join(format!("{file}.wasm")),
        reuse: None,
        name: Some(name.into()),
        tenant: tenant.map(Into::into),
        grants: Default::default(),
        limits: Default::default(),
    }
}

/// A host serving the examples and the echo component as `echo-http`.
async fn host_with(configure: impl FnOnce(&mut opbox::HostConfig)) -> TestHost {
    TestHost::with_config(|config| {
        config
            .plugins
            .push(component("wasi_http_echo", "echo-http", None));
        configure(config);
    })
    .await
}

/// The component gets the request less its mount: method, the path below
/// it with the query, the headers (the host's own left out) and the body;
/// its answer comes back as it wrote it, with the host's request id.
#[tokio::test]
async fn a_wasi_http_component_gets_the_request_below_its_mount() {
    let host = host_with(|_| {}).await;
    let response = host
        .client
        .put(host.url("/http/echo-http/notes/7?draft=1"))
        .header("x-mine", "kept")
        .header("opbox-deadline-ms", "5000")
        .body("the body, as it came")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert!(response.headers().contains_key("opbox-request-id"));
    let text = response.text().await.expect("a body");
    let (head, body) = text.split_once("\n\n").expect("headers, then the body");
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("PUT /notes/7?draft=1"));
    let headers: Vec<_> = lines.collect();
    assert!(headers.contains(&"x-mine: kept"), "{headers:?}");
    assert!(
        !headers.iter().any(|h| h.starts_with("opbox-")),
        "{headers:?}"
    );
    assert_eq!(body, "the body, as it came");

    // The mount itself is `/`.
    let text = host
        .client
        .get(host.url("/http/echo-http"))
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("a body");
    assert!(text.starts_with("GET /\n"), "{text}");

    // Counted like any call, by plugin and outcome.
    assert_eq!(answered(&host, "echo-http").await, 2.0);
}

/// Requests to the component mounted as `name` counted answered.
pub(crate) async fn answered(host: &TestHost, name: &str) -> f64 {
    let (_, samples) = crate::metrics::scrape(host, None).await;
    let operation = format!("{name}/http");
    let labels = [
        ("operation", operation.as_str()),
        ("plugin", name),
        ("transport", "http"),
        ("code", "ok"),
    ];
    crate::metrics::value(&samples, "opbox_calls_total", &labels)
}

/// An upstream server on a loopback port answering `GET /hello`.
pub(crate) async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { "hello from upstream" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A component built with the Spin Rust SDK, as its template writes one,
/// runs unmodified: it gets the path below its mount, as `spin up` would
/// give it the path below its route.
#[tokio::test]
async fn a_component_built_with_the_spin_sdk_runs_unmodified() {
    let host = host_with(|config| {
        config
            .plugins
            .push(component("spin_hello", "spin-hello", None));
    })
    .await;
    let response = host
        .client
        .get(host.url("/http/spin-hello/greet?who=opbox"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(
        response.text().await.expect("a body"),
        "Hello from Spin: GET /greet\n"
    );
}

/// A component built for `wasmtime serve` runs unmodified, and is listed
/// like any plugin: in `/search` as one operation of kind `http`, and in
/// `/openapi.json` as a mount.
#[tokio::test]
async fn a_component_for_wasmtime_serve_runs_unmodified_and_is_listed() {
    let host = host_with(|config| {
        config
            .plugins
            .push(component("wasi_http_hello", "hello-http", None));
    })
    .await;
    let response = host
        .client
        .post(host.url("/http/hello-http/call"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body, json!({"result": "ok", "output": {"x": 1}}));

    let (_, found) = host.get("/search?q=hello-http").await;
    let found = found["operations"].as_array().expect("operations").clone();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["name"], "hello-http/http");
    assert_eq!(found[0]["op_type"], "http");
    let (_, openapi) = host.get("/openapi.json").await;
    assert!(
        openapi["paths"]["/http/hello-http/{path}"]["get"].is_object(),
        "{}",
        openapi["paths"]
    );
    // Not a tool, and not something `/call` runs.
    let (status, body) = host.call("hello-http/http", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_OPERATION_TYPE");
}

/// A tenant's component answers that tenant only: another tenant gets the
/// 404 a name nobody uses gets.
#[tokio::test]
async fn another_tenants_component_is_not_found_as_a_name_nobody_uses() {
    let host = TestHost::with_config(|config| {
        two_tenants(config);
        config
            .plugins
            .push(component("wasi_http_echo", "mine", Some("acme")));
    })
    .await;
    let get = |path: &str, token: &str| host.client.get(host.url(path)).bearer_auth(token).send();
    let own = get("/http/mine/x", "acme").await.expect("answered");
    assert_eq!(own.status(), StatusCode::OK);
    let text = own.text().await.expect("a body");
    // The caller's token is the host's, not the component's.
    assert!(!text.to_lowercase().contains("authorization"), "{text}");
    let other = get("/http/mine/x", "globex").await.expect("answered");
    let nobody = get("/http/nobody/x", "globex").await.expect("answered");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
    let other: Value = other.json().await.expect("JSON");
    let nobody: Value = nobody.json().await.expect("JSON");
    assert_eq!(other["error"]["code"], nobody["error"]["code"]);
    let message = |v: &Value| {
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .replace("mine", "NAME")
            .replace("nobody", "NAME")
    };
    assert_eq!(message(&other), message(&nobody));
}

/// The plugin's limits hold: a component that computes forever is stopped
/// at the call's deadline, one that takes more than `memory_bytes` fails,
/// and a body past `output_bytes` is cut off; the host serves the next
/// request.
#[tokio::test]
async fn a_component_is_held_to_its_deadline_and_output_bytes() {
    let host = host_with(|config| {
        config.plugin_limits.output_bytes = Some(64 << 10);
        config.plugin_limits.memory_bytes = Some(16 << 20);
    })
    .await;
    refused_past_memory_bytes(&host, "/http/echo-http").await;

    let spin = host
        .client
        .get(host.url("/http/echo-http/spin"))
        .header("opbox-deadline-ms", "500")
        .send()
        .await
        .expect("answered");
    let status = spin.status();
    let error: Value = spin.json().await.expect("JSON");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert_eq!(error["error"]["code"], "TIMEOUT", "{error}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);

    cut_off_past_output_bytes(&host, "/http/echo-http").await;

    let after = host
        .client
        .get(host.url("/http/echo-http/still"))
        .send()
        .await
        .expect("answered");
    assert_eq!(after.status(), StatusCode::OK);
}

/// `{mount}/grow` past `memory_bytes` (16 MiB) fails with that limit.
pub(crate) async fn refused_past_memory_bytes(host: &TestHost, mount: &str) {
    let grow = host
        .client
        .get(host.url(&format!("{mount}/grow?bytes=33554432")))
        .send()
        .await
        .expect("answered");
    let error: Value = grow.json().await.expect("JSON");
    assert_eq!(
        error["error"]["details"]["limit"], "memory_bytes",
        "{error}"
    );
}

/// `{mount}/big` within `output_bytes` (64 KiB) arrives whole; one byte
/// past it, the head arrives and the body is cut off.
pub(crate) async fn cut_off_past_output_bytes(host: &TestHost, mount: &str) {
    let within = host
        .client
        .get(host.url(&format!("{mount}/big?bytes=65536")))
        .send()
        .await
        .expect("answered");
    assert_eq!(within.bytes().await.expect("the whole body").len(), 65536);
    let past = host
        .client
        .get(host.url(&format!("{mount}/big?bytes=65537")))
        .send()
        .await
        .expect("the head arrives");
    assert_eq!(past.status(), StatusCode::OK);
    assert!(
        past.bytes().await.is_err(),
        "a body past output_bytes is cut off"
    );
}

/// Installed, replaced and removed through the admin API like any plugin:
/// requests sent one after another while it is replaced are all answered,
/// by one version or the other, and once it is removed its mount is
/// `NOT_FOUND`.
#[tokio::test]
async fn a_wasi_http_component_is_installed_replaced_and_removed_while_serving() {
    use crate::admin::{OPERATOR, fixture, install, replace, with_operator};
    let data = tempfile::tempdir().expect("a directory");
    let host = TestHost::with_config(|config| with_operator(config, data.path())).await;
    let settings = json!({"name": "web"});
    let (status, body) = install(
        &host,
        Some(OPERATOR),
        Some(settings),
        fixture("wasi_http_echo"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let get = || async {
        let response = host
            .client
            .get(host.url("/http/web/x"))
            .send()
            .await
            .expect("answered");
        (response.status(), response.text().await.expect("a body"))
    };
    let (status, text) = get().await;
    assert_eq!(
        (status, text.starts_with("GET /x")),
        (StatusCode::OK, true),
        "{text}"
    );

    let client = host.client.clone();
    let url = host.url("/http/web/x");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let requests = tokio::spawn(async move {
        let (mut echo, mut hello) = (0, 0);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let response = client.get(&url).send().await.expect("answered");
            assert_eq!(response.status(), StatusCode::OK, "a request was dropped");
            let text = response.text().await.expect("a whole body");
            if text.starts_with("GET /x") {
                echo += 1;
            } else {
                assert!(text.contains(r#""result":"ok""#), "{text}");
                hello += 1;
            }
        }
        (echo, hello)
    });
    let (status, body) = replace(&host, "web", fixture("wasi_http_hello")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Until the new version has answered a few.
    loop {
        let (status, text) = get().await;
        assert_eq!(status, StatusCode::OK);
        if text.contains(r#""result":"ok""#) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (echo, hello) = requests.await.expect("no request failed");
    assert!(echo + hello > 0);

    let response = host
        .client
        .delete(host.url("/admin/v1/plugins/web"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .expect("answered");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(get().await.0, StatusCode::NOT_FOUND);
}

/// What a request cost arrives after the body, as the `opbox-cost`
/// trailer (read here over HTTP/2, with hyper): its bytes out are the
/// body's.
#[tokio::test]
async fn the_cost_of_a_request_is_a_trailer_after_the_body() {
    use http_body_util::BodyExt;
    let host = host_with(|_| {}).await;
    let stream = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connects");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let request = hyper::Request::get(host.url("/http/echo-http/big?bytes=10000"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(collected.to_bytes().len(), 10000);
    let cost: Value = serde_json::from_slice(trailers["opbox-cost"].as_bytes()).expect("JSON");
    assert_eq!(cost["bytes_out"], 10000, "{cost}");
    assert!(cost["wall_us"].as_u64().expect("a time") > 0, "{cost}");
}

/// A caller that goes away stops the guest at once, not at its deadline:
/// the spinning component's instance is gone once the connection is.
#[tokio::test]
async fn a_caller_that_goes_away_stops_the_component() {
    // A CPU budget past the deadline (30 s): only the caller leaving can
    // stop it within the wait below.
    let host = host_with(|config| config.plugin_limits.cpu_ms = Some(60_000)).await;
    leaving_stops_the_guest(&host, "/http/echo-http/spin").await;
}

/// Sends `GET path` (a component that spins) on a socket of its own, then
/// closes it: the guest's instance is gone well within the deadline.
pub(crate) async fn leaving_stops_the_guest(host: &TestHost, path: &str) {
    use tokio::io::AsyncWriteExt;
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    let mut socket = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connects");
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: opbox\r\n\r\n").as_bytes())
        .await
        .expect("sent");
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    drop(socket);
    // Well within the 30 s deadline.
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "the component still runs after its caller left"
    );
}

/// Its imports are linked as a plugin's are: `wasi:http/outgoing-handler`
/// reaches the hosts of its `allowed_outbound_hosts` and no other.
#[tokio::test]
async fn a_component_reaches_only_the_hosts_it_is_granted() {
    let addr = upstream().await;
    let host = TestHost::with_config(|config| {
        let mut echo = component("wasi_http_echo", "echo-http", None);
        echo.grants.allowed_outbound_hosts = vec![format!("http://127.0.0.1:{}", addr.port())];
        config.plugins.push(echo);
    })
    .await;
    let fetch = |url: String| {
        let path = format!("/http/echo-http/fetch?url={url}");
        let request = host.client.get(host.url(&path)).send();
        async move {
            let response = request.await.expect("answered");
            (response.status(), response.text().await.expect("a body"))
        }
    };
    let granted = fetch(format!("http://127.0.0.1:{}/hello", addr.port())).await;
    assert_eq!(granted, (StatusCode::OK, "hello from upstream".to_owned()));
    let (status, text) = fetch(format!("http://localhost:{}/hello", addr.port())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");
}

/// `opbox serve` in `dir`, open to anonymous callers, serving the echo
/// component as `echo-http`, with `extra` in its configuration.
fn echo_server(dir: &std::path::Path, extra: &str) -> crate::util::Server {
    let config = format!(
        "listen = \"127.0.0.1:0\"\nexamples = false\ncache_dir = {:?}\n\n[[tenants]]\nid = \"default\"\nanonymous = true\n\n{extra}\n[[plugins]]\npath = {:?}\nname = \"echo-http\"\n",
        crate::util::cache_dir(),
        PathBuf::from(env!("OPBOX_PLUGINS_DIR")).join("wasi_http_echo.wasm"),
    );
    crate::util::Server::start_in(dir, &config)
}

/// What it writes to stderr is logged by the host, attributed: the line
/// names the plugin and the request.
#[tokio::test]
async fn what_a_component_writes_to_stderr_is_logged_with_its_request() {
    let dir = tempfile::tempdir().expect("a directory");
    let server = echo_server(dir.path(), "");
    let response = reqwest::get(format!("{}/http/echo-http/log", server.url))
        .await
        .expect("answered");
    let request_id = response.headers()["opbox-request-id"]
        .to_str()
        .expect("text")
        .to_owned();
    assert_eq!(response.text().await.expect("a body"), "logged");
    assert!(
        server.logs_within("a line from the component", Duration::from_secs(10)),
        "the component's stderr was not logged"
    );
    let log = server.stop();
    let line = log
        .iter()
        .find(|line| line.contains("a line from the component"))
        .expect("the line");
    assert!(line.contains("echo-http"), "{line}");
    assert!(line.contains(&request_id), "{line}");
    assert!(line.contains("stderr"), "{line}");
}

/// A request to a component joins the caller's trace: its span is a child
/// of the caller's, and the response names it.
#[tokio::test]
async fn a_request_joins_the_callers_trace() {
    let (endpoint, received) = crate::traces::receiver().await;
    let dir = tempfile::tempdir().expect("a directory");
    let telemetry =
        format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"opbox-test\"\n");
    let server = echo_server(dir.path(), &telemetry);
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = reqwest::Client::new()
        .get(format!("{}/http/echo-http/traced", server.url))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        response
            .text()
            .await
            .expect("a body")
            .starts_with("GET /traced")
    );
    let spans = crate::traces::spans_of(&received, &crate::traces::id_bytes(trace_id), 1).await;
    let span = crate::traces::named(&spans, "echo-http/http");
    assert_eq!(crate::traces::hex(&span.parent_span_id), caller_span);
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", crate::traces::hex(&span.span_id))
    );
}
