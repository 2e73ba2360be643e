//! Test fixture: memory.
//!
//! - `fixture-hog/hog` allocates and touches `mib` MiB, then returns how many
//!   bytes it holds.

use opbox_sdk::{Context, Plugin, Result};
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

fn plugin() -> Plugin {
    Plugin::new().query(
        "hog",
        "Allocates `mib` MiB and returns the byte count.",
        hog,
    )
}

opbox_sdk::export!(plugin);
