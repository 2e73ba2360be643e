//! The types every layer passes around: a call, its caller, an operation's
//! spec, the error a caller sees and the events the host reports. The bottom of the host: it uses no
//! other module of the crate, and knows nothing of tasks, wasmtime or axum.

mod attachment;
mod cost;
mod error;
mod event;
mod request;
mod spec;
mod trace;

pub use attachment::{Attachment, AttachmentError};
pub use cost::{HostCall, HostCalls, Meter, Receipt};
pub(crate) use error::cut;
pub use error::{CallError, ErrorCode};
pub use event::{
    Event, Fanout, Finished, Happening, Observer, OpenConnection, SharedObserver, StoredEvent,
    Unobserved, Version,
};
pub use request::{
    CallRequest, Identity, MAX_DEADLINE_MS, NO_TIME, Origin, TOO_LONG, Transport, new_request_id,
    whole_millis,
};
pub use spec::{
    AccessControl, MAX_SEGMENT_BYTES, OpType, OperationSpec, Visibility, is_valid_name,
    is_valid_segment,
};
pub use trace::TraceParent;
