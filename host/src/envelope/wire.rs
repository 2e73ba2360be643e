//! Envelopes as JSON: parsing what callers send, building what the host sends.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::call::{CallError, ErrorCode, Receipt};

/// The envelope types a caller may send.
pub const CALL_REQUESTED: &str = "call.requested";
/// Cancels the call or subscription with the envelope's `id`.
pub const CALL_ABORTED: &str = "call.aborted";
/// An output: once for a query or mutation, once per item of a subscription.
pub const CALL_RESPONDED: &str = "call.responded";
/// A subscription ended normally.
pub const CALL_COMPLETED: &str = "call.completed";
/// A call failed; terminal for its `id`.
pub const CALL_ERROR: &str = "call.error";
/// A byte-stream call may be sent this many more stdin bytes.
pub const CALL_CREDIT: &str = "call.credit";

/// A raw chunk's `stream_type`: the caller's bytes (stdin).
pub const RAW_STDIN: u8 = 0;
/// A raw chunk's `stream_type`: the operation's stdout.
pub const RAW_STDOUT: u8 = 1;
/// A raw chunk's `stream_type`: the operation's stderr.
pub const RAW_STDERR: u8 = 2;
/// How many stdin bytes a byte-stream call takes ahead of what its
/// operation has read: the credit every such call starts with.
pub const RAW_WINDOW: usize = 256 << 10;
/// The longest id of a byte-stream call: raw chunks carry it in one byte.
pub const MAX_RAW_ID_BYTES: usize = 255;

/// One envelope from a caller, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `call.requested`: start a call or subscription.
    Call {
        /// The caller's id for it.
        id: String,
        /// What to call.
        payload: CallPayload,
    },
    /// `call.aborted`: stop the call with this id.
    Abort {
        /// The caller's id of the call.
        id: String,
    },
    /// A raw chunk: bytes of a byte-stream call.
    Chunk {
        /// The caller's id of the call.
        id: String,
        /// [`RAW_STDIN`] from a caller.
        stream_type: u8,
        /// The bytes; none is the end of the stream.
        data: Bytes,
    },
}

/// The payload of `call.requested`. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallPayload {
    /// `namespace/op`.
    #[serde(rename = "operationId")]
    pub operation_id: String,
    /// The input; `null` when absent.
    #[serde(default)]
    pub input: Value,
    /// A bearer token for this call only, overriding the connection's.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// A deadline in milliseconds; it may only shorten the host's.
    #[serde(default, deserialize_with = "crate::call::whole_millis")]
    pub deadline_ms: Option<u64>,
    /// The kind of call the caller means to make; a call of the other
    /// kind fails with `INVALID_OPERATION_TYPE`, as over HTTP.
    #[serde(default)]
    pub expect: Option<Expect>,
    /// The caller's W3C `traceparent`, which the call's span joins; a
    /// malformed one is ignored.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The caller's W3C `tracestate`, kept with its `traceparent`.
    #[serde(default)]
    pub tracestate: Option<String>,
    /// How the call's data travels: JSON envelopes (the default) or raw
    /// chunks after this envelope, for a byte-stream operation.
    #[serde(default)]
    pub carriage: Carriage,
}

/// How a call's data travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Carriage {
    /// Outputs as `call.responded` envelopes.
    #[default]
    Json,
    /// Bytes as raw chunks both ways, then `call.completed` with the exit
    /// code (`docs/raw.md`).
    Raw,
}

/// The reply sequence a caller asks for in `call.requested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// A query or mutation: one `call.responded` or one `call.error`.
    Once,
    /// A subscription: `call.responded` for each output, then one
    /// `call.completed` or one `call.error`.
    Stream,
}

impl std::fmt::Debug for CallPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPayload")
            .field("operation_id", &self.operation_id)
            .field("input", &self.input)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("deadline_ms", &self.deadline_ms)
            .field("expect", &self.expect)
            .field("carriage", &self.carriage)
            .finish()
    }
}

impl CallPayload {
    /// The deadline the caller asked for.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline_ms.map(Duration::from_millis)
    }
}

/// Why an envelope could not be understood.
#[derive(Debug, Clone, PartialEq)]
pub enum BadEnvelope {
    /// No `id` could be read: a framing violation, answered with
    /// `INVALID_FRAME` and the end of the connection.
    Frame(String),
    /// The envelope has an `id` but is otherwise wrong: answered with
    /// `INVALID_INPUT` for that `id`; the connection stays up.
    Call {
        /// The envelope's id.
        id: String,
        /// What is wrong with it.
        message: String,
    },
}

impl BadEnvelope {
    /// The error frame this deserves.
    pub fn to_frame(&self) -> Vec<u8> {
        match self {
            Self::Frame(message) => error_frame(
                "",
                &CallError::new(ErrorCode::InvalidFrame, message.clone()),
            ),
            Self::Call { id, message } => {
                error_frame(id, &CallError::invalid_input(message.clone()))
            }
        }
    }
}

/// Whether a frame is a raw chunk rather than a JSON envelope: its first
/// byte is a `stream_type`, which no JSON text starts with.
pub fn is_chunk(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|&b| b <= RAW_STDERR)
}

/// A raw chunk's parts: its stream type, its call's id and its bytes.
pub fn split_chunk(bytes: &Bytes) -> Result<(u8, String, Bytes), String> {
    let short = || "a raw chunk shorter than its head".to_owned();
    let (&stream_type, rest) = bytes.split_first().ok_or_else(short)?;
    let (&id_len, rest) = rest.split_first().ok_or_else(short)?;
    let id_len = usize::from(id_len);
    let id = rest.get(..id_len).ok_or_else(short)?;
    let id = std::str::from_utf8(id)
        .map_err(|_| "a raw chunk's id is not UTF-8".to_owned())?
        .to_owned();
    Ok((stream_type, id, bytes.slice(2 + id_len..)))
}

/// Parses a raw chunk from a caller: `[stream_type u8][id length u8][id]
/// [data]`, stdin only.
pub fn parse_chunk(bytes: &Bytes) -> Result<Incoming, BadEnvelope> {
    let (stream_type, id, data) = split_chunk(bytes).map_err(BadEnvelope::Frame)?;
    if stream_type != RAW_STDIN {
        return Err(BadEnvelope::Call {
            id,
            message: format!("a caller sends raw chunks of stream type {RAW_STDIN} (stdin) only"),
        });
    }
    Ok(Incoming::Chunk {
        id,
        stream_type,
        data,
    })
}

/// A raw chunk of call `id`.
pub fn chunk_frame(id: &str, stream_type: u8, data: &[u8]) -> Vec<u8> {
    let id = &id.as_bytes()[..id.len().min(MAX_RAW_ID_BYTES)];
    let mut frame = Vec::with_capacity(2 + id.len() + data.len());
    frame.push(stream_type);
    // At most `MAX_RAW_ID_BYTES`: checked when the call started.
    frame.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    frame.extend_from_slice(id);
    frame.extend_from_slice(data);
    frame
}

/// `call.credit`: the caller may send `bytes` more of stdin.
pub fn credit_frame(id: &str, bytes: usize) -> Vec<u8> {
    frame(CALL_CREDIT, id, json!({ "bytes": bytes }))
}

/// `call.completed` of a byte-stream call, with its exit code and cost.
pub fn exited_frame(id: &str, exit_code: u8, cost: &Receipt) -> Vec<u8> {
    frame(
        CALL_COMPLETED,
        id,
        json!({ "exit_code": exit_code, "cost": cost }),
    )
}

/// Parses one envelope.
pub fn parse(bytes: &[u8]) -> Result<Incoming, BadEnvelope> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| BadEnvelope::Frame(format!("the envelope is not UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| BadEnvelope::Frame(format!("the envelope is not JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(BadEnvelope::Frame(
            "the envelope is not a JSON object".into(),
        ));
    };
    let id = match envelope.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => {
            return Err(BadEnvelope::Frame(
                "the envelope's `id` is not a string".into(),
            ));
        }
        None => return Err(BadEnvelope::Frame("the envelope has no `id`".into())),
    };
    let bad = |message: String| BadEnvelope::Call {
        id: id.clone(),
        message,
    };
    let kind = match envelope.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(bad("the envelope has no `type` string".into())),
    };
    let payload = envelope.remove("payload").unwrap_or_else(|| json!({}));
    if let Some(field) = envelope.keys().next() {
        return Err(bad(format!("unknown envelope field `{field}`")));
    }
    match kind.as_str() {
        CALL_REQUESTED => {
            let payload = CallPayload::deserialize(payload)
                .map_err(|e| bad(format!("invalid `call.requested` payload: {e}")))?;
            Ok(Incoming::Call { id, payload })
        }
        CALL_ABORTED => Ok(Incoming::Abort { id }),
        other => Err(bad(format!(
            "`{other}` is not an envelope type a caller may send (`{CALL_REQUESTED}`, `{CALL_ABORTED}`)"
        ))),
    }
}

fn frame(kind: &str, id: &str, payload: Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&json!({ "type": kind, "id": id, "payload": payload })).unwrap_or_default()
}

/// `call.responded` with `output`; a query's or mutation's (its only one)
/// also carries what the call cost.
pub fn responded_frame(id: &str, output: &Value, cost: Option<&Receipt>) -> Vec<u8> {
    let payload = match cost {
        Some(cost) => json!({ "output": output, "cost": cost }),
        None => json!({ "output": output }),
    };
    frame(CALL_RESPONDED, id, payload)
}

/// `call.completed`, with what the subscription cost.
pub fn completed_frame(id: &str, cost: &Receipt) -> Vec<u8> {
    frame(CALL_COMPLETED, id, json!({ "cost": cost }))
}

/// `call.error` with `error`.
pub fn error_frame(id: &str, error: &CallError) -> Vec<u8> {
    frame(
        CALL_ERROR,
        id,
        serde_json::to_value(error).unwrap_or_else(|_| json!({"code": "INTERNAL"})),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-zA-Z_]{0,8}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the bytes, parsing answers without panicking, and it
        /// blames an id only when the bytes are an object with a string id.
        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(BadEnvelope::Call { id, .. }) = parse(&bytes) {
                let value: Value = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(value["id"].as_str(), Some(id.as_str()));
            }
        }

        /// Envelope-shaped JSON with arbitrary fields parses or is refused
        /// for its own id, never for another.
        #[test]
        fn envelope_shaped_json_is_judged_by_its_id(
            id in ".{0,8}",
            kind in prop_oneof![Just(CALL_REQUESTED.to_owned()), Just(CALL_ABORTED.to_owned()), ".{0,16}"],
            payload in json_value(),
        ) {
            let bytes = serde_json::to_vec(&json!({"type": kind, "id": id, "payload": payload})).unwrap();
            match parse(&bytes) {
                Ok(Incoming::Call { id: got, .. } | Incoming::Abort { id: got }) => prop_assert_eq!(got, id),
                Err(BadEnvelope::Call { id: got, .. }) => prop_assert_eq!(got, id),
                Err(BadEnvelope::Frame(message)) => prop_assert!(false, "frame error {}", message),
                Ok(Incoming::Chunk { .. }) => prop_assert!(false, "JSON taken for a raw chunk"),
            }
        }

        /// Whatever follows a stream-type byte, a raw chunk parses or is
        /// refused without panicking, and what the host builds parses back.
        #[test]
        fn raw_chunks_parse_or_are_refused(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            id in "[a-z0-9]{0,12}",
            data in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = vec![RAW_STDIN];
            frame.extend_from_slice(&bytes);
            let _ = parse_chunk(&Bytes::from(frame));
            let built = Bytes::from(chunk_frame(&id, RAW_STDIN, &data));
            prop_assert!(is_chunk(&built));
            prop_assert_eq!(
                parse_chunk(&built),
                Ok(Incoming::Chunk { id, stream_type: RAW_STDIN, data: Bytes::from(data) })
            );
        }

        /// What the host builds, a client parses back as JSON with the same
        /// id and output.
        #[test]
        fn replies_round_trip(id in ".{0,8}", output in json_value()) {
            let frame: Value = serde_json::from_slice(&responded_frame(&id, &output, None)).unwrap();
            prop_assert_eq!(&frame["id"], &Value::from(id));
            prop_assert_eq!(&frame["payload"]["output"], &output);
        }
    }

    #[test]
    fn a_call_with_defaults() {
        let parsed =
            parse(br#"{"type":"call.requested","id":"1","payload":{"operationId":"echo/echo"}}"#);
        assert_eq!(
            parsed,
            Ok(Incoming::Call {
                id: "1".into(),
                payload: CallPayload {
                    operation_id: "echo/echo".into(),
                    input: Value::Null,
                    auth_token: None,
                    deadline_ms: None,
                    expect: None,
                    traceparent: None,
                    tracestate: None,
                    carriage: Carriage::Json,
                }
            })
        );
    }

    #[test]
    fn a_caller_sends_stdin_chunks_only() {
        let stdout = Bytes::from(chunk_frame("a", RAW_STDOUT, b"x"));
        assert!(matches!(parse_chunk(&stdout), Err(BadEnvelope::Call { id, .. }) if id == "a"));
        for short in [&[RAW_STDIN][..], &[RAW_STDIN, 3, b'a']] {
            let short = Bytes::copy_from_slice(short);
            assert!(matches!(parse_chunk(&short), Err(BadEnvelope::Frame(_))));
        }
        assert!(!is_chunk(br#"{"id":"a"}"#));
    }

    #[test]
    fn an_envelope_without_an_id_is_a_frame_error() {
        for bytes in [
            &b"\xff\xfe"[..],
            b"not json",
            b"[1,2]",
            br#"{"type":"call.requested"}"#,
            br#"{"type":"call.requested","id":7}"#,
        ] {
            assert!(
                matches!(parse(bytes), Err(BadEnvelope::Frame(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn an_envelope_with_an_id_is_answered_for_that_id() {
        for bytes in [
            &br#"{"id":"a"}"#[..],
            br#"{"id":"a","type":"call.responded","payload":{}}"#,
            br#"{"id":"a","type":"call.requested","payload":{"input":1}}"#,
            br#"{"id":"a","type":"call.requested","payload":{"operationId":"x/y","deadline_ms":-1}}"#,
            br#"{"id":"a","type":"call.requested","payload":{"operationId":"x/y","expect":"twice"}}"#,
            br#"{"id":"a","type":"call.aborted","extra":true}"#,
        ] {
            match parse(bytes) {
                Err(BadEnvelope::Call { id, .. }) => assert_eq!(id, "a"),
                other => panic!("{other:?} for {}", String::from_utf8_lossy(bytes)),
            }
        }
    }
}
