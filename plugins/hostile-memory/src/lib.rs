//! Hostile plugin: memory and size.
//!
//! - `hostile-memory/bomb` allocates until something stops it.
//! - `hostile-memory/recurse` recurses without end.
//! - `hostile-memory/big-output` returns an output of `mib` MiB.

use opbox_sdk::{Context, Plugin, Result};
use serde_json::Value;

async fn bomb(_ctx: Context, _input: Value) -> Result<usize> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![7u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

#[allow(
    unconditional_recursion,
    reason = "recursing without end is this operation's point"
)]
fn deeper(pad: [u8; 256]) -> u64 {
    let pad = std::hint::black_box(pad);
    deeper(pad) + u64::from(pad[0])
}

async fn recurse(_ctx: Context, _input: Value) -> Result<u64> {
    Ok(deeper([1; 256]))
}

async fn big_output(_ctx: Context, mib: usize) -> Result<String> {
    Ok("x".repeat(mib << 20))
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("bomb", "Allocates until stopped.", bomb)
        .query("recurse", "Recurses without end.", recurse)
        .query("big-output", "Returns `mib` MiB of text.", big_output)
}

opbox_sdk::export!(plugin);
