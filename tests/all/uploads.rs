//! Components brought to a running host: compiled within bounds that a
//! hostile one cannot break, refused without a trace, and held to the same
//! limits on every route that reaches `admin/install`.
//!
//! Each test runs the real `opbox serve`, so that its resident memory is
//! the host's own, read from `/proc`.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::admin::{OPERATOR, fixture};
use crate::util::Server;

#[path = "../../host/benches/support/bomb.rs"]
mod bomb;

use bomb::many_functions;

/// `wasm` grown to `bytes` with a custom section, which changes nothing
/// it does.
fn padded(mut wasm: Vec<u8>, bytes: usize) -> Vec<u8> {
    let name = b"padding";
    let body = bytes - wasm.len() - 1 - 5 - 1 - name.len();
    wasm.push(0);
    let size = u32::try_from(1 + name.len() + body).unwrap();
    // A five-byte LEB128, so the size is exact.
    for shift in [0, 7, 14, 21] {
        wasm.push(((size >> shift) & 0x7f) as u8 | 0x80);
    }
    wasm.push(((size >> 28) & 0x7f) as u8);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.resize(bytes, 0);
    wasm
}

/// `opbox serve` with the default tenant, anonymous, and the operator's
/// token, its cache in `dir`; `extra` added to the configuration.
fn server(dir: &std::path::Path, extra: &str) -> Server {
    let config = format!(
        "listen = \"127.0.0.1:0\"\nexamples = false\ncache_dir = \"cache\"\n{extra}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [[tenants.tokens]]\nid = \"operator\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
        opbox::tenants::hash_token_hex(OPERATOR)
    );
    // Two malloc arenas, so that the resident set measures the host's
    // work, not how many threads happened to allocate at once.
    Server::start_with(dir, &config, &[("MALLOC_ARENA_MAX", "2")])
}

/// The files of the compiled-plugin cache.
fn cached(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn install(client: &reqwest::Client, server: &Server, wasm: Vec<u8>) -> (u16, Value) {
    let response = client
        .post(format!("{}/admin/v1/plugins", server.url))
        .bearer_auth(OPERATOR)
        .body(wasm)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Uploads `wasm` to `opbox serve` configured with `extra`: it must be
/// refused at compiling with a message holding `says`, leave the host's
/// resident memory within 16 MiB of where it was and nothing in the
/// cache; and then the host installs `echo` as ever.
async fn refused_at_compiling(extra: &str, wasm: Vec<u8>, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), extra);
    let client = reqwest::Client::new();
    let before = server.rss_kib();
    let started = Instant::now();
    let (status, body) = install(&client, &server, wasm).await;
    let took = started.elapsed();
    let after = server.rss_kib();
    eprintln!("refused in {took:?}; resident {before} KiB before, {after} KiB after: {body}");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["cause"], "compile_limit", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{body}");
    assert!(after < before + 16 * 1024, "{before} KiB → {after} KiB");
    assert!(cached(dir.path()).is_empty(), "{:?}", cached(dir.path()));
    let (status, body) = install(&client, &server, fixture("echo")).await;
    assert_eq!(status, 201, "{body}");
}

/// `POST {path}` with `body` as the operator; the status and the answer.
async fn post(client: &reqwest::Client, server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(format!("{}{path}", server.url))
        .bearer_auth(OPERATOR)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `admin/install` of `wasm` as base64, through `/call`.
async fn install_by_call(client: &reqwest::Client, server: &Server, wasm: &[u8]) -> (u16, Value) {
    let text = base64::engine::general_purpose::STANDARD.encode(wasm);
    let call = json!({"operation": "admin/install", "input": {"wasm_base64": text}});
    post(client, server, "/call", call).await
}

#[tokio::test]
async fn a_compile_bomb_is_refused_before_compiling_and_costs_the_host_nothing() {
    let bomb = many_functions(240_000);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    // Reading the shape holds nothing but the upload itself.
    refused_at_compiling("", bomb, "more than 100000 functions").await;
}

#[tokio::test]
async fn a_component_that_needs_more_than_the_compiler_may_use_is_refused_and_its_memory_is_not_the_hosts()
 {
    // Within the shape's bounds, beyond the compiler's memory.
    refused_at_compiling(
        "[admin]\ncompile_memory_bytes = 67108864\n",
        many_functions(90_000),
        "67108864 bytes of memory",
    )
    .await;
}

#[tokio::test]
async fn a_refused_upload_leaves_nothing_in_the_cache_and_an_accepted_one_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "");
    let client = reqwest::Client::new();
    // Compiles, but is no plugin: it exports nothing.
    let (status, body) = install(&client, &server, many_functions(10)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["cause"], "link", "{body}");
    // Compiles and links, but its name is taken by the one installed next.
    let (status, body) = install(&client, &server, fixture("echo")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(cached(dir.path()).len(), 1, "{:?}", cached(dir.path()));
    let renamed = padded(fixture("echo"), fixture("echo").len() + 64);
    let (status, body) = install(&client, &server, renamed).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(cached(dir.path()).len(), 1, "{:?}", cached(dir.path()));
    // What a removed plugin took in the cache goes with it.
    let removed = client
        .delete(format!("{}/admin/v1/plugins/echo", server.url))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    assert!(cached(dir.path()).is_empty(), "{:?}", cached(dir.path()));
}

#[tokio::test]
async fn the_size_limit_holds_on_every_route_that_installs() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(
        dir.path(),
        "[gateway]\nmax_body_bytes = 2097152\n[admin]\nmax_plugin_bytes = 655360\n",
    );
    let client = reqwest::Client::new();
    let big = padded(fixture("echo"), 720_904);
    let text = base64::engine::general_purpose::STANDARD.encode(&big);
    let via_call = install_by_call(&client, &server, &big).await;
    let via_op = post(
        &client,
        &server,
        "/ops/admin/install",
        json!({"wasm_base64": text}),
    )
    .await;
    for (status, body) in [via_call, via_op] {
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED", "{body}");
        assert_eq!(
            body["error"]["details"]["limit"], "max_plugin_bytes",
            "{body}"
        );
    }
    let (status, body) = install(&client, &server, big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body["error"]["details"]["limit"], "max_plugin_bytes",
        "{body}"
    );
    // Under the limit, by every route.
    let (status, body) = install_by_call(&client, &server, &fixture("echo")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["name"], "echo", "{body}");
}

/// An upload that sends a few bytes, then one more every 200 ms, for as
/// long as the host lets it; its answer.
async fn trickle(url: String) -> (u16, Value) {
    let chunks = futures::stream::unfold(0u32, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let chunk = if n == 0 { b"\0asm".to_vec() } else { vec![0] };
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(OPERATOR)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn slow_uploads_end_at_the_body_timeout_and_hold_no_place_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(
        dir.path(),
        "[connections]\nbody_timeout_ms = 2000\n[admin]\nmax_uploads = 2\n",
    );
    let client = reqwest::Client::new();
    let url = format!("{}/admin/v1/plugins", server.url);
    // Three trickling uploads for two places: one is refused at once …
    let slow = (0..3).map(|_| tokio::spawn(trickle(url.clone())));
    let (first, _, holding) = futures::future::select_all(slow).await;
    let (status, body) = first.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["details"]["limit"], "max_uploads", "{body}");
    // … and while the other two trickle, an install by any route waits its
    // turn.
    let (status, body) = install_by_call(&client, &server, &fixture("echo")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["details"]["limit"], "max_uploads", "{body}");
    // The two end at the body timeout.
    for slow in holding {
        let (status, body) = slow.await.unwrap();
        assert_eq!(status, 408, "{body}");
        assert_eq!(
            body["error"]["details"]["limit"], "body_timeout_ms",
            "{body}"
        );
    }
    // Their places are free again.
    let (status, body) = install(&client, &server, fixture("echo")).await;
    assert_eq!(status, 201, "{body}");
}
