//! `echo`: the smallest useful plugin.
//!
//! - `echo/echo` (query) returns its input unchanged.
//! - `echo/fail` (mutation) always fails with the domain error `DEMO_FAILURE`.
//! - `echo/cat` (raw) copies its stdin to its stdout as it comes.

use opbox_sdk::raw::Pipes;
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

async fn cat(_ctx: Context, mut pipes: Pipes) -> Result<u8> {
    while let Some(chunk) = pipes.stdin.read().await {
        pipes.stdout.write(chunk).await?;
    }
    Ok(0)
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("echo", "Returns its input unchanged.", echo)
        .mutation(
            "fail",
            "Always fails with the domain error DEMO_FAILURE.",
            fail,
        )
        .raw("cat", "Copies its stdin to its stdout as it comes.", cat)
}

opbox_sdk::export!(plugin);
