//! Hostile plugin: what a plugin can make the host spend around its guest.
//!
//! - `hostile-edge/error` fails with any code, a message of `message_bytes`
//!   and details of `details_bytes`, optionally with a `retry_after_ms`.
//! - `hostile-edge/error-stream` yields `ok` items, then such an error.
//! - `hostile-edge/fatal-flood` reports `count` fatal messages, then returns.
//! - `hostile-edge/fan-out` makes `count` nested calls of one operation at
//!   once and reports how each ended.
//! - `hostile-edge/big-input` makes one nested call of `echo/echo` with an
//!   input of `bytes` bytes.
//! - `hostile-edge/bucket` opens a bucket named with `name_bytes` characters
//!   and sets `keys` empty keys in it (needs a keyvalue grant).

use opbox_sdk::futures::future::join_all;
use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize, JsonSchema)]
struct Failure {
    code: String,
    #[serde(default)]
    message_bytes: usize,
    #[serde(default)]
    details_bytes: usize,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl Failure {
    fn error(&self) -> Error {
        let mut details = json!({ "padding": "d".repeat(self.details_bytes) });
        if let Some(ms) = self.retry_after_ms {
            details["retry_after_ms"] = json!(ms);
        }
        Error::new(&self.code, "m".repeat(self.message_bytes.max(1))).with_details(details)
    }
}

async fn error(_ctx: Context, input: Failure) -> Result<()> {
    Err(input.error())
}

#[derive(Deserialize, JsonSchema)]
struct FailureStream {
    ok: u32,
    failure: Failure,
}

fn error_stream(_ctx: Context, input: FailureStream) -> Result<impl Iterator<Item = Result<u32>>> {
    let FailureStream { ok, failure } = input;
    Ok((0..ok).map(Ok).chain(std::iter::once(Err(failure.error()))))
}

async fn fatal_flood(_ctx: Context, count: u32) -> Result<u32> {
    for n in 0..count {
        opbox_sdk::__private::log::fatal(&format!("fatal line {n}"));
    }
    Ok(count)
}

#[derive(Deserialize, JsonSchema)]
struct FanOut {
    operation: String,
    #[serde(default)]
    input: Value,
    count: u32,
}

#[derive(Serialize, JsonSchema)]
struct FannedOut {
    ok: u32,
    /// The error codes of the calls that failed, in order.
    errors: Vec<String>,
    /// The `details.limit` of the first failure that names one.
    limit: Option<Value>,
}

async fn fan_out(ctx: Context, input: FanOut) -> Result<FannedOut> {
    let calls = (0..input.count).map(|_| ctx.call::<_, Value>(&input.operation, &input.input));
    let mut out = FannedOut {
        ok: 0,
        errors: Vec::new(),
        limit: None,
    };
    for result in join_all(calls).await {
        match result {
            Ok(_) => out.ok += 1,
            Err(e) => {
                if out.limit.is_none() {
                    out.limit = e.details().and_then(|d| d.get("limit")).cloned();
                }
                out.errors.push(e.code().to_owned());
            }
        }
    }
    Ok(out)
}

async fn big_input(ctx: Context, bytes: usize) -> Result<usize> {
    let echoed: String = ctx.call("echo/echo", &"x".repeat(bytes)).await?;
    Ok(echoed.len())
}

#[derive(Deserialize, JsonSchema)]
struct BucketFill {
    name_bytes: usize,
    keys: u32,
}

async fn bucket(_ctx: Context, input: BucketFill) -> Result<u32> {
    let bucket = opbox_sdk::keyvalue::open(&"b".repeat(input.name_bytes))?;
    for n in 0..input.keys {
        bucket.set(&n.to_string(), b"")?;
    }
    Ok(input.keys)
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("error", "Fails with any code and size.", error)
        .subscription_iter(
            "error-stream",
            "Yields `ok` items, then fails.",
            error_stream,
        )
        .query(
            "fatal-flood",
            "Reports `count` fatal messages.",
            fatal_flood,
        )
        .query("fan-out", "Makes `count` nested calls at once.", fan_out)
        .query(
            "big-input",
            "Makes one nested call with a large input.",
            big_input,
        )
        .mutation("bucket", "Fills a bucket with a long name.", bucket)
}

opbox_sdk::export!(plugin);
