//! Test fixture: memory.
//!
//! - `fixture-hog/hog` allocates and touches `mib` MiB, then returns how many
//!   bytes it holds.
//! - `fixture-hog/big-stream` yields `count` strings of `bytes` bytes each;
//!   `fixture-hog/big-batches` the same, written in batches
//!   ([`Operation::batched`]).

use opbox_sdk::{Context, Operation, Plugin, Result};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
struct Hog {
    mib: usize,
}

async fn hog(_ctx: Context, input: Hog) -> Result<usize> {
    let bytes = vec![1u8; input.mib << 20];
    Ok(std::hint::black_box(bytes)
        .iter()
        .map(|&b| usize::from(b))
        .sum())
}

#[derive(Deserialize, JsonSchema)]
struct BigStream {
    bytes: usize,
    count: usize,
}

fn big_stream(_ctx: Context, input: BigStream) -> Result<impl Iterator<Item = Result<String>>> {
    Ok((0..input.count).map(move |_| Ok("x".repeat(input.bytes))))
}

fn plugin() -> Plugin {
    Plugin::new()
        .query(
            "hog",
            "Allocates `mib` MiB and returns the byte count.",
            hog,
        )
        .subscription_iter(
            "big-stream",
            "Yields `count` strings of `bytes` bytes.",
            big_stream,
        )
        .op(Operation::subscription_iter(
            "big-batches",
            "Yields `count` strings of `bytes` bytes, in batches.",
            big_stream,
        )
        .batched())
}

opbox_sdk::export!(plugin);
