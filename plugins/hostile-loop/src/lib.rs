//! Hostile plugin: code that never stops on its own.
//!
//! - `hostile-loop/spin` loops forever in guest code.
//! - `hostile-loop/spin-stream` yields one item, then loops forever.
//! - `hostile-loop/silent` is a subscription that never yields and never ends.
//! - `hostile-loop/stuck` waits forever inside a host call, ignoring its
//!   deadline.

use std::time::Duration;

use opbox_sdk::{Context, Plugin, Result};
use serde_json::Value;

fn forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

async fn spin(_ctx: Context, _input: Value) -> Result<u64> {
    forever()
}

fn spin_stream(_ctx: Context, _input: Value) -> Result<impl Iterator<Item = Result<u64>>> {
    Ok((0..).map(|n| if n == 0 { Ok(n) } else { forever() }))
}

fn silent(_ctx: Context, _input: Value) -> Result<impl Iterator<Item = Result<u64>>> {
    Ok(std::iter::from_fn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }))
}

async fn stuck(_ctx: Context, _input: Value) -> Result<u64> {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("spin", "Loops forever in guest code.", spin)
        .subscription_iter(
            "spin-stream",
            "Yields one item, then loops forever.",
            spin_stream,
        )
        .subscription_iter("silent", "Never yields, never ends.", silent)
        .query("stuck", "Waits forever in a host call.", stuck)
}

opbox_sdk::export!(plugin);
