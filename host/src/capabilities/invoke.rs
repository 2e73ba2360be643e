//! `opbox:plugin/invoke`: a plugin calling other operations, through the
//! dispatcher, as its caller.

use wasmtime::component::{Accessor, HasSelf};

use crate::runtime::StoreState;
use crate::runtime::bindings::CallError;
use crate::runtime::bindings::opbox::plugin::invoke;

impl invoke::Host for StoreState {}

impl<T> invoke::HostWithStore<T> for HasSelf<StoreState> {
    async fn call(
        accessor: &Accessor<T, Self>,
        operation: String,
        input: String,
    ) -> Result<String, CallError> {
        let Some(nested) = accessor.with(|mut store| store.get().nested.clone()) else {
            return Err(CallError {
                code: "UNAVAILABLE".into(),
                message: "calls to other operations are not available here".into(),
                details: None,
            });
        };
        nested.call(operation, input).await.map_err(|e| CallError {
            code: e.code,
            message: e.message,
            details: e.details.map(|d| d.to_string()),
        })
    }
}
