//! Test fixture: a version of `fixture-v2` that breaks its callers, which
//! the compatibility gate must refuse unless forced.
//!
//! - `which` is now a mutation (it was a query).
//! - `count` is gone.
//! - `added` now requires `{"who": string}` (it took any input) and answers
//!   a number (it answered a string: its output schema allowed anything, so
//!   that is no break).

use opbox_sdk::{Context, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

async fn which(_ctx: Context, _input: Value) -> Result<Value> {
    Ok(json!({ "version": 3 }))
}

#[derive(Deserialize, JsonSchema)]
struct Added {
    who: String,
}

async fn added(_ctx: Context, input: Added) -> Result<Value> {
    Ok(json!(input.who.len()))
}

fn plugin() -> Plugin {
    Plugin::new()
        .mutation("which", "Says which version this is.", which)
        .query("added", "Now needs to know who asks.", added)
}

opbox_sdk::export!(plugin);
