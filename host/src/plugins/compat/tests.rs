//! The gate's rules, one schema change at a time.

use super::*;

/// What `new` breaks of `old`, as (path, what) pairs, for an input.
fn input_breaks(old: Value, new: Value) -> Vec<(String, String)> {
    Walk::gaps(&old, &new, &mut 0)
}

fn compatible(old: Value, new: Value) -> bool {
    input_breaks(old, new).is_empty()
}

#[test]
fn widening_an_input_is_compatible() {
    assert!(compatible(json!({"type": "string"}), json!({})));
    assert!(compatible(
        json!({"type": "integer"}),
        json!({"type": "number"})
    ));
    assert!(compatible(
        json!({"type": "string", "minLength": 3}),
        json!({"type": "string", "minLength": 1})
    ));
    assert!(compatible(
        json!({"type": "object", "required": ["a", "b"]}),
        json!({"type": "object", "required": ["a"]})
    ));
    assert!(compatible(
        json!({"enum": ["a", "b"]}),
        json!({"type": "string", "maxLength": 1})
    ));
    assert!(compatible(
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}),
        json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {}}})
    ));
}

#[test]
fn narrowing_an_input_is_a_break_naming_where() {
    let breaks = input_breaks(
        json!({"type": "object", "properties": {"n": {"type": "number"}}}),
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["who"]}),
    );
    let paths: Vec<_> = breaks.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/properties/n/type", "/required"], "{breaks:?}");
    assert!(!compatible(json!({}), json!({"type": "object"})));
    assert!(!compatible(
        json!({"enum": ["a", "b"]}),
        json!({"enum": ["a"]})
    ));
    assert!(!compatible(
        json!({"type": "object"}),
        json!({"type": "object", "additionalProperties": false})
    ));
    assert!(!compatible(
        json!({"type": "string"}),
        json!({"type": "string", "pattern": "^a"})
    ));
    assert!(!compatible(
        json!({"type": "array", "items": {"type": "number"}}),
        json!({"type": "array", "items": {"type": "integer"}, "maxItems": 3})
    ));
}

#[test]
fn what_is_not_understood_is_a_break_unless_unchanged() {
    assert!(!compatible(json!({}), json!({"not": {"type": "null"}})));
    assert!(compatible(
        json!({"not": {"type": "null"}, "type": "string"}),
        json!({"not": {"type": "null"}})
    ));
    assert!(!compatible(
        json!({"oneOf": [{"type": "string"}]}),
        json!({"oneOf": [{"type": "string"}, {"type": "number"}]})
    ));
}

#[test]
fn references_and_choices_are_followed() {
    // schemars' shape: an optional field through a `$ref`, recursively.
    let tree = json!({
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
            "label": {"anyOf": [{"type": "string"}, {"type": "null"}]}
        }}}
    });
    assert!(compatible(tree.clone(), tree.clone()));
    let mut narrowed = tree.clone();
    narrowed["$defs"]["Node"]["properties"]["label"] = json!({"type": "string"});
    let breaks = input_breaks(tree, narrowed);
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert_eq!(breaks[0].0, "/properties/label/anyOf/1/type");
}

#[test]
fn operations_removed_or_changed_in_kind_are_breaks() {
    let spec = |name: &str, op_type, input: Value| OperationSpec {
        name: name.into(),
        op_type,
        visibility: crate::call::Visibility::External,
        description: String::new(),
        input_schema: input,
        output_schema: json!({}),
        access_control: Default::default(),
    };
    let old = [
        spec("p/a", OpType::Query, json!({})),
        spec("p/b", OpType::Query, json!({})),
        spec("p/c", OpType::Query, json!({})),
    ];
    let new = [
        spec("p/b", OpType::Mutation, json!({})),
        spec("p/c", OpType::Query, json!({"type": "null"})),
        spec("p/d", OpType::Query, json!({})),
    ];
    let changes: Vec<_> = breaks(&old, &new)
        .into_iter()
        .map(|b| (b.operation, b.change))
        .collect();
    assert_eq!(
        changes,
        [
            ("p/a".into(), "removed"),
            ("p/b".into(), "op_type"),
            ("p/c".into(), "input"),
        ]
    );
}

/// The changes a plugin makes most, with the schemas the Rust SDK writes
/// for them: inputs closed, outputs open, enums as `enum` lists.
#[test]
fn the_usual_changes_of_an_sdk_plugin_pass_and_real_breaks_do_not() {
    let input = |extra: Value| {
        let mut properties = json!({ "name": { "type": "string" } });
        properties
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({
            "type": "object",
            "properties": properties,
            "required": ["name"],
            "additionalProperties": false,
        })
    };
    let title = json!({ "title": { "type": ["string", "null"] } });
    // A new optional input field widens a closed input.
    assert!(compatible(input(json!({})), input(title.clone())));
    // It narrows an open one: that input took `title` of any type.
    let mut open = input(json!({}));
    open.as_object_mut().unwrap().remove("additionalProperties");
    assert!(!compatible(open, input(title.clone())));
    // Removing the field again is a break.
    assert!(!compatible(input(title), input(json!({}))));

    let kind = |values: Value| json!({ "type": "string", "enum": values });
    // A new enum value in an input widens it; in an output it is a break
    // (callers may not know it).
    assert!(compatible(
        kind(json!(["a", "b"])),
        kind(json!(["a", "b", "c"]))
    ));
    let output_breaks = Walk::gaps(
        &kind(json!(["a", "b", "c"])),
        &kind(json!(["a", "b"])),
        &mut 0,
    );
    assert_eq!(output_breaks.len(), 1, "{output_breaks:?}");
    // A new field in an open output is no break.
    let output = |properties: Value| json!({ "type": "object", "properties": properties });
    assert!(
        Walk::gaps(
            &output(json!({ "n": { "type": "integer" }, "at": { "type": "string" } })),
            &output(json!({ "n": { "type": "integer" } })),
            &mut 0
        )
        .is_empty()
    );
}
