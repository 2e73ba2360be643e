//! Hostile plugin: an input schema whose validation explodes.
//!
//! `hostile-schema/check` takes a schema of 20 nested `anyOf` levels, each
//! referring twice to the level below: validating even `"x"` against it
//! walks 2^20 paths. The host must refuse the plugin at load.

use opbox_sdk::{Context, Plugin, Result};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// The levels of the schema.
const LEVELS: usize = 20;

#[derive(serde::Deserialize)]
struct Exploding(#[allow(dead_code)] Value);

impl JsonSchema for Exploding {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Exploding".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut defs = Map::new();
        defs.insert(format!("l{LEVELS}"), json!({"type": "integer"}));
        for level in (0..LEVELS).rev() {
            let below = format!("#/$defs/l{}", level + 1);
            defs.insert(
                format!("l{level}"),
                json!({"anyOf": [{"$ref": below}, {"$ref": below}]}),
            );
        }
        let schema = json!({"$ref": "#/$defs/l0", "$defs": defs});
        Schema::try_from(schema).unwrap_or_default()
    }
}

async fn check(_ctx: Context, _input: Exploding) -> Result<bool> {
    Ok(true)
}

fn plugin() -> Plugin {
    Plugin::new().query("check", "Takes an exploding schema.", check)
}

opbox_sdk::export!(plugin);
