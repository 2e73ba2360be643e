//! The compatibility gate of a replace: does the new version still take
//! every call the old one took, and answer in ways its callers can read?
//!
//! A new version breaks its callers when, for an operation of the old one:
//!
//! - it no longer has the operation (`removed`);
//! - the operation's kind changed (`op_type`: query, mutation, subscription);
//! - its input schema refuses an input the old one accepted (`input`);
//! - its output schema allows an output the old one did not (`output`).
//!
//! The schema checks prove "every instance of A is an instance of B" by
//! walking both schemas together. What they understand:
//!
//! - `true`, `false`, `{}`, and identical schemas;
//! - local `$ref`s (recursive ones too), `anyOf`, `oneOf` and `allOf` on the
//!   side that must be narrower, `anyOf` and `allOf` on the wider side;
//! - `type` (an `integer` is a `number`), `enum`, `const`;
//! - `minLength`, `maxLength`, `pattern`, `format` (patterns and formats
//!   must be unchanged);
//! - `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//!   `multipleOf`;
//! - `properties`, `required`, `additionalProperties`, `minProperties`,
//!   `maxProperties`;
//! - `items` (one schema), `minItems`, `maxItems`, `uniqueItems`;
//! - annotations (`title`, `description`, `default`, `examples`, …) are
//!   ignored.
//!
//! Any other keyword on the wider side (`oneOf`, `not`, `if`,
//! `patternProperties`, `prefixItems`, …) counts as a break unless the
//! narrower side has the very same keyword and value, and a pair of
//! schemas too large to compare within [`MAX_STEPS`] counts as a break:
//! the gate errs on the side of "incompatible". A forced replace skips it.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::call::{OpType, OperationSpec};

/// Pairs of schemas compared at most, per replace: beyond it the rest is
/// reported as a break rather than checked.
pub const MAX_STEPS: usize = 10_000;

/// One way a new version breaks the callers of an old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The operation's full name.
    pub operation: String,
    /// `removed`, `op_type`, `input` or `output`.
    pub change: &'static str,
    /// Where in the schema: the keywords from its root down to the change,
    /// references followed (`/properties/name/type`); empty for a removed
    /// operation or a changed kind.
    pub path: String,
    /// What changed, for a person.
    pub reason: String,
}

impl Break {
    /// The break as callers see it in an error's `details`.
    pub fn to_json(&self) -> Value {
        json!({
            "operation": self.operation,
            "change": self.change,
            "path": self.path,
            "reason": self.reason,
        })
    }
}

/// How `new` breaks the callers of `old`: empty when it does not.
pub fn breaks(old: &[OperationSpec], new: &[OperationSpec]) -> Vec<Break> {
    let mut found = Vec::new();
    let mut steps = 0;
    for before in old {
        let Some(after) = new.iter().find(|op| op.name == before.name) else {
            found.push(Break {
                operation: before.name.clone(),
                change: "removed",
                path: String::new(),
                reason: "the operation is gone".into(),
            });
            continue;
        };
        if after.op_type != before.op_type {
            found.push(Break {
                operation: before.name.clone(),
                change: "op_type",
                path: String::new(),
                reason: format!(
                    "it was a {}, it is now a {}",
                    kind(before.op_type),
                    kind(after.op_type)
                ),
            });
            continue;
        }
        // Every input the old version accepted, the new one must accept.
        let gaps = Walk::gaps(&before.input_schema, &after.input_schema, &mut steps);
        found.extend(gaps.into_iter().map(|(path, what)| Break {
            operation: before.name.clone(),
            change: "input",
            path,
            reason: format!("the old version accepted {what}; the new one refuses them"),
        }));
        // Every output the new version may give, the old one could give.
        let gaps = Walk::gaps(&after.output_schema, &before.output_schema, &mut steps);
        found.extend(gaps.into_iter().map(|(path, what)| Break {
            operation: before.name.clone(),
            change: "output",
            path,
            reason: format!("the new version may answer {what}; the old one could not"),
        }));
    }
    found
}

fn kind(op_type: OpType) -> &'static str {
    match op_type {
        OpType::Query => "query",
        OpType::Mutation => "mutation",
        OpType::Subscription => "subscription",
        OpType::Raw => "raw",
        OpType::Http => "http",
    }
}

/// Keywords that only annotate: they never change what a schema accepts.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "title",
    "description",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "contentEncoding",
    "contentMediaType",
];

/// Keywords [`Walk::keywords`] checks on the wider side.
const UNDERSTOOD: &[&str] = &[
    "$ref",
    "anyOf",
    "allOf",
    "type",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "properties",
    "required",
    "additionalProperties",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
];

const TYPES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "string", "integer",
];

/// One proof that every instance of a narrow schema is one of a wide
/// schema; what it cannot prove lands in `found` as (path, what the narrow
/// side allows that the wide side does not).
struct Walk<'a> {
    narrow_root: &'a Value,
    wide_root: &'a Value,
    /// Pairs being compared or compared already: a recursive schema is
    /// assumed to fit where it recurs.
    seen: HashSet<(usize, usize)>,
    steps: &'a mut usize,
    found: Vec<(String, String)>,
}

impl<'a> Walk<'a> {
    /// What `narrow` allows that `wide` may not, as (path, what) pairs;
    /// empty when every instance of `narrow` is one of `wide`.
    fn gaps(narrow: &'a Value, wide: &'a Value, steps: &'a mut usize) -> Vec<(String, String)> {
        let mut walk = Self {
            narrow_root: narrow,
            wide_root: wide,
            seen: HashSet::new(),
            steps,
            found: Vec::new(),
        };
        walk.check(narrow, wide, "");
        walk.found
    }

    fn miss(&mut self, path: &str, what: impl Into<String>) {
        self.found.push((path.to_owned(), what.into()));
    }

    /// Whether `narrow ⊆ wide` holds, recording nothing: for choosing among
    /// branches.
    fn fits(&mut self, narrow: &'a Value, wide: &'a Value) -> bool {
        let found = std::mem::take(&mut self.found);
        let seen = self.seen.clone();
        self.check(narrow, wide, "");
        self.seen = seen;
        std::mem::replace(&mut self.found, found).is_empty()
    }

    fn check(&mut self, narrow: &'a Value, wide: &'a Value, path: &str) {
        if narrow == wide || wide == &Value::Bool(true) || narrow == &Value::Bool(false) {
            return;
        }
        *self.steps += 1;
        if *self.steps > MAX_STEPS {
            self.miss(
                path,
                "instances too many to compare (the schemas are too large)",
            );
            return;
        }
        let key = (
            std::ptr::from_ref(narrow) as usize,
            std::ptr::from_ref(wide) as usize,
        );
        if !self.seen.insert(key) {
            return;
        }
        let narrow = match narrow {
            Value::Bool(true) => &*ANYTHING,
            Value::Object(_) => narrow,
            _ => return self.miss(path, "values of a schema that is not an object"),
        };
        if !wide.is_object() {
            return self.miss(path, "any value at all");
        }
        // The narrow side: a reference or a choice narrows to its parts
        // (its other keywords only narrow it further).
        if let Some(reference) = narrow.get("$ref") {
            match resolve(self.narrow_root, reference) {
                Some(target) => return self.check(target, wide, path),
                None => {
                    return self.miss(path, format!("values of an unresolved `$ref` {reference}"));
                }
            }
        }
        for choice in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = narrow.get(choice) {
                for (i, branch) in branches.iter().enumerate() {
                    self.check(branch, wide, &format!("{path}/{choice}/{i}"));
                }
                return;
            }
        }
        if let Some(Value::Array(parts)) = narrow.get("allOf")
            && parts.iter().any(|part| self.fits(part, wide))
        {
            return;
        }
        // The wide side: every part must hold.
        if let Some(reference) = wide.get("$ref") {
            match resolve(self.wide_root, reference) {
                Some(target) => self.check(narrow, target, path),
                None => self.miss(
                    path,
                    format!("values the unresolved `$ref` {reference} may refuse"),
                ),
            }
        }
        if let Some(Value::Array(parts)) = wide.get("allOf") {
            for part in parts {
                self.check(narrow, part, path);
            }
        }
        if let Some(Value::Array(branches)) = wide.get("anyOf")
            && !branches.iter().any(|branch| self.fits(narrow, branch))
        {
            self.miss(path, "values that fit no single branch of its `anyOf`");
        }
        self.keywords(narrow, wide, path);
    }

    /// The keywords of `wide` other than references and choices.
    fn keywords(&mut self, narrow: &'a Value, wide: &'a Value, path: &str) {
        let types = types(narrow);
        let may_be = |t: &str| types.contains(t) || (t == "number" && types.contains("integer"));
        // What `narrow` allows is a list of values: check each one.
        if let Some(values) = listed(narrow) {
            for value in values {
                if let Some(why) = refuses(wide, value) {
                    self.miss(path, format!("the value {value} ({why})"));
                }
            }
            return;
        }
        for (keyword, limit) in wide.as_object().into_iter().flatten() {
            if ANNOTATIONS.contains(&keyword.as_str())
                || ["$ref", "allOf", "anyOf"].contains(&keyword.as_str())
            {
                continue;
            }
            let own = narrow.get(keyword);
            if !UNDERSTOOD.contains(&keyword.as_str()) {
                if own != Some(limit) {
                    self.miss(
                        path,
                        format!("values its `{keyword}` may refuse (not checked)"),
                    );
                }
                continue;
            }
            match keyword.as_str() {
                "type" => {
                    let allowed = type_set(limit);
                    let mut extra: Vec<_> = types
                        .iter()
                        .filter(|t| {
                            !(allowed.contains(*t)
                                || (**t == "integer" && allowed.contains("number")))
                        })
                        .map(|t| format!("`{t}`"))
                        .collect();
                    if !extra.is_empty() {
                        extra.sort();
                        self.miss(
                            &format!("{path}/type"),
                            format!("values of type {}", extra.join(", ")),
                        );
                    }
                }
                "enum" | "const" => {
                    self.miss(path, format!("values outside its `{keyword}`"));
                }
                "minLength" | "minimum" | "minItems" | "minProperties"
                    if may_be(applies(keyword))
                        && (own.is_none() || number(own) < number(Some(limit))) =>
                {
                    self.miss(
                        &format!("{path}/{keyword}"),
                        format!("{} below its `{keyword}` of {limit}", plural(keyword)),
                    );
                }
                "maxLength" | "maximum" | "maxItems" | "maxProperties"
                    if may_be(applies(keyword))
                        && (own.is_none() || number(own) > number(Some(limit))) =>
                {
                    self.miss(
                        &format!("{path}/{keyword}"),
                        format!("{} above its `{keyword}` of {limit}", plural(keyword)),
                    );
                }
                "exclusiveMinimum" if may_be("number") => {
                    let floor =
                        number(narrow.get("exclusiveMinimum")).max(number(narrow.get("minimum")));
                    let strict = narrow
                        .get("exclusiveMinimum")
                        .is_some_and(|m| number(Some(m)) >= number(Some(limit)));
                    if !(strict || floor > number(Some(limit))) {
                        self.miss(
                            &format!("{path}/{keyword}"),
                            format!("numbers not above {limit}"),
                        );
                    }
                }
                "exclusiveMaximum" if may_be("number") => {
                    let ceiling = number_or(narrow.get("exclusiveMaximum"), f64::INFINITY)
                        .min(number_or(narrow.get("maximum"), f64::INFINITY));
                    let strict = narrow
                        .get("exclusiveMaximum")
                        .is_some_and(|m| number(Some(m)) <= number(Some(limit)));
                    if !(strict || ceiling < number(Some(limit))) {
                        self.miss(
                            &format!("{path}/{keyword}"),
                            format!("numbers not below {limit}"),
                        );
                    }
                }
                "multipleOf" if may_be("number") => {
                    let ratio = number(own) / number(Some(limit));
                    if own.is_none() || ratio.fract() != 0.0 {
                        self.miss(
                            &format!("{path}/{keyword}"),
                            format!("numbers not a multiple of {limit}"),
                        );
                    }
                }
                "pattern" | "format" if may_be("string") && own != Some(limit) => {
                    self.miss(
                        &format!("{path}/{keyword}"),
                        format!("strings its `{keyword}` {limit} may refuse"),
                    );
                }
                "uniqueItems"
                    if may_be("array") && limit == &Value::Bool(true) && own != Some(limit) =>
                {
                    self.miss(&format!("{path}/{keyword}"), "arrays with repeated items");
                }
                "items" if may_be("array") => {
                    if narrow.get("prefixItems").is_some() {
                        self.miss(path, "items its `prefixItems` allows (not checked)");
                        continue;
                    }
                    let own = own.unwrap_or(&ANYTHING);
                    self.check(own, limit, &format!("{path}/items"));
                }
                "required" if may_be("object") => {
                    let own = strings(own);
                    for name in strings(Some(limit)) {
                        if !own.contains(&name) {
                            self.miss(
                                &format!("{path}/required"),
                                format!("objects without `{name}`"),
                            );
                        }
                    }
                }
                // Both are checked together, once.
                "properties" | "additionalProperties"
                    if may_be("object")
                        && (keyword == "properties" || wide.get("properties").is_none()) =>
                {
                    self.properties(narrow, wide, path);
                }
                _ => {}
            }
        }
    }

    /// Each property either side names, and the ones neither names.
    fn properties(&mut self, narrow: &'a Value, wide: &'a Value, path: &str) {
        let named = |schema: &'a Value| schema.get("properties").and_then(Value::as_object);
        let rest = |schema: &'a Value| schema.get("additionalProperties").unwrap_or(&ANYTHING);
        if narrow.get("patternProperties").is_some() {
            return self.miss(
                path,
                "properties its `patternProperties` allows (not checked)",
            );
        }
        let mut names: Vec<&String> = named(narrow)
            .into_iter()
            .chain(named(wide))
            .flat_map(Map::keys)
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let own = named(narrow)
                .and_then(|p| p.get(name))
                .unwrap_or_else(|| rest(narrow));
            let limit = named(wide)
                .and_then(|p| p.get(name))
                .unwrap_or_else(|| rest(wide));
            self.check(own, limit, &format!("{path}/properties/{}", escape(name)));
        }
        self.check(
            rest(narrow),
            rest(wide),
            &format!("{path}/additionalProperties"),
        );
    }
}

/// A schema that takes anything.
static ANYTHING: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| json!({}));

/// The target of a local `$ref` in `root`.
fn resolve<'a>(root: &'a Value, reference: &Value) -> Option<&'a Value> {
    let pointer = reference.as_str()?.strip_prefix('#')?;
    root.pointer(pointer)
}

/// The types `schema` admits at its top: every type when it does not say.
fn types(schema: &Value) -> HashSet<&'static str> {
    match schema.get("type") {
        Some(limit) => type_set(limit),
        None => TYPES.iter().copied().collect(),
    }
}

fn type_set(limit: &Value) -> HashSet<&'static str> {
    let named = match limit {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    TYPES
        .iter()
        .copied()
        .filter(|t| named.contains(t))
        .collect()
}

/// The values of `schema`'s `enum` or `const`, when it has one.
fn listed(schema: &Value) -> Option<Vec<&Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value]);
    }
    schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|values| values.iter().collect())
}

/// Why `wide` refuses `value`, judged on its plain keywords; `None` when
/// it accepts it. Keywords it cannot judge count as refusing.
fn refuses(wide: &Value, value: &Value) -> Option<String> {
    let Some(keywords) = wide.as_object() else {
        return (wide == &Value::Bool(false)).then(|| "nothing is accepted".into());
    };
    for (keyword, limit) in keywords {
        let ok = match keyword.as_str() {
            k if ANNOTATIONS.contains(&k) || ["$ref", "allOf", "anyOf"].contains(&k) => true,
            "properties"
            | "required"
            | "additionalProperties"
            | "minProperties"
            | "maxProperties"
            | "patternProperties"
            | "propertyNames" => !value.is_object(),
            "items" | "prefixItems" | "minItems" | "maxItems" | "uniqueItems" | "contains" => {
                !value.is_array()
            }
            "pattern" | "format" => !value.is_string(),
            "type" => type_set(limit).iter().any(|t| is_type(value, t)),
            "enum" => limit.as_array().is_some_and(|vs| vs.contains(value)),
            "const" => limit == value,
            "minLength" => value
                .as_str()
                .is_none_or(|s| s.chars().count() as f64 >= number(Some(limit))),
            "maxLength" => value
                .as_str()
                .is_none_or(|s| s.chars().count() as f64 <= number(Some(limit))),
            "minimum" => value.as_f64().is_none_or(|n| n >= number(Some(limit))),
            "maximum" => value.as_f64().is_none_or(|n| n <= number(Some(limit))),
            _ => false,
        };
        if !ok {
            return Some(format!("refused by `{keyword}`"));
        }
    }
    None
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        _ => false,
    }
}

/// The type a bound keyword applies to.
fn applies(keyword: &str) -> &'static str {
    match keyword {
        "minLength" | "maxLength" => "string",
        "minItems" | "maxItems" => "array",
        "minProperties" | "maxProperties" => "object",
        _ => "number",
    }
}

fn plural(keyword: &str) -> &'static str {
    match applies(keyword) {
        "string" => "strings of a length",
        "array" => "arrays of a length",
        "object" => "objects with a property count",
        _ => "numbers",
    }
}

/// A bound's value; a missing lower bound is `-inf`.
fn number(value: Option<&Value>) -> f64 {
    number_or(value, f64::NEG_INFINITY)
}

fn number_or(value: Option<&Value>, missing: f64) -> f64 {
    value.and_then(Value::as_f64).unwrap_or(missing)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `name` as a JSON pointer segment.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
