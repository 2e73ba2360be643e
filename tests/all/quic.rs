//! Envelopes over QUIC: JSON calls and byte-stream calls on one connection,
//! with the certificate of `[envelope] tls`, through opbox's own client
//! (`quic://`).

use std::future::pending;
use std::time::Duration;

use opbox::envelope::client::{Client, RawEvent, tls_config};
use opbox::net::TlsConfig;
use serde_json::json;

use crate::raw::{opbox_call, stdin_chunk};
use crate::util::{Frames, TestHost};

/// A host with a fresh self-signed certificate for 127.0.0.1, serving
/// envelopes over QUIC; its QUIC address and the certificate's file.
async fn quic_host(dir: &std::path::Path) -> (TestHost, String, std::path::PathBuf) {
    quic_host_with(dir, |_| {}).await
}

/// [`quic_host`], with `configure` applied to the host's configuration.
async fn quic_host_with(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut opbox::HostConfig),
) -> (TestHost, String, std::path::PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("a certificate");
    let files = TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).expect("written");
    std::fs::write(&files.key, made.signing_key.serialize_pem()).expect("written");
    let host = TestHost::with_config(|config| {
        config.envelope.tls = Some(files.clone());
        configure(config);
    })
    .await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let addr = socket.local_addr().expect("its address");
    let serving = host.host.clone();
    tokio::spawn(async move { serving.serve_quic(socket, pending()).await });
    (host, format!("quic://{addr}"), files.cert)
}

/// Runs byte-stream `operation` with `stdin` over `client`; its stdout and
/// exit code.
async fn run(client: &Client, operation: &str, stdin: Vec<u8>) -> (Vec<u8>, u8) {
    let mut call = client
        .run_raw(operation, json!({}))
        .await
        .expect("the call starts");
    let input = call.input();
    let feeding = tokio::spawn(async move {
        input.write(&stdin).await.expect("stdin is taken");
        input.close().expect("stdin closes");
    });
    let mut stdout = Vec::new();
    let code = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), call.next())
            .await
            .expect("the call goes on")
            .expect("an event")
            .expect("no error");
        match event {
            RawEvent::Stdout(bytes) => stdout.extend_from_slice(&bytes),
            RawEvent::Stderr(_) => {}
            RawEvent::Exit(code) => break code,
        }
    };
    feeding.await.expect("fed");
    (stdout, code)
}

#[tokio::test]
async fn json_and_byte_stream_calls_share_one_quic_connection() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_host, url, cert) = quic_host(dir.path()).await;
    let tls = tls_config(Some(&cert)).expect("the certificate is read");
    let client = Client::connect_with(&url, None, Some(tls))
        .await
        .expect("connects over QUIC");

    let output = client
        .call("echo/echo", json!({"x": 1}))
        .await
        .expect("answered");
    assert_eq!(output, json!({"x": 1}));

    // A byte stream in each direction at once, with JSON calls beside it.
    let original: Vec<u8> = (0..4u32 << 20).map(|n| (n % 251) as u8).collect();
    let (compressed, echoed) = tokio::join!(
        run(&client, "gzip/compress", original.clone()),
        client.call("echo/echo", json!("beside")),
    );
    assert_eq!(echoed.expect("answered"), json!("beside"));
    let (compressed, code) = compressed;
    assert_eq!(code, 0);
    let (restored, code) = run(&client, "gzip/decompress", compressed).await;
    assert_eq!(code, 0);
    assert!(restored == original, "the round trip changed the bytes");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_not_served() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_host, url, _cert) = quic_host(dir.path()).await;
    // The web's roots only: the self-signed certificate is refused.
    let refused = Client::connect(&url, None).await;
    let error = refused.expect_err("an untrusted certificate").to_string();
    assert!(error.contains("QUIC"), "{error}");
}

/// A QUIC connection takes a place among the caps every listener shares:
/// past `max_connections_per_ip`, the next from the same address is
/// refused before its handshake, and a place freed is taken again.
#[tokio::test]
async fn quic_connections_are_held_to_the_per_address_cap() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_host, url, cert) = quic_host_with(dir.path(), |config| {
        config.connections.max_connections_per_ip = 1;
    })
    .await;
    let tls = tls_config(Some(&cert)).expect("the certificate is read");
    let first = Client::connect_with(&url, None, Some(tls.clone()))
        .await
        .expect("the first connection is taken");
    assert_eq!(
        first.call("echo/echo", json!(1)).await.expect("answered"),
        json!(1)
    );
    let second = Client::connect_with(&url, None, Some(tls.clone())).await;
    let error = second
        .expect_err("a second connection from the address")
        .to_string();
    assert!(error.contains("refused"), "{error}");
    drop(first);
    // The place comes back once the first connection is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_with(&url, None, Some(tls.clone())).await {
            Ok(client) => {
                assert_eq!(
                    client.call("echo/echo", json!(2)).await.expect("answered"),
                    json!(2)
                );
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the freed place was not taken again: {e}"),
        }
    }
}

/// A QUIC connection of quinn's own to the host at `url`, trusting `cert`:
/// streams opened and read (or not) by hand.
async fn quinn_to(url: &str, cert: &std::path::Path) -> quinn::Connection {
    let addr: std::net::SocketAddr = url
        .strip_prefix("quic://")
        .expect("a quic:// URL")
        .parse()
        .expect("an address");
    let mut tls = (*tls_config(Some(cert)).expect("the certificate is read")).clone();
    tls.alpn_protocols = vec![opbox::envelope::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))
        .expect("a QUIC TLS configuration");
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("a client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    endpoint
        .connect(addr, "127.0.0.1")
        .expect("connecting")
        .await
        .expect("connected")
}

/// A stream of its own on `connection`, for envelopes.
async fn stream_on(
    connection: &quinn::Connection,
) -> Frames<tokio::io::Join<quinn::RecvStream, quinn::SendStream>> {
    let (send, recv) = connection.open_bi().await.expect("a stream");
    Frames::new(tokio::io::join(recv, send))
}

/// A peer that stops reading one stream, while its connection stays alive,
/// loses that stream's session after `write_timeout`: the byte-stream call
/// on it stops (long before its `idle_ms`), and another stream of the same
/// connection is served.
#[tokio::test]
async fn a_stream_whose_peer_stops_reading_ends_after_write_timeout() {
    let dir = tempfile::tempdir().expect("a directory");
    let (host, url, cert) = quic_host_with(dir.path(), |config| {
        config.connections.write_timeout_ms = 500;
        config.plugin_limits.output_bytes = Some(64 << 20);
    })
    .await;
    // 16 MiB of zeros, gzipped by the host: a few KiB that decompress to
    // far more than QUIC lets a peer leave unread.
    let gzipped = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .body(vec![0u8; 16 << 20])
        .send()
        .await
        .expect("compressed")
        .bytes()
        .await
        .expect("the body arrives");
    assert!(gzipped.len() < 128 << 10, "{}", gzipped.len());
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);

    let connection = quinn_to(&url, &cert).await;
    let mut flood = stream_on(&connection).await;
    let call = json!({"operationId": "gzip/decompress", "input": {}, "carriage": "raw"});
    flood.send("call.requested", "flood", call).await;
    flood.send_raw(&stdin_chunk("flood", &gzipped)).await;
    flood.send_raw(&stdin_chunk("flood", &[])).await;
    // From here on, nothing of `flood` is read.
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "the call still runs on a stream nobody reads"
    );

    let mut other = stream_on(&connection).await;
    other.call("e", "echo/echo", json!("still here")).await;
    let answer = other.next().await.expect("an answer");
    assert_eq!(answer["type"], "call.responded", "{answer}");
    assert_eq!(answer["payload"]["output"], "still here");
}

/// Sends lines to `calc/repl` over `client` one at a time, each only once
/// the answer to the one before has arrived, on stdout or on stderr.
async fn answers_each_line(client: &Client) {
    let mut call = client
        .run_raw("calc/repl", json!({}))
        .await
        .expect("the call starts");
    let input = call.input();
    for (line, answer) in [
        ("1 + 2", RawEvent::Stdout("3\n".into())),
        (
            "2 *",
            RawEvent::Stderr("error: the line ends too soon: 2 *\n".into()),
        ),
        ("6 * 7", RawEvent::Stdout("42\n".into())),
    ] {
        input
            .write(format!("{line}\n").as_bytes())
            .await
            .expect("the line is sent");
        let event = tokio::time::timeout(Duration::from_secs(30), call.next())
            .await
            .unwrap_or_else(|_| panic!("no answer to `{line}` while the caller waits"))
            .expect("an event")
            .expect("no error");
        assert_eq!(event, answer, "the answer to `{line}`");
    }
    input.close().expect("stdin closes");
    let end = call.next().await.expect("an event").expect("no error");
    assert_eq!(end, RawEvent::Exit(1), "one line was not answered");
}

/// The interactive example answers each line before the next is sent over
/// QUIC and over TCP with TLS, each output on its own stream type.
#[tokio::test]
async fn an_interactive_operation_answers_each_line_over_quic_and_tcp() {
    let dir = tempfile::tempdir().expect("a directory");
    let (host, url, cert) = quic_host(dir.path()).await;
    let tls = tls_config(Some(&cert)).expect("the certificate is read");
    for url in [url, format!("tls://{}", host.tcp_addr)] {
        let client = Client::connect_with(&url, None, Some(tls.clone()))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        answers_each_line(&client).await;
    }
}

/// `opbox call --url quic://…` pipes its standard streams through a
/// byte-stream operation and ends with its exit code.
#[tokio::test]
async fn opbox_call_pipes_through_a_byte_stream_operation_over_quic() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_host, url, cert) = quic_host(dir.path()).await;
    let cert = cert.to_str().expect("a UTF-8 path");
    let (code, stdout, stderr) = opbox_call(
        &url,
        "echo/cat",
        &["--cacert", cert],
        b"hi over QUIC\n".to_vec(),
    )
    .await;
    assert_eq!(
        (code, stdout.as_slice()),
        (0, &b"hi over QUIC\n"[..]),
        "{stderr}"
    );
    let (code, stdout, stderr) = opbox_call(
        &url,
        "calc/repl",
        &["--cacert", cert],
        b"1 + 2\nsix\n".to_vec(),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&stdout), "3\n");
    assert!(stderr.ends_with(": six\n"), "{stderr}");
    assert_eq!(code, 1, "the operation's exit code");
}

/// A QUIC peer that goes away mid-call (its connection closed) stops the
/// byte-stream operation it was running, which would never end on its own.
#[tokio::test]
async fn a_quic_peer_that_goes_away_stops_its_byte_stream_operation() {
    let dir = tempfile::tempdir().expect("a directory");
    let (host, url, cert) = quic_host(dir.path()).await;
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    let connection = quinn_to(&url, &cert).await;
    let mut stream = stream_on(&connection).await;
    let call = json!({"operationId": "fixture-slow/deaf", "input": {}, "carriage": "raw"});
    stream.send("call.requested", "deaf", call).await;
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    connection.close(0u32.into(), b"gone");
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "the operation still runs after its peer left"
    );
}

/// Over QUIC each byte-stream call of opbox's client has a stream of its
/// own: one whose output the caller does not read holds its operation
/// back (the client takes a few frames, then QUIC's flow control stops the
/// host), while other calls on the connection are answered; read again,
/// every byte arrives.
#[tokio::test]
async fn over_quic_a_call_that_is_not_read_holds_back_only_its_operation() {
    let dir = tempfile::tempdir().expect("a directory");
    let (host, url, cert) = quic_host_with(dir.path(), |config| {
        config.plugin_limits.output_bytes = Some(128 << 20);
    })
    .await;
    // 64 MiB of zeros, gzipped by the host: a few KiB that fit in the
    // stdin credit, and decompress to far more than a client may buffer.
    let unpacked = 64 << 20;
    let gzipped = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .body(vec![0u8; unpacked])
        .send()
        .await
        .expect("compressed")
        .bytes()
        .await
        .expect("the body arrives");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);

    let tls = tls_config(Some(&cert)).expect("the certificate is read");
    let client = Client::connect_with(&url, None, Some(tls))
        .await
        .expect("connected");
    let mut call = client
        .run_raw("gzip/decompress", json!({}))
        .await
        .expect("the call starts");
    let input = call.input();
    input.write(&gzipped).await.expect("stdin is taken");
    input.close().expect("stdin closes");
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    // Not read: other calls on the connection are answered meanwhile, and
    // the operation is still there after them, far from done.
    for n in 0..20 {
        assert_eq!(
            client.call("echo/echo", json!(n)).await.expect("answered"),
            json!(n)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        host.host.runtime().live_instances(),
        1,
        "the operation ran to its end with nobody reading"
    );
    let mut read = 0;
    let code = loop {
        match call.next().await.expect("an event").expect("no error") {
            RawEvent::Stdout(bytes) => {
                assert!(bytes.iter().all(|&b| b == 0));
                read += bytes.len();
            }
            RawEvent::Stderr(bytes) => panic!("stderr: {bytes:?}"),
            RawEvent::Exit(code) => break code,
        }
    };
    assert_eq!((code, read), (0, unpacked));
}

/// A QUIC connection may have `max_open_calls` streams open at once: the
/// next waits for QUIC's stream credit, which comes back when one of them
/// ends.
#[tokio::test]
async fn a_quic_connection_opens_at_most_max_open_calls_streams_at_once() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_host, url, cert) = quic_host_with(dir.path(), |config| {
        config.envelope.max_open_calls = 2;
    })
    .await;
    let connection = quinn_to(&url, &cert).await;
    // A stream counts once the host has heard of it: each says something.
    let mut open = Vec::new();
    for n in 0..2 {
        let mut stream = stream_on(&connection).await;
        stream.call(&format!("e{n}"), "echo/echo", json!(n)).await;
        let answer = stream.next().await.expect("an answer");
        assert_eq!(answer["type"], "call.responded", "{answer}");
        open.push(stream);
    }
    let third = tokio::time::timeout(Duration::from_millis(500), connection.open_bi()).await;
    assert!(third.is_err(), "a third stream opened past the cap");
    // One ends (both sides finished): its credit comes back.
    let mut done = open.pop().expect("a stream");
    tokio::io::AsyncWriteExt::shutdown(done.stream())
        .await
        .expect("finished");
    assert!(done.next().await.is_none(), "the host finishes its side");
    let mut third = tokio::time::timeout(Duration::from_secs(10), stream_on(&connection))
        .await
        .expect("a freed stream is granted again");
    third.call("e3", "echo/echo", json!(3)).await;
    let answer = third.next().await.expect("an answer");
    assert_eq!(answer["payload"]["output"], 3, "{answer}");
}

/// A QUIC connection with nothing going on is closed after
/// `idle_timeout_ms`.
#[tokio::test]
async fn an_idle_quic_connection_is_closed_after_idle_timeout() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_host, url, cert) = quic_host_with(dir.path(), |config| {
        config.envelope.idle_timeout_ms = 300;
    })
    .await;
    let connection = quinn_to(&url, &cert).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .expect("the idle connection is closed");
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
}
