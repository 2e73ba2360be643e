//! Example plugin: a JSON key-value store over `wasi:keyvalue`.
//!
//! Needs a grant (`[plugins.grants.keyvalue]`); each tenant calling it has
//! keys of its own.
//!
//! - `kv/set` (mutation): `{key, value}` stores any JSON value.
//! - `kv/get` (query): `{key}` returns `{key, value}`, `value` null if unset.
//! - `kv/delete` (mutation): `{key}` removes it.
//! - `kv/keys` (query): every key, in order.
//! - `kv/increment` (mutation): `{key, by}` adds to a counter atomically.

use opbox_sdk::keyvalue::{self, Bucket};
use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const BUCKET: &str = "json";

#[derive(Deserialize, Serialize, JsonSchema)]
struct Entry {
    key: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize, Serialize, JsonSchema)]
struct Key {
    key: String,
}

#[derive(Deserialize, JsonSchema)]
struct Increment {
    key: String,
    /// How much to add; 1 when absent.
    #[serde(default = "one")]
    by: u64,
}

fn one() -> u64 {
    1
}

#[derive(Serialize, JsonSchema)]
struct Count {
    key: String,
    count: u64,
}

#[derive(Serialize, JsonSchema)]
struct Keys {
    keys: Vec<String>,
}

fn bucket() -> Result<Bucket> {
    keyvalue::open(BUCKET)
}

async fn set(_ctx: Context, entry: Entry) -> Result<Entry> {
    let bytes = serde_json::to_vec(&entry.value).map_err(|e| Error::internal(e.to_string()))?;
    bucket()?.set(&entry.key, &bytes)?;
    Ok(entry)
}

async fn get(_ctx: Context, input: Key) -> Result<Entry> {
    let value = match bucket()?.get(&input.key)? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            // A counter, or bytes another version wrote: shown as text.
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }),
        None => Value::Null,
    };
    Ok(Entry {
        key: input.key,
        value,
    })
}

async fn delete(_ctx: Context, input: Key) -> Result<Key> {
    bucket()?.delete(&input.key)?;
    Ok(input)
}

async fn keys(_ctx: Context) -> Result<Keys> {
    Ok(Keys {
        keys: bucket()?.keys()?,
    })
}

async fn increment(_ctx: Context, input: Increment) -> Result<Count> {
    let count = bucket()?.increment(&input.key, input.by)?;
    Ok(Count {
        key: input.key,
        count,
    })
}

fn plugin() -> Plugin {
    Plugin::new()
        .mutation("set", "Stores a JSON value under a key.", set)
        .query("get", "Returns the value of a key, null if unset.", get)
        .mutation("delete", "Removes a key.", delete)
        .query("keys", "Lists every key, in order.", keys)
        .mutation("increment", "Adds to a counter, atomically.", increment)
}

opbox_sdk::export!(plugin);
