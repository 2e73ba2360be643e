//! Example plugin: notes kept as files in the directory the operator grants.
//!
//! The granted directory is the plugin's filesystem root, so plain `std::fs`
//! on `/NAME.txt` is all it takes; the host confines every path to that
//! directory. Without a grant every operation fails with
//! `STORAGE_UNAVAILABLE`.
//!
//! ```toml
//! [[plugins]]
//! path = "notes.wasm"
//! [plugins.grants]
//! directory = { path = "notes-data" }
//! ```
//!
//! - `notes/put` (mutation): `{name, text}` stores a note.
//! - `notes/get` (query): `{name}` returns it, or `NO_SUCH_NOTE`.
//! - `notes/list` (query): the names of all notes, sorted.
//! - `notes/delete` (mutation): `{name}` removes one.

use std::io::ErrorKind;

use opbox_sdk::{Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, JsonSchema)]
struct Name {
    /// `[a-z0-9_-]`, 1 to 64 characters.
    name: String,
}

#[derive(Deserialize, Serialize, JsonSchema)]
struct Note {
    /// `[a-z0-9_-]`, 1 to 64 characters.
    name: String,
    /// The note itself.
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Names {
    names: Vec<String>,
}

/// The file of a note, after checking its name.
fn file(name: &str) -> Result<String> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(Error::new(
            "INVALID_NAME",
            "a note's name is 1 to 64 of [a-z0-9_-]",
        ));
    }
    Ok(format!("/{name}.txt"))
}

fn storage(e: std::io::Error) -> Error {
    Error::new(
        "STORAGE_UNAVAILABLE",
        format!("cannot use the notes directory: {e}"),
    )
}

async fn put(_ctx: Context, note: Note) -> Result<Note> {
    std::fs::write(file(&note.name)?, &note.text).map_err(storage)?;
    Ok(note)
}

async fn get(_ctx: Context, input: Name) -> Result<Note> {
    match std::fs::read_to_string(file(&input.name)?) {
        Ok(text) => Ok(Note {
            name: input.name,
            text,
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::new(
            "NO_SUCH_NOTE",
            format!("no note named `{}`", input.name),
        )),
        Err(e) => Err(storage(e)),
    }
}

async fn list(_ctx: Context, _input: serde_json::Value) -> Result<Names> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/").map_err(storage)? {
        let entry = entry.map_err(storage)?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".txt"))
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(Names { names })
}

async fn delete(_ctx: Context, input: Name) -> Result<Name> {
    match std::fs::remove_file(file(&input.name)?) {
        Ok(()) => Ok(input),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::new(
            "NO_SUCH_NOTE",
            format!("no note named `{}`", input.name),
        )),
        Err(e) => Err(storage(e)),
    }
}

fn plugin() -> Plugin {
    Plugin::new()
        .mutation("put", "Stores a note under a name.", put)
        .query("get", "Returns the note with a name.", get)
        .query("list", "Lists the names of all notes.", list)
        .mutation("delete", "Removes the note with a name.", delete)
}

opbox_sdk::export!(plugin);
