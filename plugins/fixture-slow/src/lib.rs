//! Test fixture: operations that take their time.
//!
//! - `fixture-slow/sleep` sleeps `ms` milliseconds in a host call, then
//!   returns `ms`.
//! - `fixture-slow/fail-stream` yields `ok` items, then a domain error.
//! - `fixture-slow/burst` (an async stream) yields `burst` items at once, then
//!   `then` more, one every `every_ms`.
//! - `fixture-slow/nest` calls another operation; `nest-stream` subscribes
//!   to one and passes its outputs on; `tally` subscribes to one and counts
//!   its outputs; `recurse` calls itself; `secret` is internal.
//! - `fixture-slow/deaf` is a byte-stream operation that never reads its
//!   stdin and never ends on its own.
//! - `fixture-slow/nest-raw` runs another byte-stream operation, passing
//!   its stdin on and that operation's stdout and stderr back; `run` runs
//!   one with a string as stdin and returns what it wrote.

use std::time::Duration;

use opbox_sdk::futures::{Stream, StreamExt, join, stream};
use opbox_sdk::raw::{Child, Pipes, Reader, Writer};
use opbox_sdk::{Context, Error, Operation, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct Sleep {
    ms: u64,
}

async fn sleep(_ctx: Context, input: Sleep) -> Result<u64> {
    std::thread::sleep(Duration::from_millis(input.ms));
    Ok(input.ms)
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

#[derive(Deserialize, JsonSchema)]
struct Burst {
    burst: u64,
    then: u64,
    every_ms: u64,
}

async fn burst(_ctx: Context, input: Burst) -> Result<impl Stream<Item = Result<u64>>> {
    let every = Duration::from_millis(input.every_ms);
    let paced = stream::iter(input.burst..input.burst + input.then).then(move |n| async move {
        opbox_sdk::yield_now().await;
        std::thread::sleep(every);
        Ok(n)
    });
    Ok(stream::iter((0..input.burst).map(Ok)).chain(paced))
}

#[derive(Deserialize, JsonSchema)]
struct Nest {
    /// The operation to call, `namespace/op`.
    operation: String,
    /// Its input.
    #[serde(default)]
    input: serde_json::Value,
}

async fn nest(ctx: Context, input: Nest) -> Result<serde_json::Value> {
    ctx.call(&input.operation, &input.input).await
}

async fn nest_stream(
    ctx: Context,
    input: Nest,
) -> Result<impl Stream<Item = Result<serde_json::Value>>> {
    let outputs = ctx
        .subscribe::<_, serde_json::Value>(&input.operation, &input.input)
        .await?;
    Ok(outputs.into_stream())
}

#[derive(Serialize, JsonSchema)]
struct Tally {
    count: u32,
    last: serde_json::Value,
}

async fn tally(ctx: Context, input: Nest) -> Result<Tally> {
    let mut outputs = ctx.subscribe(&input.operation, &input.input).await?;
    let mut tally = Tally {
        count: 0,
        last: serde_json::Value::Null,
    };
    while let Some(output) = outputs.next().await {
        tally.last = output?;
        tally.count += 1;
    }
    Ok(tally)
}

/// Copies `from` into `to` until `from` ends or nobody reads `to`.
async fn copy(mut from: Reader, mut to: Writer) {
    while let Some(bytes) = from.read().await {
        if to.write(bytes).await.is_err() {
            return;
        }
    }
}

async fn nest_raw(ctx: Context, input: Nest, pipes: Pipes) -> Result<u8> {
    let child = ctx.run(&input.operation, &input.input).await?;
    let Child {
        stdin,
        stdout,
        stderr,
        status,
        ..
    } = child;
    join!(
        copy(pipes.stdin, stdin),
        copy(stdout, pipes.stdout),
        copy(stderr, pipes.stderr),
    );
    status.wait().await
}

#[derive(Deserialize, JsonSchema)]
struct Run {
    /// The byte-stream operation to run, `namespace/op`.
    operation: String,
    /// Its arguments.
    #[serde(default)]
    input: serde_json::Value,
    /// Its stdin.
    stdin: String,
}

#[derive(Serialize, JsonSchema)]
struct Ran {
    code: u8,
    stdout: String,
    stderr: String,
}

async fn run(ctx: Context, input: Run) -> Result<Ran> {
    let Child {
        mut stdin,
        mut stdout,
        mut stderr,
        status,
        ..
    } = ctx.run(&input.operation, &input.input).await?;
    let feed = async move {
        let _ = stdin.write(input.stdin).await;
        // `stdin` is dropped here: the operation's input ends.
    };
    let ((), out, err) = join!(feed, stdout.read_to_end(), stderr.read_to_end());
    Ok(Ran {
        code: status.wait().await?,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

async fn recurse(ctx: Context, depth: u32) -> Result<u32> {
    ctx.call("fixture-slow/recurse", &(depth + 1)).await
}

async fn secret(_ctx: Context, _input: serde_json::Value) -> Result<&'static str> {
    Ok("only for operations")
}

/// Reads nothing, writes nothing, waits forever (until the host ends it),
/// in host sleeps of 50 ms.
async fn deaf(_ctx: Context, _pipes: opbox_sdk::raw::Pipes) -> Result<u8> {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        opbox_sdk::yield_now().await;
    }
}

fn plugin() -> Plugin {
    Plugin::new()
        .raw("deaf", "Never reads its stdin; never ends.", deaf)
        .raw(
            "nest-raw",
            "Runs byte-stream `operation` with `input`, passing stdin on and its outputs back.",
            nest_raw,
        )
        .query(
            "run",
            "Runs byte-stream `operation` with `input` and `stdin`; returns its outputs and exit code.",
            run,
        )
        .query(
            "nest",
            "Calls `operation` with `input` and returns its output.",
            nest,
        )
        .subscription(
            "nest-stream",
            "Subscribes to `operation` with `input` and passes its outputs on.",
            nest_stream,
        )
        .query(
            "tally",
            "Subscribes to `operation` with `input` and counts its outputs.",
            tally,
        )
        .query("recurse", "Calls itself, forever.", recurse)
        .op(Operation::query("secret", "An internal operation.", secret).internal())
        .query(
            "sleep",
            "Sleeps `ms` milliseconds, then returns `ms`.",
            sleep,
        )
        .subscription_iter("fail-stream", "Yields `ok` items, then fails.", fail_stream)
        .subscription("burst", "Yields a burst of items, then paced ones.", burst)
}

opbox_sdk::export!(plugin);
