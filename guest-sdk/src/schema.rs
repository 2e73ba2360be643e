//! The JSON Schemas an operation declares, derived with schemars.
//!
//! **Inputs are closed.** Every object schema of an input that names its
//! properties says `additionalProperties: false`, so a caller's misspelt
//! or unknown field is refused as `INVALID_INPUT` instead of silently
//! dropped by serde. It is also what lets a plugin grow: adding an
//! optional field to a closed input widens it, which the host's
//! compatibility gate accepts on replace. (An open input already "took"
//! the new field with any value, so giving it a type narrows it: a break.)
//!
//! Objects that mix their properties with `allOf`, `anyOf` or `oneOf`
//! (what `#[serde(flatten)]` of an enum becomes) and maps
//! (`additionalProperties` given) are left as schemars writes them.
//!
//! **Outputs are open**, so adding a field to an output is no break.

use schemars::transform::{RecursiveTransform, Transform};
use schemars::{JsonSchema, Schema};

/// The schema of an input of type `T`, closed.
pub(crate) fn input<T: JsonSchema>() -> String {
    let mut schema = schemars::schema_for!(T);
    RecursiveTransform(close).transform(&mut schema);
    schema.to_value().to_string()
}

/// The schema of an output of type `T`, as schemars derives it.
pub(crate) fn output<T: JsonSchema>() -> String {
    schemars::schema_for!(T).to_value().to_string()
}

/// The input schema of an operation without input: `null`, or an empty
/// object (what tool callers send for "no arguments").
pub(crate) fn no_input() -> String {
    serde_json::json!({
        "anyOf": [
            { "type": "null" },
            { "type": "object", "additionalProperties": false }
        ]
    })
    .to_string()
}

/// Closes `schema` when it is an object schema with named properties and
/// nothing else that could add properties.
fn close(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let opens = [
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
        "allOf",
        "anyOf",
        "oneOf",
    ];
    if object.contains_key("properties") && !opens.iter().any(|k| object.contains_key(*k)) {
        object.insert("additionalProperties".into(), false.into());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    struct Post {
        title: String,
        #[serde(default)]
        tags: Vec<Tag>,
        extra: BTreeMap<String, u32>,
        kind: Kind,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    struct Tag {
        name: String,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    #[serde(tag = "type")]
    enum Kind {
        Draft { note: String },
        Published,
    }

    fn parse(schema: String) -> Value {
        serde_json::from_str(&schema).unwrap()
    }

    #[test]
    fn inputs_are_closed_at_every_level_and_maps_stay_maps() {
        let schema = parse(input::<Post>());
        let validator = jsonschema::validator_for(&schema).unwrap();
        let post = json!({
            "title": "t",
            "tags": [{ "name": "a" }],
            "extra": { "any": 1 },
            "kind": { "type": "Draft", "note": "n" },
        });
        assert!(validator.is_valid(&post));
        for (pointer, field) in [("", "titel"), ("/tags/0", "nam"), ("/kind", "notes")] {
            let mut wrong = post.clone();
            wrong
                .pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(field.into(), json!(1));
            assert!(!validator.is_valid(&wrong), "{wrong}");
        }
    }

    #[test]
    fn outputs_stay_open() {
        let schema = parse(output::<Tag>());
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&json!({ "name": "a", "new": true })));
    }
}
