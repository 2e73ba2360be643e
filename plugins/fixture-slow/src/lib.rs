//! Test fixture: operations that take their time.
//!
//! - `fixture-slow/sleep` sleeps `ms` milliseconds in a host call, then
//!   returns `ms`.
//! - `fixture-slow/spin` loops in guest code until the host interrupts it.
//! - `fixture-slow/fail-stream` yields `ok` items, then a domain error.

use std::time::Duration;

use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
struct Sleep {
    ms: u64,
}

async fn sleep(_ctx: Context, input: Sleep) -> Result<u64> {
    std::thread::sleep(Duration::from_millis(input.ms));
    Ok(input.ms)
}

async fn spin(_ctx: Context, _input: serde_json::Value) -> Result<u64> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
        if n == u64::MAX {
            return Ok(n);
        }
    }
}

#[derive(Deserialize, JsonSchema)]
struct FailStream {
    ok: u32,
}

fn fail_stream(_ctx: Context, input: FailStream) -> Result<impl Iterator<Item = Result<u32>>> {
    Ok((0..=input.ok).map(move |n| {
        if n == input.ok {
            Err(Error::new(
                "STREAM_BROKE",
                format!("failed after {n} items"),
            ))
        } else {
            Ok(n)
        }
    }))
}

fn plugin() -> Plugin {
    Plugin::new()
        .query(
            "sleep",
            "Sleeps `ms` milliseconds, then returns `ms`.",
            sleep,
        )
        .query("spin", "Loops until interrupted.", spin)
        .subscription_iter("fail-stream", "Yields `ok` items, then fails.", fail_stream)
}

opbox_sdk::export!(plugin);
