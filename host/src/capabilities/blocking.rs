//! `opbox:plugin/blocking`: `invoke.call` and `outbound.send` as plain
//! functions, for guests whose toolchain cannot import an `async func`
//! (QuickJS, through jco). To the guest they block; to the host they are
//! the same async work as their async twins, on the same dispatcher and
//! under the same grants, while the guest's task waits.

use wasmtime::component::{Access, HasSelf, Linker};

use super::CallState;
use super::bindings::CallError;
use super::bindings::opbox::plugin::{blocking, outbound};

/// The largest response body `fetch` gathers, whatever the grant allows:
/// the host holds it whole before the guest gets it.
pub const MAX_FETCH_BYTES: usize = 16 << 20;

pub(super) fn add_to_linker<T: super::View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn state<T: super::View>(store: &mut T) -> &mut CallState {
        store.capabilities().0
    }
    blocking::add_to_linker::<T, HasSelf<CallState>>(linker, state)
}

impl blocking::Host for CallState {}

// The store is read before the work starts and not held across it: the
// guest, blocked in this call, could not use it meanwhile anyway.
impl<T> blocking::HostWithStore<T> for HasSelf<CallState> {
    fn call(
        mut access: Access<'_, T, Self>,
        operation: String,
        input: String,
    ) -> impl Future<Output = Result<String, CallError>> + Send {
        let nested = access.get().invoke.nested();
        async move {
            let nested = nested.ok_or_else(super::invoke::unavailable)?;
            nested
                .call(operation, input)
                .await
                .map_err(super::invoke::to_wit)
        }
    }

    fn fetch(
        mut access: Access<'_, T, Self>,
        head: blocking::Request,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(blocking::Response, Vec<u8>), CallError>> + Send {
        let head = outbound::Request {
            method: head.method,
            url: head.url,
            headers: head.headers,
        };
        let sending = access.get().http.send_whole(head, body);
        async move {
            let (head, body) = super::http::gather(sending?, MAX_FETCH_BYTES).await?;
            let head = blocking::Response {
                status: head.status,
                headers: head.headers,
            };
            Ok((head, body))
        }
    }
}
