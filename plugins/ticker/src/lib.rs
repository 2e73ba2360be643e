//! `ticker`: a subscription.
//!
//! `ticker/count` with `{"to": n, "every_ms": m}` yields `{"n": 1}` …
//! `{"n": n}`, one every `m` milliseconds, then completes.

use std::time::Duration;

use opbox_sdk::futures::{Stream, StreamExt, stream};
use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The largest count a caller may ask for.
const MAX_TO: u64 = 1_000_000;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Count {
    /// How many ticks to yield, at most 1,000,000.
    #[schemars(range(max = 1_000_000))]
    to: u64,
    /// Milliseconds between ticks.
    #[serde(default)]
    every_ms: u32,
}

#[derive(Serialize, JsonSchema)]
struct Tick {
    n: u64,
}

async fn count(_ctx: Context, input: Count) -> Result<impl Stream<Item = Result<Tick>>> {
    if input.to > MAX_TO {
        return Err(opbox_sdk::Error::invalid_input(format!(
            "`to` is at most {MAX_TO}"
        )));
    }
    let every = Duration::from_millis(input.every_ms.into());
    Ok(stream::iter(1..=input.to).then(move |n| async move {
        if n > 1 && !every.is_zero() {
            // Hand the host the ticks made so far before blocking, so they
            // reach the caller now rather than with the next batch.
            opbox_sdk::yield_now().await;
            std::thread::sleep(every);
        }
        Ok(Tick { n })
    }))
}

fn plugin() -> Plugin {
    Plugin::new().subscription(
        "count",
        "Counts from 1 to `to`, one tick every `every_ms`.",
        count,
    )
}

opbox_sdk::export!(plugin);
