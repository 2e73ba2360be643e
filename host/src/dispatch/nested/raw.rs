//! Byte-stream operations a plugin starts from inside a call
//! (`invoke.run`): on the same terms as its other nested calls, with its
//! stdin handed on as it writes it and the operation's stdout and stderr
//! pulled only as it reads them.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;

use super::{Nested, RollUp, cpu_left, guest_error, parse_input};
use crate::call::{CallError, CallRequest};
use crate::capabilities::invoke::{GuestError, NestedRaw};
use crate::runtime::RawOutput;

impl Nested {
    /// Starts byte-stream `operation` on a task of its own, which hands its
    /// stdout and stderr to the guest a chunk at a time. The task ends, and
    /// the operation with it, once the guest has dropped stdout, stderr and
    /// the status; an output the guest dropped alone is thrown away, so the
    /// operation is not held back by it.
    pub(super) fn run_raw(
        &self,
        operation: String,
        input: String,
        stdin: BoxStream<'static, Bytes>,
    ) -> BoxFuture<'static, Result<NestedRaw, GuestError>> {
        let open = match self.admit(&input) {
            Ok(open) => open,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let tenant = &self.identity.tenant;
        let (dispatcher, request) = (self.dispatcher.clone(), self.request(operation.clone()));
        let (parent, cpu) = (self.meter.clone(), self.cpu);
        let (started, started_rx) = tokio::sync::oneshot::channel();
        let (stdout, stdout_rx) = mpsc::channel::<Bytes>(1);
        let (stderr, stderr_rx) = mpsc::channel::<Bytes>(1);
        let (status, status_rx) = tokio::sync::oneshot::channel::<Result<u8, CallError>>();
        let task = self
            .dispatcher
            .spawn_on_share(tenant, &operation, async move {
                let _open = open;
                let input = cpu_left(&parent, cpu).and_then(|_| parse_input(&input));
                let (ran, _roll_up) = match input {
                    Ok(input) => {
                        let ran = dispatcher
                            .run_raw_metered(CallRequest { input, ..request }, stdin)
                            .await;
                        let meter = ran.meter;
                        (ran.result, Some(RollUp { meter, parent }))
                    }
                    Err(e) => (Err(e), None),
                };
                let mut outputs = match ran {
                    Ok(outputs) => {
                        let _ = started.send(Ok(()));
                        outputs
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let (mut stdout, mut stderr) = (Some(stdout), Some(stderr));
                while let Some(output) = outputs.next().await {
                    let (to, bytes) = match output {
                        Ok(RawOutput::Stdout(bytes)) => (&mut stdout, bytes),
                        Ok(RawOutput::Stderr(bytes)) => (&mut stderr, bytes),
                        Ok(RawOutput::Exit(code)) => {
                            let _ = status.send(Ok(code));
                            return;
                        }
                        Err(e) => {
                            let _ = status.send(Err(e));
                            return;
                        }
                    };
                    if let Some(sender) = to
                        && sender.send(bytes).await.is_err()
                    {
                        *to = None;
                    }
                }
            });
        async move {
            started_rx
                .await
                .unwrap_or_else(|_| Err(CallError::internal()))
                .map_err(guest_error)?;
            // Each of the three owns the task: once the guest has dropped
            // them all, the operation stops.
            let task = Arc::new(task);
            let held = task.clone();
            let stdout = tokio_stream::wrappers::ReceiverStream::new(stdout_rx)
                .map(move |bytes| {
                    let _task = &held;
                    bytes
                })
                .boxed();
            let held = task.clone();
            let stderr = tokio_stream::wrappers::ReceiverStream::new(stderr_rx)
                .map(move |bytes| {
                    let _task = &held;
                    bytes
                })
                .boxed();
            let status = async move {
                let _task = task;
                status_rx
                    .await
                    .unwrap_or_else(|_| Err(CallError::internal()))
                    .map_err(guest_error)
            }
            .boxed();
            Ok(NestedRaw {
                stdout,
                stderr,
                status,
            })
        }
        .boxed()
    }
}
