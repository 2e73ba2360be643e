//! `echo`: the smallest useful plugin.
//!
//! - `echo/echo` (query) returns its input unchanged.
//! - `echo/fail` (mutation) always fails with the domain error `DEMO_FAILURE`.

use opbox_sdk::{Context, Error, Plugin, Result};
use serde_json::Value;

async fn echo(_ctx: Context, input: Value) -> Result<Value> {
    Ok(input)
}

async fn fail(_ctx: Context, input: Value) -> Result<Value> {
    Err(
        Error::new("DEMO_FAILURE", "echo/fail always fails, as asked")
            .with_details(serde_json::json!({ "input": input })),
    )
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("echo", "Returns its input unchanged.", echo)
        .mutation(
            "fail",
            "Always fails with the domain error DEMO_FAILURE.",
            fail,
        )
}

opbox_sdk::export!(plugin);
