//! Test fixture: a plugin of the `plugin-core` world (no `invoke` import),
//! written against the WIT directly, as a toolchain without async imports
//! builds one.
//!
//! - `fixture-core/hello` answers `"hello, <input>"`.
//! - `fixture-core/count` yields `1` … `n` for the input `n`.

#![allow(
    unsafe_code,
    reason = "the bindings wit-bindgen generates export functions by name"
)]

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "opbox:plugin/plugin-core",
        generate_all,
    });
}

use bindings::exports::opbox::plugin::handler::Guest;
use bindings::opbox::plugin::log;
use bindings::opbox::plugin::types::{CallContext, CallError, Manifest, OpType, OperationSpec};
use bindings::wit_stream;

struct Core;

fn error(code: &str, message: String) -> CallError {
    CallError {
        code: code.to_owned(),
        message,
        details: None,
    }
}

fn spec(name: &str, op_type: OpType, input: &str, output: &str) -> OperationSpec {
    OperationSpec {
        name: name.to_owned(),
        op_type,
        description: format!("The plugin-core fixture's `{name}`."),
        input_schema: input.to_owned(),
        output_schema: output.to_owned(),
        internal: false,
        required_scopes: Vec::new(),
    }
}

impl Guest for Core {
    fn describe() -> Manifest {
        Manifest {
            name: "fixture-core".to_owned(),
            version: "0.1.0".to_owned(),
            operations: vec![
                spec(
                    "hello",
                    OpType::Query,
                    r#"{"type":"string"}"#,
                    r#"{"type":"string"}"#,
                ),
                spec(
                    "count",
                    OpType::Subscription,
                    r#"{"type":"integer","minimum":0,"maximum":1000}"#,
                    r#"{"type":"integer"}"#,
                ),
            ],
        }
    }

    async fn call(_ctx: CallContext, op: String, input: String) -> Result<String, CallError> {
        match op.as_str() {
            // The host validated the input: a JSON string.
            "hello" => {
                log::log(log::Level::Info, &format!("greeting {input}"));
                // Still JSON: the input's escapes stay as they were.
                Ok(format!(r#""hello, {}""#, input.trim_matches('"')))
            }
            _ => Err(error("NOT_FOUND", format!("no query `{op}`"))),
        }
    }

    async fn subscribe(
        _ctx: CallContext,
        op: String,
        input: String,
    ) -> Result<wit_bindgen::StreamReader<Result<String, CallError>>, CallError> {
        if op != "count" {
            return Err(error("NOT_FOUND", format!("no subscription `{op}`")));
        }
        let n: u32 = input
            .parse()
            .map_err(|_| error("INVALID_INPUT", format!("not a count: {input}")))?;
        let (mut writer, reader) = wit_stream::new();
        wit_bindgen::spawn_local(async move {
            for i in 1..=n {
                if writer.write_one(Ok(i.to_string())).await.is_some() {
                    return;
                }
            }
        });
        Ok(reader)
    }
}

bindings::export!(Core with_types_in bindings);
