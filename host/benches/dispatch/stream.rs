//! `stream`: per-item time of a subscription streaming 100,000 items, written
//! as an async stream (`ticker/count`), as an iterator
//! (`fixture-hog/big-stream`, items of 8 bytes) and as the same iterator
//! marked `batched` (`fixture-hog/big-batches`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::{CallRequest, Dispatcher};
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
