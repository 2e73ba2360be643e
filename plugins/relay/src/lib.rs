//! Example plugin: follows an upstream HTTP endpoint and passes it on.
//!
//! Needs `allowed_outbound_hosts` to reach anything.
//!
//! - `relay/fetch` (query): `{url}` → `{status, content_type, body}`, the
//!   body as text (at most 1 MiB), following up to 5 redirects to absolute
//!   URLs.
//! - `relay/fetch-all` (query): `{urls}` fetches them all at once, as
//!   `relay/fetch` does each, and returns their answers in order.
//! - `relay/post` (mutation): `{url, body, chunk}` POSTs `body` in chunks
//!   of `chunk` bytes, each made as the one before is sent, and returns
//!   what `relay/fetch` does.
//! - `relay/sse` (subscription): `{url}` follows a Server-Sent Events or
//!   chunked HTTP endpoint and re-emits, as each arrives, every event
//!   (`{event, data, id}`) or, for any other content, every chunk
//!   (`{delta}`). Nothing is buffered beyond the event being read.
//! - `relay/pipe` (raw): `{url}` passes the upstream body through as bytes,
//!   each chunk as it arrives, to stdout; a status that is not 2xx is told
//!   on stderr and ends with exit code 1.

use std::collections::VecDeque;

use opbox_sdk::futures::{Stream, stream};
use opbox_sdk::http::{self, Body, Request, RequestBody, Response};
use opbox_sdk::raw::Pipes;
use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct Target {
    /// An absolute `http` or `https` URL.
    url: String,
}

#[derive(Serialize, JsonSchema)]
struct Fetched {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// Redirects `relay/fetch` follows; each is a new request, which the host
/// checks against the grant like the first.
const MAX_REDIRECTS: usize = 5;

/// The first value of header `name`, as text.
fn header(response: &Response<Body>, name: &str) -> Option<String> {
    let value = response.headers().get(name)?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

async fn fetch(_ctx: Context, target: Target) -> Result<Fetched> {
    let mut response = http::get(&target.url).await?;
    for _ in 0..MAX_REDIRECTS {
        let location = header(&response, "location");
        match (response.status().as_u16(), location) {
            (301 | 302 | 303 | 307 | 308, Some(location)) => {
                response = http::get(&location).await?
            }
            _ => break,
        }
    }
    fetched(response).await
}

/// At most 1 MiB of `response`, as text.
async fn fetched(mut response: Response<Body>) -> Result<Fetched> {
    let body = response.body_mut().read_all(1 << 20).await?;
    Ok(Fetched {
        status: response.status().as_u16(),
        content_type: header(&response, "content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[derive(Deserialize, JsonSchema)]
struct Targets {
    /// Absolute `http` or `https` URLs, fetched at once.
    #[schemars(length(max = 8))]
    urls: Vec<String>,
}

async fn fetch_all(_ctx: Context, targets: Targets) -> Result<Vec<Fetched>> {
    let fetches = targets.urls.into_iter().map(|url| async move {
        let response = http::get(&url).await?;
        fetched(response).await
    });
    opbox_sdk::futures::future::try_join_all(fetches).await
}

#[derive(Deserialize, JsonSchema)]
struct Post {
    /// An absolute `http` or `https` URL.
    url: String,
    /// What to send.
    body: String,
    /// Bytes per chunk sent.
    #[schemars(range(min = 1))]
    chunk: usize,
}

async fn post(_ctx: Context, post: Post) -> Result<Fetched> {
    let bytes = post.body.into_bytes();
    let chunks: Vec<Vec<u8>> = bytes.chunks(post.chunk).map(<[u8]>::to_vec).collect();
    let request = Request::post(&post.url)
        .header("content-type", "text/plain")
        .body(RequestBody::chunks(chunks))
        .map_err(|e| Error::new("INVALID_URL", e.to_string()))?;
    fetched(http::send(request).await?).await
}

/// One output of `relay/sse`.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
enum Delta {
    /// A Server-Sent Event.
    Event {
        event: String,
        data: String,
        id: Option<String>,
    },
    /// A chunk of any other body, as text.
    Chunk { delta: String },
}

struct Relay {
    body: Body,
    sse: bool,
    /// Bytes of an event not complete yet.
    partial: Vec<u8>,
    ready: VecDeque<Delta>,
    done: bool,
}

impl Relay {
    /// The next output: from what was read already, else after reading
    /// more. `None` once the upstream body ended.
    async fn next(&mut self) -> Option<Result<Delta>> {
        loop {
            if let Some(delta) = self.ready.pop_front() {
                return Some(Ok(delta));
            }
            if self.done {
                return None;
            }
            match self.body.chunk().await {
                Ok(Some(bytes)) if self.sse => self.parse(&bytes),
                Ok(Some(bytes)) => self.ready.push_back(Delta::Chunk {
                    delta: String::from_utf8_lossy(&bytes).into_owned(),
                }),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Splits complete events (blank-line terminated) off what arrived.
    fn parse(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = find_event_end(&self.partial) {
            let block: Vec<u8> = self.partial.drain(..end).collect();
            if let Some(event) = parse_event(&String::from_utf8_lossy(&block)) {
                self.ready.push_back(event);
            }
        }
    }
}

/// Where the first complete event ends (after its blank line), if any.
fn find_event_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_event(block: &str) -> Option<Delta> {
    let (mut event, mut data, mut id, mut any) = ("message".to_owned(), Vec::new(), None, false);
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => data.push(value),
            "id" => id = Some(value.to_owned()),
            _ => continue,
        }
        any = true;
    }
    any.then(|| Delta::Event {
        event,
        data: data.join("\n"),
        id,
    })
}

async fn sse(_ctx: Context, target: Target) -> Result<impl Stream<Item = Result<Delta>>> {
    let response = http::get(&target.url).await?;
    if !response.status().is_success() {
        return Err(Error::new(
            "UPSTREAM_STATUS",
            format!("the upstream answered {}", response.status()),
        ));
    }
    let sse = header(&response, "content-type").is_some_and(|t| t.starts_with("text/event-stream"));
    let relay = Relay {
        body: response.into_body(),
        sse,
        partial: Vec::new(),
        ready: VecDeque::new(),
        done: false,
    };
    Ok(stream::unfold(relay, |mut relay| async move {
        let item = relay.next().await?;
        Some((item, relay))
    }))
}

/// The upstream body, as it arrives, to stdout: no JSON on either side.
async fn pipe(_ctx: Context, target: Target, mut pipes: Pipes) -> Result<u8> {
    let mut response = http::get(&target.url).await?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        pipes
            .stderr
            .write(format!("relay: the upstream answered {status}\n"))
            .await?;
        return Ok(1);
    }
    while let Some(chunk) = response.body_mut().chunk().await? {
        pipes.stdout.write(chunk).await?;
    }
    Ok(0)
}

fn plugin() -> Plugin {
    Plugin::new()
        .raw(
            "pipe",
            "Passes an upstream body through as bytes, as it arrives.",
            pipe,
        )
        .query(
            "fetch",
            "Fetches a URL and returns its status and body.",
            fetch,
        )
        .query(
            "fetch-all",
            "Fetches several URLs at once and returns their statuses and bodies.",
            fetch_all,
        )
        .mutation(
            "post",
            "POSTs a text body in chunks and returns the answer's status and body.",
            post,
        )
        .subscription(
            "sse",
            "Follows an SSE or chunked HTTP endpoint and re-emits each event or chunk.",
            sse,
        )
}

opbox_sdk::export!(plugin);
