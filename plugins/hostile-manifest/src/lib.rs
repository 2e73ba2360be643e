//! Hostile plugin: a manifest of 10,000 operations. The host must refuse it
//! at load.

use opbox_sdk::{Context, Plugin, Result};
use serde_json::Value;

async fn echo(_ctx: Context, input: Value) -> Result<Value> {
    Ok(input)
}

fn plugin() -> Plugin {
    (0..10_000).fold(Plugin::new(), |plugin, n| {
        plugin.query(&format!("op-{n}"), "One of very many.", echo)
    })
}

opbox_sdk::export!(plugin);
