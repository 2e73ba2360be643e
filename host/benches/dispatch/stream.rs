//! `stream`: per-item time of a subscription streaming 100,000 items, written
//! as an async stream (`ticker/count`) and as an iterator
//! (`fixture-hog/big-stream`, items of 8 bytes).

use std::time::Instant;

use futures::StreamExt;
use opbox::{CallRequest, Dispatcher};
use serde_json::{Value, json};

use super::common::*;

pub(crate) async fn bench_stream(dispatcher: &Dispatcher) {
    println!("## Subscriptions streaming {ITEMS} items, in process\n");
    println!(
        "| run | async stream, total | per item | iterator, total | per item |\n|---|---|---|---|---|"
    );
    let streamed = ("ticker/count", json!({ "to": ITEMS }));
    let iterated = (
        "fixture-hog/big-stream",
        json!({ "count": ITEMS, "bytes": 8 }),
    );
    let (mut per_stream, mut per_iter) = (Vec::new(), Vec::new());
    for run in 1..=5 {
        let (stream_total, stream_item) = per_item(dispatcher, &streamed).await;
        let (iter_total, iter_item) = per_item(dispatcher, &iterated).await;
        per_stream.push(stream_item);
        per_iter.push(iter_item);
        println!(
            "| {run} | {:.1} ms | {} | {:.1} ms | {} |",
            stream_total.as_secs_f64() * 1e3,
            us(stream_item),
            iter_total.as_secs_f64() * 1e3,
            us(iter_item)
        );
    }
    per_stream.sort();
    per_iter.sort();
    println!(
        "\nmedian per item: async stream {}, iterator {}\n",
        us(per_stream[per_stream.len() / 2]),
        us(per_iter[per_iter.len() / 2])
    );
}

/// Streams `ITEMS` items of `operation`; the total time and the time per item.
async fn per_item(
    dispatcher: &Dispatcher,
    (operation, input): &(&str, Value),
) -> (std::time::Duration, std::time::Duration) {
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
