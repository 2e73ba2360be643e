//! Test fixture: operations that trap.
//!
//! - `fixture-panic/boom` panics with the message given as input.
//! - `fixture-panic/stream` yields `after` items, then panics.
//! - `fixture-panic/calm` returns its input: the same plugin, working.

use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;

async fn boom(_ctx: Context, message: String) -> Result<()> {
    panic!("{message}");
}

#[derive(Deserialize, JsonSchema)]
struct Stream {
    after: u32,
}

fn stream(_ctx: Context, input: Stream) -> Result<impl Iterator<Item = Result<u32>>> {
    Ok((0..=input.after).map(move |n| {
        if n == input.after {
            panic!("gave up after {n} items");
        }
        Ok(n)
    }))
}

async fn calm(_ctx: Context, input: serde_json::Value) -> Result<serde_json::Value> {
    Ok(input)
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("calm", "Returns its input.", calm)
        .query("boom", "Panics with the given message.", boom)
        .subscription_iter("stream", "Yields `after` items, then panics.", stream)
}

opbox_sdk::export!(plugin);
