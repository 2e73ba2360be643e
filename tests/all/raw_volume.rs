//! A gibibyte through `gzip/compress` and on into `gzip/decompress`, both
//! calls open at once, against a real `opbox serve`, on each transport that
//! carries byte streams: what comes out is byte-exact what went in, and the
//! server's resident memory stays flat while the gibibyte passes.
//!
//! Nothing is held whole on either side: the source is made block by block
//! as the host takes it, compressed bytes go on into the second call as
//! they come, and what comes out is checked as it arrives.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use opbox::envelope::client::{Client, RawEvent, tls_config};
use serde_json::json;

use crate::raw::FRAMED;
use crate::util::Server;

/// The bytes streamed through each transport.
const TOTAL: usize = 1 << 30;

/// The source is made in blocks of this size.
const BLOCK: usize = 1 << 20;

/// How much the server's resident memory may grow past what it held once
/// the first [`WARM`] bytes had come back, while the rest streams. A call's
/// own buffers are a few chunks of 64 KiB each way; this leaves room for
/// the allocator, not for anything that grows with the bytes streamed.
const GROWTH_KIB: u64 = 16 << 10;

/// What has come back before the server's memory is taken as the baseline:
/// by then both instances, their coders and every buffer are in use.
const WARM: usize = 64 << 20;

/// A byte stream that compresses about 3:1 and is different in every
/// block, so bytes put in the wrong place are seen.
struct Source {
    words: Vec<u8>,
}

impl Source {
    fn new() -> Arc<Self> {
        const WORDS: [&str; 12] = [
            "carriage", "stream ", "opbox ", "stdin\n", "bytes ", "gzip ", "quic ", "tenant ",
            "plugin ", "frame\n", "credit ", "drained ",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut words = Vec::with_capacity(BLOCK + 16);
        while words.len() < BLOCK {
            // xorshift64: the same words on every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = WORDS[(state % WORDS.len() as u64) as usize];
            words.extend_from_slice(word.as_bytes());
        }
        words.truncate(BLOCK);
        Arc::new(Self { words })
    }

    /// Block `index`: the words, led by the block's number.
    fn block(&self, index: usize) -> Bytes {
        let mut block = self.words.clone();
        block[..8].copy_from_slice(&(index as u64).to_be_bytes());
        block.into()
    }

    /// Every block, in order, made as it is asked for.
    fn blocks(self: Arc<Self>) -> impl Stream<Item = Bytes> + Send + 'static {
        futures::stream::iter(0..TOTAL / BLOCK).map(move |index| self.block(index))
    }
}

/// Checks what comes back against the source as it arrives, and samples
/// the server's memory on the way.
struct Check<'a> {
    source: Arc<Source>,
    server: &'a Server,
    /// Bytes checked so far.
    at: usize,
    /// The block being checked against.
    block: (usize, Bytes),
    /// The server's resident memory once [`WARM`] bytes had come back.
    baseline_kib: Option<u64>,
    /// The most it held after that.
    peak_kib: u64,
}

impl<'a> Check<'a> {
    fn new(source: Arc<Source>, server: &'a Server) -> Self {
        let block = (0, source.block(0));
        Self {
            source,
            server,
            at: 0,
            block,
            baseline_kib: None,
            peak_kib: 0,
        }
    }

    fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (index, offset) = (self.at / BLOCK, self.at % BLOCK);
            assert!(index < TOTAL / BLOCK, "more bytes came back than went in");
            if self.block.0 != index {
                self.block = (index, self.source.block(index));
            }
            let n = bytes.len().min(BLOCK - offset);
            if bytes[..n] != self.block.1[offset..offset + n] {
                let first = (0..n)
                    .find(|&i| bytes[i] != self.block.1[offset + i])
                    .unwrap_or(0);
                panic!(
                    "the output differs from the input at byte {}",
                    self.at + first
                );
            }
            let before = self.at;
            self.at += n;
            bytes = &bytes[n..];
            // Every 16 MiB, the server's memory.
            if before / (16 << 20) != self.at / (16 << 20) {
                self.sample();
            }
        }
    }

    fn sample(&mut self) {
        let rss = self.server.rss_kib();
        match self.baseline_kib {
            None if self.at >= WARM => self.baseline_kib = Some(rss),
            None => {}
            Some(_) => self.peak_kib = self.peak_kib.max(rss),
        }
    }

    /// Asserts the whole source came back and the server stayed flat.
    fn finish(self, transport: &str) {
        assert_eq!(self.at, TOTAL, "{transport}: bytes came back short");
        let baseline = self.baseline_kib.expect("a baseline was taken");
        let growth = self.peak_kib.saturating_sub(baseline);
        eprintln!(
            "{transport}: 1 GiB round-tripped; server RSS {} MiB after {} MiB, at most {} MiB after (grew {} KiB)",
            baseline >> 10,
            WARM >> 20,
            self.peak_kib >> 10,
            growth
        );
        assert!(
            growth <= GROWTH_KIB,
            "{transport}: the server grew by {growth} KiB while the stream passed (from {baseline} KiB)"
        );
    }
}

/// `opbox serve`, open to anonymous callers, with the gzip example allowed a gigabyte and more of
/// output per call, its gateway, TCP (with TLS) and QUIC listeners, and a
/// fresh certificate for 127.0.0.1; the server and the certificate's file.
fn serve(dir: &std::path::Path) -> (Server, std::path::PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("written");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("written");
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\nquic_listen = \"127.0.0.1:0\"\n\
         examples = false\ncache_dir = {:?}\n\n[[tenants]]\nid = \"default\"\nanonymous = true\n\n[envelope.tls]\ncert = {cert:?}\nkey = {key:?}\n\n\
         [[plugins]]\npath = \"bundled:gzip\"\n\n[plugins.limits]\noutput_bytes = {}\n",
        crate::util::cache_dir(),
        2 * TOTAL,
    );
    (Server::start_in(dir, &config), cert)
}

/// The gibibyte through both calls over envelopes (`url`).
async fn over_envelopes(server: &Server, url: &str, cert: &std::path::Path, transport: &str) {
    let tls = tls_config(Some(cert)).expect("the certificate is read");
    let client = Client::connect_with(url, None, Some(tls))
        .await
        .expect("connected");
    let source = Source::new();
    let mut compress = client
        .run_raw("gzip/compress", json!({"level": 1}))
        .await
        .expect("compress starts");
    let mut decompress = client
        .run_raw("gzip/decompress", json!({}))
        .await
        .expect("decompress starts");
    let (into_compress, into_decompress) = (compress.input(), decompress.input());
    let blocks = source.clone().blocks();
    let feeding = tokio::spawn(async move {
        let mut blocks = std::pin::pin!(blocks);
        while let Some(block) = blocks.next().await {
            into_compress
                .write(&block)
                .await
                .expect("compress takes stdin");
        }
        into_compress.close().expect("compress's stdin closes");
    });
    let passing = tokio::spawn(async move {
        loop {
            match compress.next().await {
                Some(Ok(RawEvent::Stdout(bytes))) => into_decompress
                    .write(&bytes)
                    .await
                    .expect("decompress takes stdin"),
                Some(Ok(RawEvent::Exit(code))) => {
                    assert_eq!(code, 0, "compress failed");
                    into_decompress.close().expect("decompress's stdin closes");
                    return;
                }
                other => panic!("compress: {other:?}"),
            }
        }
    });
    let mut check = Check::new(source, server);
    loop {
        match decompress.next().await {
            Some(Ok(RawEvent::Stdout(bytes))) => check.take(&bytes),
            Some(Ok(RawEvent::Exit(code))) => {
                assert_eq!(code, 0, "decompress failed");
                break;
            }
            other => panic!("decompress: {other:?}"),
        }
    }
    feeding.await.expect("fed");
    passing.await.expect("passed on");
    check.finish(transport);
}

/// The framed form's frames (`docs/raw.md`), parsed as the body arrives.
#[derive(Default)]
struct Framed {
    pending: Vec<u8>,
}

/// One frame of the framed form.
enum Frame {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(u8),
    Error(String),
}

impl Framed {
    /// The whole frames `bytes` completes.
    fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while self.pending.len() >= at + 5 {
            let head = &self.pending[at..at + 5];
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if self.pending.len() < at + 5 + len {
                break;
            }
            let payload = Bytes::copy_from_slice(&self.pending[at + 5..at + 5 + len]);
            frames.push(match head[0] {
                1 => Frame::Stdout(payload),
                2 => Frame::Stderr(payload),
                3 => Frame::Exit(payload[0]),
                4 => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
                other => panic!("a frame of unknown type {other}"),
            });
            at += 5 + len;
        }
        self.pending.drain(..at);
        frames
    }
}

/// The gibibyte through both calls over HTTP/2, full duplex, each answer
/// in the framed form: compress's stdout goes on into decompress's request
/// body as it comes, and an error or a failing exit on either side says
/// why.
async fn over_http2(server: &Server) {
    // Two connections: on one, HTTP/2's connection-wide flow control ties
    // the two calls together. Compress's unread output would fill the
    // connection's window while its reader waits on decompress, whose
    // output then could not come back: neither moves (`docs/raw.md`).
    let h2 = || {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("a client")
    };
    let (client, other) = (h2(), h2());
    let source = Source::new();
    let stdin = source
        .clone()
        .blocks()
        .map(Ok::<_, std::convert::Infallible>);
    let compressed = client
        .post(format!("{}/raw/gzip/compress", server.url))
        .header("opbox-input", r#"{"level": 1}"#)
        .header("accept", FRAMED)
        .body(reqwest::Body::wrap_stream(stdin))
        .send()
        .await
        .expect("compress answers");
    assert_eq!(compressed.version(), reqwest::Version::HTTP_2);
    assert_eq!(compressed.status(), 200);
    let mut framed = Framed::default();
    let into_decompress = compressed.bytes_stream().flat_map(move |bytes| {
        let bytes = bytes.expect("compress's body streams");
        let stdout: Vec<Result<Bytes, std::convert::Infallible>> = framed
            .push(&bytes)
            .into_iter()
            .filter_map(|frame| match frame {
                Frame::Stdout(bytes) => Some(Ok(bytes)),
                Frame::Stderr(bytes) => panic!("compress: {}", String::from_utf8_lossy(&bytes)),
                Frame::Exit(code) => {
                    assert_eq!(code, 0, "compress failed");
                    None
                }
                Frame::Error(error) => panic!("compress ended with {error}"),
            })
            .collect();
        futures::stream::iter(stdout)
    });
    let decompressed = other
        .post(format!("{}/raw/gzip/decompress", server.url))
        .header("accept", FRAMED)
        .body(reqwest::Body::wrap_stream(into_decompress))
        .send()
        .await
        .expect("decompress answers");
    assert_eq!(decompressed.status(), 200);
    let mut check = Check::new(source, server);
    let (mut framed, mut stderr, mut exit) = (Framed::default(), Vec::new(), None);
    let mut body = decompressed.bytes_stream();
    while let Some(bytes) = body.next().await {
        for frame in framed.push(&bytes.expect("decompress's body streams")) {
            match frame {
                Frame::Stdout(bytes) => check.take(&bytes),
                Frame::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                Frame::Exit(code) => exit = Some(code),
                Frame::Error(error) => panic!("decompress ended with {error}"),
            }
        }
    }
    assert_eq!(
        exit,
        Some(0),
        "decompress: {}",
        String::from_utf8_lossy(&stderr)
    );
    check.finish("HTTP/2");
}

/// One server, the envelope transports one after another: a gibibyte each
/// way is enough work for the machine at a time.
#[tokio::test]
async fn a_gibibyte_round_trips_through_gzip_over_every_envelope_transport() {
    let dir = tempfile::tempdir().expect("a directory");
    let (server, cert) = serve(dir.path());
    let ws = format!("{}/call", server.url.replace("http://", "ws://"));
    over_envelopes(&server, &ws, &cert, "WebSocket").await;
    let tcp = format!("tls://{}", server.tcp.as_deref().expect("a TCP listener"));
    over_envelopes(&server, &tcp, &cert, "TCP+TLS").await;
    let quic = format!(
        "quic://{}",
        server.quic.as_deref().expect("a QUIC listener")
    );
    over_envelopes(&server, &quic, &cert, "QUIC").await;
}

/// Over HTTP/2, full duplex, on a server of its own: both guests are
/// CPU-bound and, on a machine of two cores, share one CPU lane
/// (`runtime::lanes`), each waiting on the other's bytes.
#[tokio::test]
async fn a_gibibyte_round_trips_through_gzip_over_http2() {
    let dir = tempfile::tempdir().expect("a directory");
    let (server, _cert) = serve(dir.path());
    over_http2(&server).await;
}
