//! `stream`: per-item time of `ticker/count` streaming 100,000 items.

use std::time::Instant;

use futures::StreamExt;
use opbox::{CallRequest, Dispatcher};
use serde_json::json;

use super::common::*;

pub(crate) async fn bench_stream(dispatcher: &Dispatcher) {
    println!("## `ticker/count` streaming {ITEMS} items, in process\n");
    println!("| run | total | per item |\n|---|---|---|");
    let mut per_item = Vec::new();
    for run in 1..=5 {
        let request = CallRequest::new("ticker/count", json!({ "to": ITEMS }));
        let start = Instant::now();
        let mut stream = dispatcher.subscribe(request).await.expect("ticker starts");
        let mut count = 0u64;
        while let Some(item) = stream.next().await {
            item.expect("a tick");
            count += 1;
        }
        let total = start.elapsed();
        assert_eq!(count, ITEMS);
        let item = total / u32::try_from(ITEMS).expect("fits");
        per_item.push(item);
        println!(
            "| {run} | {:.1} ms | {} |",
            total.as_secs_f64() * 1e3,
            us(item)
        );
    }
    per_item.sort();
    println!("\nmedian per item: {}\n", us(per_item[per_item.len() / 2]));
}
