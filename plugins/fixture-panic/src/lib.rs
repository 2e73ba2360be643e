//! Test fixture: operations that trap.
//!
//! - `fixture-panic/boom` panics with the message given as input.
//! - `fixture-panic/stream` yields `after` items, then panics.
//! - `fixture-panic/calm` returns its input: the same plugin, working.
//! - `fixture-panic/raise` fails as a Python guest does: a traceback on
//!   stderr ending in the input, then a panic that says nothing of it.
//! - `fixture-panic/abort` writes the input to stderr and traps with no
//!   message at all.

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
        .subscription_iter("stream", "Yields `after` items, then panics.", stream)
}

opbox_sdk::export!(plugin);
