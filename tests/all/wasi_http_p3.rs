//! WASIp3 `wasi:http` components (`wasi:http/handler@0.3`) as plugins
//! (`docs/wasi-http.md`): `plugins/wasi-http-stream`, built with the
//! `wasip3` crate alone, unmodified, mounted at `/http/{name}/` like a
//! WASIp2 one.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{TestHost, two_tenants};

/// The WASIp3 example, as `[[plugins]]` declares it.
fn stream(name: &str, tenant: Option<&str>) -> PluginConfig {
    PluginConfig {
        path: PathBuf::from(env!("OPBOX_PLUGINS_DIR")).join("wasi_http_stream.wasm"),
        reuse: None,
        name: Some(name.into()),
        tenant: tenant.map(Into::into),
        grants: Default::default(),
        limits: Default::default(),
    }
}

/// A host serving the WASIp3 example as `stream`.
async fn host_with(configure: impl FnOnce(&mut opbox::HostConfig)) -> TestHost {
    TestHost::with_config(|config| {
        config.plugins.push(stream("stream", None));
        configure(config);
    })
    .await
}

/// `GET path` on `host`: the status and the body as text.
async fn get(host: &TestHost, path: &str) -> (StatusCode, String) {
    let response = host
        .client
        .get(host.url(path))
        .send()
        .await
        .expect("answered");
    (response.status(), response.text().await.expect("a body"))
}

/// Reads `body` until what it has carried ends with `wanted`.
async fn read_until(body: &mut hyper::body::Incoming, got: &mut String, wanted: &str) {
    while !got.ends_with(wanted) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("`{wanted}` never came back; got {got:?}"))
            .expect("the body goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            got.push_str(std::str::from_utf8(&data).expect("text"));
        }
    }
}

/// The body streams both ways: each chunk sent comes back before the next
/// is sent, through a real HTTP/1.1 connection. The component gets the
/// request below its mount, its authority from `Host`; the request is
/// counted by plugin and outcome.
#[tokio::test]
async fn a_wasip3_component_streams_its_body_both_ways() {
    let host = host_with(|_| {}).await;
    let socket = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connects");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(socket))
            .await
            .expect("an HTTP/1.1 connection");
    tokio::spawn(connection);
    let (mut chunks, sent) =
        futures::channel::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    let request = hyper::Request::post("/http/stream/notes?x=1")
        .header("host", "opbox.test")
        .header("x-mine", "kept")
        .body(http_body_util::StreamBody::new(sent))
        .expect("a request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("opbox-request-id"));
    let mut body = response.into_body();
    let mut got = String::new();
    read_until(&mut body, &mut got, "\n\n").await;
    let mut head = got.lines();
    // Its scheme and authority come from the connection and `Host`.
    assert_eq!(head.next(), Some("POST http://opbox.test/notes?x=1"));
    let headers: Vec<_> = head.collect();
    assert!(headers.contains(&"x-mine: kept"), "{headers:?}");
    use futures::SinkExt;
    for chunk in ["one\n", "two\n", "three\n"] {
        chunks
            .send(Ok(hyper::body::Frame::data(Bytes::from(chunk))))
            .await
            .expect("sent");
        read_until(&mut body, &mut got, chunk).await;
    }
    drop(chunks);
    while let Some(frame) = body.frame().await {
        frame.expect("the body ends whole");
    }
    assert!(got.ends_with("\n\none\ntwo\nthree\n"), "{got}");

    assert_eq!(crate::wasi_http::answered(&host, "stream").await, 1.0);
}

/// The plugin's limits hold, each failing only its own request: a
/// component that computes forever before it answers is stopped at the
/// deadline, one that does while it writes its body at `cpu_ms` (its body
/// then ends in an error, not as if it were whole); one that takes more
/// memory than `memory_bytes` fails; a body past `output_bytes` is cut
/// off. The host serves the next request, and no instance is left running.
#[tokio::test]
async fn a_wasip3_component_is_held_to_its_limits_and_fails_alone() {
    let host = host_with(|config| {
        config.plugin_limits.output_bytes = Some(64 << 10);
        config.plugin_limits.memory_bytes = Some(16 << 20);
        config.plugin_limits.cpu_ms = Some(300);
    })
    .await;
    let spin = host
        .client
        .get(host.url("/http/stream/spin"))
        .header("opbox-deadline-ms", "200")
        .send()
        .await
        .expect("answered");
    let status = spin.status();
    let error: Value = spin.json().await.expect("JSON");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert_eq!(error["error"]["code"], "TIMEOUT", "{error}");

    let spin_body = host
        .client
        .get(host.url("/http/stream/spin-body"))
        .send()
        .await
        .expect("the head arrives");
    assert_eq!(spin_body.status(), StatusCode::OK);
    assert!(
        spin_body.bytes().await.is_err(),
        "a body whose writer was stopped ends in an error, not as if whole"
    );

    crate::wasi_http::refused_past_memory_bytes(&host, "/http/stream").await;
    assert_eq!(
        get(&host, "/http/stream/grow?bytes=1048576").await,
        (StatusCode::OK, "grown".to_owned())
    );

    crate::wasi_http::cut_off_past_output_bytes(&host, "/http/stream").await;

    let (status, text) = get(&host, "/http/stream/still").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.starts_with("GET http://"), "{text}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

/// A tenant's WASIp3 component answers that tenant only, and reaches only
/// the hosts it is granted through `wasi:http/client`.
#[tokio::test]
async fn a_wasip3_component_answers_its_tenant_and_reaches_only_granted_hosts() {
    let addr = crate::wasi_http::upstream().await;
    let host = TestHost::with_config(|config| {
        two_tenants(config);
        let mut mine = stream("mine", Some("acme"));
        mine.grants.allowed_outbound_hosts = vec![format!("http://127.0.0.1:{}", addr.port())];
        config.plugins.push(mine);
    })
    .await;
    let get = |path: String, token: &'static str| {
        let request = host.client.get(host.url(&path)).bearer_auth(token).send();
        async move {
            let response = request.await.expect("answered");
            (response.status(), response.text().await.expect("a body"))
        }
    };
    let granted = format!(
        "/http/mine/fetch?url=http://127.0.0.1:{}/hello",
        addr.port()
    );
    assert_eq!(
        get(granted.clone(), "acme").await,
        (StatusCode::OK, "hello from upstream".to_owned())
    );
    let (status, text) = get(
        format!(
            "/http/mine/fetch?url=http://localhost:{}/hello",
            addr.port()
        ),
        "acme",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");

    let (other, other_text) = get(granted, "globex").await;
    let (nobody, nobody_text) = get("/http/nobody/x".into(), "globex").await;
    assert_eq!(
        (other, nobody),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    let error = |text: String, name: &str| {
        let body: Value = serde_json::from_str(&text.replace(name, "NAME")).expect("JSON");
        body["error"].clone()
    };
    assert_eq!(error(other_text, "mine"), error(nobody_text, "nobody"));
}

/// Installed and replaced through the admin API while requests flow: none
/// is dropped, and the event feed tells both changes.
#[tokio::test]
async fn a_wasip3_component_is_replaced_under_load_dropping_no_request() {
    use crate::admin::{OPERATOR, fixture, install, replace, with_operator};
    let data = tempfile::tempdir().expect("a directory");
    let host = TestHost::with_config(|config| with_operator(config, data.path())).await;
    let (status, body) = install(
        &host,
        Some(OPERATOR),
        Some(json!({"name": "web"})),
        fixture("wasi_http_stream"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let client = host.client.clone();
    let url = host.url("/http/web/x");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let requests = tokio::spawn(async move {
        let (mut before, mut after) = (0, 0);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let response = client.get(&url).send().await.expect("answered");
            assert_eq!(response.status(), StatusCode::OK, "a request was dropped");
            let text = response.text().await.expect("a whole body");
            if text.starts_with("GET http://") {
                before += 1;
            } else {
                assert_eq!(text, r#"{"result":"ok","output":{"x":1}}"#);
                after += 1;
            }
        }
        (before, after)
    });
    let (status, body) = replace(&host, "web", fixture("wasi_http_hello_p3")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    loop {
        let (status, text) = get(&host, "/http/web/x").await;
        assert_eq!(status, StatusCode::OK);
        if text.contains(r#""result":"ok""#) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (before, after) = requests.await.expect("no request failed");
    assert!(before + after > 0);

    let events = crate::events::read_all(&host, OPERATOR, 2).await;
    let of_web: Vec<_> = events
        .iter()
        .filter(|e| e["plugin"] == "web")
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        of_web,
        ["plugin.installed", "plugin.replaced"],
        "{events:?}"
    );
}

/// `GET path` as `token`: the status and the body as text.
async fn get_as(host: &TestHost, path: &str, token: &str) -> (StatusCode, String) {
    let response = host
        .client
        .get(host.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered");
    (response.status(), response.text().await.expect("a body"))
}

/// Without `[plugins.reuse]` every request gets a fresh instance; with it,
/// one instance serves many requests of one tenant, several at once (a
/// `/release` reaches the instance a `/hold` is waiting in), another
/// tenant's requests get instances of their own, and an instance on which
/// a request ran past its deadline serves no more.
#[tokio::test]
async fn with_reuse_an_instance_serves_a_tenants_requests_several_at_once() {
    let fresh = host_with(|_| {}).await;
    for _ in 0..2 {
        assert_eq!(
            get(&fresh, "/http/stream/count").await,
            (StatusCode::OK, "1".to_owned())
        );
    }
    drop(fresh);

    let host = TestHost::with_config(|config| {
        two_tenants(config);
        let mut shared = stream("shared", None);
        shared.reuse = Some(Default::default());
        config.plugins.push(shared);
    })
    .await;
    for expected in ["1", "2", "3"] {
        assert_eq!(
            get_as(&host, "/http/shared/count", "acme").await,
            (StatusCode::OK, expected.to_owned())
        );
    }
    assert_eq!(
        get_as(&host, "/http/shared/count", "globex").await,
        (StatusCode::OK, "1".to_owned()),
        "another tenant's requests share no instance"
    );

    // The hold is in its instance once its first line is back; the
    // release, sent while it waits, goes to the same instance.
    let held = host
        .client
        .get(host.url("/http/shared/hold"))
        .bearer_auth("acme")
        .send()
        .await
        .expect("answered");
    let mut body = held.bytes_stream();
    use futures::StreamExt;
    let first = body.next().await.expect("a line").expect("bytes");
    assert_eq!(&first[..], b"holding\n");
    assert_eq!(
        get_as(&host, "/http/shared/release", "acme").await,
        (StatusCode::OK, "released".to_owned())
    );
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.expect("bytes"));
    }
    assert_eq!(String::from_utf8_lossy(&rest), "released");
    assert_eq!(
        get_as(&host, "/http/shared/count", "acme").await,
        (StatusCode::OK, "6".to_owned()),
        "the hold and the release were this instance's fourth and fifth"
    );

    // A request past its deadline ends its instance's service: the next
    // request gets a fresh one.
    let spin = host
        .client
        .get(host.url("/http/shared/spin"))
        .bearer_auth("acme")
        .header("opbox-deadline-ms", "300")
        .send()
        .await
        .expect("answered");
    assert_eq!(spin.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        get_as(&host, "/http/shared/count", "acme").await,
        (StatusCode::OK, "1".to_owned())
    );
    // The same for a request that waits past its deadline without
    // computing: its instance is retired, and ends.
    let held = host
        .client
        .get(host.url("/http/shared/hold"))
        .bearer_auth("acme")
        .header("opbox-deadline-ms", "300")
        .send()
        .await
        .expect("the head arrives");
    assert!(held.bytes().await.is_err(), "cut off at its deadline");
    assert_eq!(
        get_as(&host, "/http/shared/count", "acme").await,
        (StatusCode::OK, "1".to_owned())
    );
    // The retired instances are gone: acme's newest and globex's remain.
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
}

/// A shared instance that has taken `max_calls` requests takes no more,
/// and ends once they are answered: its store and instance place go.
#[tokio::test]
async fn a_shared_instance_ends_once_it_has_served_max_calls() {
    let host = TestHost::with_config(|config| {
        let mut shared = stream("shared", None);
        shared.reuse = Some(opbox::runtime::ReuseConfig {
            max_calls: 2,
            ..Default::default()
        });
        config.plugins.push(shared);
    })
    .await;
    for expected in ["1", "2", "1"] {
        assert_eq!(
            get(&host, "/http/shared/count").await,
            (StatusCode::OK, expected.to_owned())
        );
    }
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
}

/// A caller that goes away stops a WASIp3 guest at once, not at its
/// deadline.
#[tokio::test]
async fn a_caller_that_goes_away_stops_the_wasip3_component() {
    let host = host_with(|config| config.plugin_limits.cpu_ms = Some(60_000)).await;
    crate::wasi_http::leaving_stops_the_guest(&host, "/http/stream/spin").await;
}

/// A component built with the Spin Rust SDK 7, which exports WASIp3 only,
/// runs unmodified: it gets the path below its mount, as `spin up` would
/// give it the path below its route.
#[tokio::test]
async fn a_wasip3_component_built_with_the_spin_sdk_runs_unmodified() {
    let host = TestHost::with_config(|config| {
        let mut spin = stream("spin-p3", None);
        spin.path = PathBuf::from(env!("OPBOX_PLUGINS_DIR")).join("spin_hello_p3.wasm");
        config.plugins.push(spin);
    })
    .await;
    assert_eq!(
        get(&host, "/http/spin-p3/greet?who=opbox").await,
        (StatusCode::OK, "Hello from Spin 7: GET /greet\n".to_owned())
    );
}
