//! `stream`: per-item time of a subscription streaming 100,000 items, written
//! as an async stream (`ticker/count`), as an iterator
//! (`fixture-hog/big-stream`, items of 8 bytes) and as the same iterator
//! marked `batched` (`fixture-hog/big-batches`); and `sse`: the same
//! async stream as server-sent events over HTTP, beside a bare axum SSE
//! handler.

use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::{CallRequest, Dispatcher, Host};
use serde_json::{Value, json};

use super::common::*;

pub(crate) async fn bench_stream(dispatcher: &Dispatcher) {
    println!("## Subscriptions streaming {ITEMS} items, in process\n");
    println!(
        "| run | async stream, total | per item | iterator, total | per item | batched iterator, total | per item |\n|---|---|---|---|---|---|---|"
    );
    let iterator = json!({ "count": ITEMS, "bytes": 8 });
    let kinds = [
        ("ticker/count", json!({ "to": ITEMS })),
        ("fixture-hog/big-stream", iterator.clone()),
        ("fixture-hog/big-batches", iterator),
    ];
    let mut per_kind: [Vec<Duration>; 3] = Default::default();
    for run in 1..=5 {
        let mut row = format!("| {run} |");
        for (kind, per) in kinds.iter().zip(&mut per_kind) {
            let (total, item) = per_item(dispatcher, kind).await;
            per.push(item);
            row += &format!(" {:.1} ms | {} |", total.as_secs_f64() * 1e3, us(item));
        }
        println!("{row}");
    }
    let [stream, iter, batched] = per_kind.map(|mut per| {
        per.sort();
        per[per.len() / 2]
    });
    println!(
        "\nmedian per item: async stream {}, iterator {}, batched iterator {}\n",
        us(stream),
        us(iter),
        us(batched)
    );
}

/// Streams `ITEMS` items of `operation`; the total time and the time per item.
async fn per_item(
    dispatcher: &Dispatcher,
    (operation, input): &(&str, Value),
) -> (Duration, Duration) {
    let request = CallRequest::new(*operation, input.clone());
    let start = Instant::now();
    let mut stream = dispatcher
        .subscribe(request)
        .await
        .expect("the subscription starts");
    let mut count = 0u64;
    while let Some(item) = stream.next().await {
        item.expect("an item");
        count += 1;
    }
    let total = start.elapsed();
    assert_eq!(count, ITEMS);
    (total, total / u32::try_from(ITEMS).expect("fits"))
}

/// `sse`: `ITEMS` items over HTTP as server-sent events, from opbox's
/// `/subscribe` on `ticker/count` and from a bare axum handler sending the
/// same events: what opbox's SSE path adds over axum's own. One client
/// reads each stream to its end.
pub(crate) async fn bench_sse(host: &Host) {
    println!("## {ITEMS} items as server-sent events over HTTP\n");
    println!(
        "| run | bare axum SSE, items/s | opbox `/subscribe` `ticker/count`, items/s | bare ÷ opbox |\n|---|---|---|---|"
    );
    let bare = serve(bare_sse_router()).await;
    let opbox = serve_host(host).await;
    let client = reqwest::Client::new();
    let body = json!({ "operation": "ticker/count", "input": { "to": ITEMS } });
    let mut ratios = Vec::new();
    for run in 1..=5 {
        let [bare_rate, opbox_rate] =
            [bare, opbox].map(|addr| client.post(format!("http://{addr}/subscribe")).json(&body));
        let bare_rate = items_per_second(bare_rate).await;
        let opbox_rate = items_per_second(opbox_rate).await;
        ratios.push(bare_rate / opbox_rate);
        println!(
            "| {run} | {bare_rate:.0} | {opbox_rate:.0} | {:.2}× |",
            bare_rate / opbox_rate
        );
    }
    println!(
        "\nmedian: the bare handler sends {:.2}× the items a second opbox does\n",
        median(&mut ratios)
    );
}

/// `POST /subscribe`, answered by events `{"n": 1}` to `{"n": ITEMS}` as
/// `/subscribe` numbers them, with nothing around them.
fn bare_sse_router() -> axum::Router {
    use axum::response::sse::{Event, Sse};
    axum::Router::new().route(
        "/subscribe",
        axum::routing::post(|| async {
            Sse::new(futures::stream::iter(1..=ITEMS).map(|n| {
                let event = Event::default()
                    .id(n.to_string())
                    .data(json!({ "n": n }).to_string());
                Ok::<_, std::convert::Infallible>(event)
            }))
        }),
    )
}

/// Reads the whole event stream `request` answers; its items a second.
async fn items_per_second(request: reqwest::RequestBuilder) -> f64 {
    let start = Instant::now();
    let response = request.send().await.expect("the stream starts");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.bytes().await.expect("the whole stream");
    let took = start.elapsed();
    let item = br#"data: {"n":"#;
    let items = body.windows(item.len()).filter(|w| w == item).count();
    assert_eq!(items as u64, ITEMS, "every item arrived");
    items as f64 / took.as_secs_f64()
}
