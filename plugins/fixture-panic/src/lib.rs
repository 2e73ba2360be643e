//! Test fixture: operations that trap.
//!
//! - `fixture-panic/boom` panics with the message given as input.
//! - `fixture-panic/stream` yields `after` items, then panics.
//! - `fixture-panic/calm` returns its input: the same plugin, working.
//! - `fixture-panic/raise` fails as a Python guest does: a traceback on
//!   stderr ending in the input, then a panic that says nothing of it.
//! - `fixture-panic/abort` writes the input to stderr and traps with no
//!   message at all.
//! - `fixture-panic/tally` counts the calls its instance has served, this one
//!   included: 1 every time, unless the operator lets instances be reused.
//! - `fixture-panic/hold` keeps `mib` MiB for the rest of its instance's life,
//!   and tallies like `tally`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

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

async fn raise(_ctx: Context, message: String) -> Result<()> {
    eprintln!("Traceback (most recent call last):");
    eprintln!("  File \"app.py\", line 12, in call");
    eprintln!("    raise ValueError(message)");
    eprintln!("ValueError: {message}");
    panic!("Python function threw an unexpected exception");
}

async fn abort(_ctx: Context, message: String) -> Result<()> {
    eprintln!("{message}");
    std::process::abort();
}

/// Calls this instance has served.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// What `hold` keeps.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

async fn tally(_ctx: Context) -> Result<u32> {
    Ok(CALLS.fetch_add(1, Ordering::Relaxed) + 1)
}

#[derive(Deserialize, JsonSchema)]
struct Hold {
    mib: usize,
}

async fn hold(_ctx: Context, input: Hold) -> Result<u32> {
    let kept = vec![1u8; input.mib << 20];
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(std::hint::black_box(kept));
    Ok(CALLS.fetch_add(1, Ordering::Relaxed) + 1)
}

async fn calm(_ctx: Context, input: serde_json::Value) -> Result<serde_json::Value> {
    Ok(input)
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("calm", "Returns its input.", calm)
        .query("boom", "Panics with the given message.", boom)
        .query(
            "raise",
            "Prints a traceback ending in the message, then panics.",
            raise,
        )
        .query(
            "abort",
            "Prints the message to stderr, then traps without a word.",
            abort,
        )
        .query(
            "tally",
            "Counts the calls its instance has served, this one included.",
            tally,
        )
        .query(
            "hold",
            "Keeps `mib` MiB for the rest of its instance's life; tallies.",
            hold,
        )
        .subscription_iter("stream", "Yields `after` items, then panics.", stream)
}

opbox_sdk::export!(plugin);
