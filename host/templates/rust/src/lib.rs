//! `{{name}}`: an opbox plugin.
//!
//! Build it with `cargo build --release --target wasm32-wasip2`, or run
//! `opbox dev` here to build, serve and rebuild it on every save.

use opbox_sdk::futures::{Stream, stream};
use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct Greet {
    /// Who to greet.
    name: String,
}

#[derive(Serialize, JsonSchema)]
struct Greeting {
    message: String,
}

async fn hello(_ctx: Context, input: Greet) -> Result<Greeting> {
    if input.name.is_empty() {
        return Err(Error::new("EMPTY_NAME", "say who to greet"));
    }
    opbox_sdk::info!("greeting {}", input.name);
    Ok(Greeting {
        message: format!("Hello, {}!", input.name),
    })
}

#[derive(Deserialize, JsonSchema)]
struct Count {
    /// The last number.
    to: u32,
}

async fn count(_ctx: Context, input: Count) -> Result<impl Stream<Item = Result<u32>>> {
    Ok(stream::iter((1..=input.to).map(Ok)))
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("hello", "Greets someone by name.", hello)
        .subscription("count", "Counts from 1 to `to`.", count)
}

opbox_sdk::export!(plugin);
