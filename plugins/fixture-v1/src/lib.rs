//! Test fixture: version 1 of a plugin the tests install, replace and
//! remove while it serves (`fixture-v2` is version 2).
//!
//! - `which` (query) answers `{"version": 1}`, so a caller can tell which
//!   version served it.
//! - `count` (subscription) yields `{"version": 1, "n": n}` every
//!   `every_ms`, forever.

use std::time::Duration;

use opbox_sdk::futures::{Stream, StreamExt, stream};
use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

const VERSION: u64 = 1;

async fn which(_ctx: Context, _input: Value) -> Result<Value> {
    Ok(json!({ "version": VERSION }))
}

#[derive(Deserialize, JsonSchema)]
struct Count {
    every_ms: u64,
}

async fn count(_ctx: Context, input: Count) -> Result<impl Stream<Item = Result<Value>>> {
    let every = Duration::from_millis(input.every_ms);
    Ok(stream::iter(0u64..).then(move |n| async move {
        opbox_sdk::yield_now().await;
        std::thread::sleep(every);
        Ok(json!({ "version": VERSION, "n": n }))
    }))
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("which", "Says which version this is.", which)
        .subscription("count", "Counts forever, saying its version.", count)
}

opbox_sdk::export!(plugin);
