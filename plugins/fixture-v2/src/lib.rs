//! Test fixture: version 2 of a plugin the tests install, replace and
//! remove while it serves (`fixture-v1` is version 1); it adds an operation.
//!
//! - `which` (query) answers `{"version": 2}`, so a caller can tell which
//!   version served it.
//! - `count` (subscription) yields `{"version": 2, "n": n}` every
//!   `every_ms`, forever, from `n = from` (new in this version, optional:
//!   a compatible change).
//! - `added` (query), new in this version, answers `"added"`.

use std::time::Duration;

use opbox_sdk::futures::{Stream, StreamExt, stream};
use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

const VERSION: u64 = 2;

async fn which(_ctx: Context, _input: Value) -> Result<Value> {
    Ok(json!({ "version": VERSION }))
}

#[derive(Deserialize, JsonSchema)]
struct Count {
    every_ms: u64,
    #[serde(default)]
    from: Option<u64>,
}

async fn count(_ctx: Context, input: Count) -> Result<impl Stream<Item = Result<Value>>> {
    let every = Duration::from_millis(input.every_ms);
    Ok(
        stream::iter(input.from.unwrap_or(0)..).then(move |n| async move {
            opbox_sdk::yield_now().await;
            std::thread::sleep(every);
            Ok(json!({ "version": VERSION, "n": n }))
        }),
    )
}

async fn added(_ctx: Context, _input: Value) -> Result<Value> {
    Ok(json!("added"))
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("which", "Says which version this is.", which)
        .subscription("count", "Counts forever, saying its version.", count)
        .query("added", "New in version 2.", added)
}

opbox_sdk::export!(plugin);
