//! Checking what a plugin says about itself at load: names, duplicates,
//! sizes, and schemas the host can afford to validate against.
//!
//! A plugin's input schema is run against every input its callers send, on
//! the host's CPU. So that no schema can make that cost explode, each one is
//! measured when the plugin loads: its size, its nesting, and its *expanded
//! size*, the number of schema objects validation may visit at one place in
//! an input once every `$ref` is followed (a reference back into a schema
//! being expanded counts once: that is recursion, which walks down the
//! input rather than across it). Validating an input then costs at most its
//! size times the expanded size. Twenty nested `anyOf`s of two `$ref`s each
//! expand to a million objects and are refused; schemas derived from Rust
//! types expand to tens or hundreds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::LoadError;
use super::bindings::{self, OpType as WitOpType};
use super::plugin::PluginOp;
use crate::call::{OpType, is_valid_segment};

/// What a plugin may declare.
///
/// | field | default |
/// |---|---|
/// | `max_operations` | 256 operations per plugin |
/// | `max_schema_bytes` | 64 KiB per input or output schema |
/// | `max_manifest_bytes` | 1 MiB for the whole manifest: names, descriptions, schemas |
/// | `max_schema_depth` | 32 levels of nesting in a schema |
/// | `max_schema_expansion` | 10,000 schema objects in a schema with its `$ref`s followed |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Operations per plugin.
    pub max_operations: usize,
    /// Bytes of one schema.
    pub max_schema_bytes: usize,
    /// Bytes of the whole manifest.
    pub max_manifest_bytes: usize,
    /// Nesting of one schema.
    pub max_schema_depth: usize,
    /// Schema objects validation may visit at one place in an input.
    pub max_schema_expansion: u64,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_operations: 256,
            max_schema_bytes: 64 << 10,
            max_manifest_bytes: 1 << 20,
            max_schema_depth: 32,
            max_schema_expansion: 10_000,
        }
    }
}

/// What a byte-stream operation answers, as its output schema: bytes, not
/// JSON.
pub(crate) const RAW_OUTPUT_SCHEMA: &str = r#"{"type":"string","contentMediaType":"application/octet-stream","description":"bytes: stdout and stderr, then an exit code"}"#;

fn refuse(message: String) -> LoadError {
    LoadError::Manifest(message)
}

/// Checks what `describe` returned: its size, valid and unique names, and
/// schemas that are JSON, compile and are cheap enough to validate against.
pub(super) fn check_operations(
    specs: Vec<bindings::OperationSpec>,
    raw: Vec<bindings::raw::RawSpec>,
    limits: &ManifestLimits,
) -> Result<Vec<PluginOp>, LoadError> {
    // Byte-stream operations are checked with the others, under the same
    // names and limits: what they answer is bytes, described as such.
    let first_raw = specs.len();
    let specs: Vec<bindings::OperationSpec> = specs
        .into_iter()
        .chain(raw.into_iter().map(|raw| bindings::OperationSpec {
            name: raw.name,
            op_type: WitOpType::Query,
            description: raw.description,
            input_schema: raw.input_schema,
            output_schema: RAW_OUTPUT_SCHEMA.to_owned(),
            internal: raw.internal,
            required_scopes: raw.required_scopes,
        }))
        .collect();
    if specs.len() > limits.max_operations {
        return Err(refuse(format!(
            "{} operations, more than max_operations = {}",
            specs.len(),
            limits.max_operations
        )));
    }
    let bytes: usize = specs
        .iter()
        .map(|spec| {
            spec.name.len()
                + spec.description.len()
                + spec.input_schema.len()
                + spec.output_schema.len()
                + spec.required_scopes.iter().map(String::len).sum::<usize>()
        })
        .sum();
    if bytes > limits.max_manifest_bytes {
        return Err(refuse(format!(
            "the manifest is {bytes} bytes, more than max_manifest_bytes = {}",
            limits.max_manifest_bytes
        )));
    }
    let mut seen = HashSet::new();
    let mut ops = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        if !is_valid_segment(&spec.name) {
            return Err(refuse(format!(
                "operation name `{}` is not valid ([a-z0-9_-]+)",
                spec.name
            )));
        }
        if !seen.insert(spec.name.clone()) {
            return Err(refuse(format!("operation `{}` is listed twice", spec.name)));
        }
        let schema = |which: &str,
                      text: &str|
         -> Result<(Value, jsonschema::Validator), LoadError> {
            let bad = |why: String| refuse(format!("the {which} schema of `{}` {why}", spec.name));
            if text.len() > limits.max_schema_bytes {
                return Err(bad(format!(
                    "is {} bytes, more than max_schema_bytes = {}",
                    text.len(),
                    limits.max_schema_bytes
                )));
            }
            let value: Value =
                serde_json::from_str(text).map_err(|e| bad(format!("is not JSON: {e}")))?;
            check_schema(&value, limits).map_err(bad)?;
            let compiled = jsonschema::validator_for(&value)
                .map_err(|e| bad(format!("does not compile: {e}")))?;
            Ok((value, compiled))
        };
        let (input_schema, input) = schema("input", &spec.input_schema)?;
        let (output_schema, _) = schema("output", &spec.output_schema)?;
        ops.push(PluginOp {
            input_schema,
            output_schema,
            input: Arc::new(input),
            op_type: match spec.op_type {
                _ if index >= first_raw => OpType::Raw,
                WitOpType::Query => OpType::Query,
                WitOpType::Mutation => OpType::Mutation,
                WitOpType::Subscription => OpType::Subscription,
            },
            name: spec.name,
            description: spec.description,
            internal: spec.internal,
            required_scopes: spec.required_scopes,
        });
    }
    Ok(ops)
}

/// Whether `schema` is within the depth and expansion limits; why not.
pub(crate) fn check_schema(schema: &Value, limits: &ManifestLimits) -> Result<(), String> {
    let depth = depth(schema);
    if depth > limits.max_schema_depth {
        return Err(format!(
            "is nested {depth} levels deep, more than max_schema_depth = {}",
            limits.max_schema_depth
        ));
    }
    let mut expansion = Expansion {
        root: schema,
        limit: limits.max_schema_expansion,
        expanding: HashSet::new(),
        sizes: HashMap::new(),
    };
    expansion.size(schema).map(drop)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The expanded size of a schema: objects counted with every local `$ref`
/// replaced by what it points to.
struct Expansion<'a> {
    root: &'a Value,
    limit: u64,
    /// The references being expanded, outermost first.
    expanding: HashSet<&'a str>,
    /// Sizes of references already expanded.
    sizes: HashMap<&'a str, u64>,
}

impl<'a> Expansion<'a> {
    fn size(&mut self, value: &'a Value) -> Result<u64, String> {
        let size = match value {
            Value::Object(map) => {
                let mut size = 1u64;
                for (key, child) in map {
                    size += match (key.as_str(), child) {
                        ("$ref" | "$dynamicRef", Value::String(reference)) => {
                            self.reference(reference)?
                        }
                        // Data, not schemas: never followed.
                        ("enum" | "const" | "examples" | "default", _) => 0,
                        _ => self.size(child)?,
                    };
                }
                size
            }
            Value::Array(items) => {
                let mut size = 0;
                for item in items {
                    size += self.size(item)?;
                }
                size
            }
            _ => 0,
        };
        if size > self.limit {
            return Err(format!(
                "expands to more than max_schema_expansion = {} schema objects once its $refs are followed, which would make validating an input too costly",
                self.limit
            ));
        }
        Ok(size)
    }

    fn reference(&mut self, reference: &'a str) -> Result<u64, String> {
        if self.expanding.contains(reference) {
            return Ok(1);
        }
        if let Some(&size) = self.sizes.get(reference) {
            return Ok(size);
        }
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| self.root.pointer(pointer))
            .ok_or_else(|| {
                format!(
                    "refers to `{reference}`; only references into the schema itself (`#/…`) are taken"
                )
            })?;
        self.expanding.insert(reference);
        let size = self.size(target);
        self.expanding.remove(reference);
        let size = size?;
        self.sizes.insert(reference, size);
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(schema: Value) -> Result<(), String> {
        check_schema(&schema, &ManifestLimits::default())
    }

    #[test]
    fn schemas_from_rust_types_pass() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "tree": {"$ref": "#/$defs/Tree"},
                "kind": {"enum": ["a", "b"]},
            },
            "required": ["text"],
            "$defs": {
                "Tree": {"type": "object", "properties": {
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}}
                }}
            }
        });
        assert_eq!(check(schema), Ok(()));
    }

    #[test]
    fn references_that_fan_out_are_refused() {
        let levels = 20;
        let mut defs = serde_json::Map::new();
        defs.insert(format!("l{levels}"), json!({"type": "integer"}));
        for level in 0..levels {
            let below = format!("#/$defs/l{}", level + 1);
            defs.insert(
                format!("l{level}"),
                json!({"anyOf": [{"$ref": below}, {"$ref": below}]}),
            );
        }
        let error = check(json!({"$ref": "#/$defs/l0", "$defs": defs})).unwrap_err();
        assert!(error.contains("max_schema_expansion"), "{error}");
    }

    #[test]
    fn deep_and_foreign_schemas_are_refused() {
        let mut deep = json!({"type": "integer"});
        for _ in 0..40 {
            deep = json!({"items": deep});
        }
        assert!(check(deep).unwrap_err().contains("max_schema_depth"));
        let foreign = check(json!({"$ref": "https://example.com/schema.json"})).unwrap_err();
        assert!(foreign.contains("only references into the schema itself"));
    }
}
