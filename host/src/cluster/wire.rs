//! What hosts of one cluster send each other over NATS, and on which
//! subjects.
//!
//! | subject | sent by | payload |
//! |---|---|---|
//! | `opbox.<cluster>.call.<tenant>.<operation>` | a host forwarding a call, with a reply inbox | [`Forward`] |
//! | the reply inbox | the host running it | [`Reply`]s: `alive` every heartbeat, then `output` or `error`; a subscription's `started`, `items`, then `completed` or `error`; a question's `kind` |
//! | a subscription's control inbox | the forwarding host, as its caller takes items | [`Credit`]: how many more items, and bytes of them, may come (`flow.rs`) |
//! | `opbox.<cluster>.abort` | the forwarding host, when its caller leaves | the reply inbox, naming the call |
//!
//! Every host holding an operation subscribes to its call subject in a
//! queue group named after the subject, so NATS hands each call to one of
//! them; a call nobody holds gets NATS's "no responders" at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::{
    CallError, CallRequest, Identity, OpType, Origin, Receipt, TraceParent, Transport,
};

/// `text` as one subject token: ASCII letters, digits, `-` and `_` stay;
/// every other byte (`.`, `*`, `>`, `/`, `%`, spaces, …) becomes `%XX`, so
/// no tenant or operation name can add a token or a wildcard, and two
/// names never share a token.
pub(super) fn token(text: &str) -> String {
    escape(text, '%')
}

/// `text` with every byte but ASCII letters, digits, `-` and `_` written as
/// `marker` and two hex digits; `marker` alone for empty text, as neither a
/// subject token nor a key may be empty.
pub(super) fn escape(text: &str, marker: char) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push(marker);
            out.push_str(&format!("{byte:02X}"));
        }
    }
    if out.is_empty() {
        out.push(marker);
    }
    out
}

/// The text [`escape`] wrote as `token` with `marker`; `None` for a token it
/// cannot have written.
pub(super) fn unescape(token: &str, marker: char) -> Option<String> {
    let marker = u8::try_from(marker).ok()?;
    if token.as_bytes() == [marker] {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == marker {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The longest call subject a host subscribes to or publishes on. NATS
/// servers take protocol lines of 4 KiB by default and drop a client that
/// sends a longer one: a caller's long operation name must not cost the
/// host its connection.
pub(super) const MAX_SUBJECT: usize = 1024;

/// The subjects of one cluster.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    /// `opbox.<cluster>`.
    prefix: String,
}

impl Subjects {
    pub(super) fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("opbox.{}", token(cluster)),
        }
    }

    /// Where calls of `operation` by callers of `tenant` go; `None` when
    /// that subject would be longer than [`MAX_SUBJECT`]: no host serves
    /// such a name, and no caller's name is sent on one.
    pub(super) fn call(&self, tenant: &str, operation: &str) -> Option<String> {
        let subject = format!(
            "{}.call.{}.{}",
            self.prefix,
            token(tenant),
            token(operation)
        );
        (subject.len() <= MAX_SUBJECT).then_some(subject)
    }

    /// Where `host` publishes its events; every host's, for `None`.
    pub(super) fn events(&self, host: Option<&str>) -> String {
        match host {
            Some(host) => format!("{}.events.{}", self.prefix, token(host)),
            None => format!("{}.events.*", self.prefix),
        }
    }

    /// Where a forwarding host says it gave a call up.
    pub(super) fn abort(&self) -> String {
        format!("{}.abort", self.prefix)
    }
}

/// What a forwarded request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Ask {
    /// Run a query or mutation.
    Call,
    /// Start a subscription, sending up to `credit` items (and
    /// `credit_bytes` of their JSON) before more are granted.
    Subscribe {
        /// Items the forwarding host will take before it grants more.
        credit: u32,
        /// Bytes of items it will take; none from a host that counts
        /// items only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credit_bytes: Option<u64>,
    },
    /// Say what kind the operation is, as its caller sees it.
    Kind,
}

/// A call forwarded to the hosts holding its operation.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Forward {
    /// What is asked.
    pub(super) ask: Ask,
    /// The caller's request id, kept across hosts for logs.
    pub(super) request_id: String,
    /// `namespace/op`.
    pub(super) operation: String,
    /// The input.
    pub(super) input: Value,
    /// What is left of the call's deadline, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) deadline_ms: Option<u64>,
    /// The caller, as the forwarding host authenticated it.
    pub(super) identity: WireIdentity,
    /// 0 for a caller's call; how many calls down otherwise.
    pub(super) depth: u32,
    /// The forwarding call's span, for the running host's to join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) traceparent: Option<String>,
    /// Its `tracestate`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tracestate: Option<String>,
}

/// An [`Identity`] as it crosses hosts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireIdentity {
    pub(super) id: Option<String>,
    pub(super) tenant: String,
    pub(super) scopes: Vec<String>,
}

impl Forward {
    /// `request`, with `deadline` left (none: the running host's own
    /// limits apply).
    pub(super) fn new(ask: Ask, request: CallRequest, deadline: Option<Duration>) -> Self {
        let Identity { id, tenant, scopes } = request.identity;
        Self {
            ask,
            request_id: request.request_id.to_string(),
            operation: request.operation,
            input: request.input,
            deadline_ms: deadline.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            identity: WireIdentity { id, tenant, scopes },
            depth: request.origin.depth(),
            traceparent: request.trace.as_ref().map(|t| t.traceparent().to_owned()),
            tracestate: request
                .trace
                .as_ref()
                .and_then(|t| t.tracestate().map(str::to_owned)),
        }
    }

    /// The call, as the running host's dispatcher takes it: from the wire
    /// (by way of the cluster) or nested, as it was on the forwarding host.
    pub(super) fn into_request(self) -> CallRequest {
        let WireIdentity { id, tenant, scopes } = self.identity;
        CallRequest {
            request_id: self.request_id.into(),
            operation: self.operation,
            input: self.input,
            deadline: self.deadline_ms.map(Duration::from_millis),
            identity: Identity { id, tenant, scopes },
            origin: match self.depth {
                0 => Origin::Wire(Transport::Cluster),
                depth => Origin::Nested { depth },
            },
            trace: self
                .traceparent
                .as_deref()
                .and_then(|parent| TraceParent::parse(parent, self.tracestate.as_deref())),
            attachment: None,
        }
    }
}

/// What the running host sends to a forwarded call's reply inbox.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Reply {
    /// The call is running: sent by hosts of earlier versions, and
    /// ignored (a heartbeat says as much).
    Accepted,
    /// Still running: sent every heartbeat, so the forwarding host can
    /// tell a slow call from a host that is gone.
    Alive,
    /// The operation's kind, for [`Ask::Kind`].
    Kind {
        /// Query, mutation or subscription.
        op_type: OpType,
    },
    /// The subscription started; grant credit on `control`.
    Started {
        /// The running host's inbox for [`Credit`]s.
        control: String,
    },
    /// Outputs of a subscription, in order: those ready at once go
    /// together.
    Items {
        /// The outputs.
        outputs: Vec<Value>,
    },
    /// The subscription ended.
    Completed {
        /// What it cost on the running host.
        cost: Receipt,
    },
    /// The answer.
    Output {
        /// The output.
        output: Value,
        /// What the call cost on the running host.
        cost: Receipt,
    },
    /// The call failed.
    Error {
        /// The error, as the caller sees it.
        error: CallError,
        /// What the call cost on the running host.
        cost: Receipt,
    },
}

/// More items a subscription's forwarding host will take.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Credit {
    /// How many.
    pub(super) items: u32,
    /// How many bytes of their JSON; none from a host that counts items
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_tokens_that_cannot_collide_or_match_wildcards() {
        assert_eq!(token("echo/echo"), "echo%2Fecho");
        assert_eq!(token("a.b"), "a%2Eb");
        assert_eq!(token("*"), "%2A");
        assert_eq!(token(">"), "%3E");
        assert_eq!(token("a%2Eb"), "a%252Eb");
        assert_eq!(token("tenant-1_x"), "tenant-1_x");
        assert_eq!(token(""), "%");
        assert_eq!(token("ü"), "%C3%BC");
        let subjects = Subjects::new("prod.eu");
        assert_eq!(
            subjects.call("acme", "text/upper").unwrap(),
            "opbox.prod%2Eeu.call.acme.text%2Fupper"
        );
        let long = format!("text/{}", "x".repeat(MAX_SUBJECT));
        assert_eq!(subjects.call("acme", &long), None);
        assert_eq!(subjects.abort(), "opbox.prod%2Eeu.abort");
    }

    #[test]
    fn a_forwarded_call_keeps_its_caller_depth_and_trace() {
        let mut request = CallRequest::new("echo/echo", serde_json::json!({"x": 1}));
        request.identity = Identity {
            id: Some("ci".into()),
            tenant: "acme".into(),
            scopes: vec!["text:read".into()],
        };
        request.origin = Origin::Nested { depth: 2 };
        request.trace = TraceParent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("k=v"),
        );
        let forward = Forward::new(
            Ask::Call,
            request.clone(),
            Some(Duration::from_millis(1500)),
        );
        let sent = serde_json::to_vec(&forward).unwrap();
        let got = serde_json::from_slice::<Forward>(&sent)
            .unwrap()
            .into_request();
        assert_eq!(got.identity, request.identity);
        assert_eq!(got.origin, Origin::Nested { depth: 2 });
        assert_eq!(got.deadline, Some(Duration::from_millis(1500)));
        assert_eq!(got.trace, request.trace);
        assert_eq!(got.input, request.input);
        assert_eq!(&*got.request_id, &*request.request_id);

        request.origin = Origin::Wire(Transport::Http);
        let ask = Ask::Subscribe {
            credit: 8,
            credit_bytes: Some(1024),
        };
        let forward = Forward::new(ask, request, None);
        let sent = serde_json::to_vec(&forward).unwrap();
        let got = serde_json::from_slice::<Forward>(&sent).unwrap();
        assert_eq!(got.ask, ask);
        let got = got.into_request();
        assert_eq!(got.origin, Origin::Wire(Transport::Cluster));
        assert_eq!(got.deadline, None);
    }
}
