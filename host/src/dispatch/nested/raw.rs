//! Byte-stream operations a plugin starts from inside a call
//! (`invoke.run`): on the same terms as its other nested calls, with its
//! stdin handed on as it writes it and the operation's stdout and stderr
//! pulled only as it reads them.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{Nested, guest_error};
use crate::call::CallError;
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
        let (stdout, stdout_rx) = mpsc::channel::<Bytes>(1);
        let (stderr, stderr_rx) = mpsc::channel::<Bytes>(1);
        let (status, status_rx) = oneshot::channel::<Result<u8, CallError>>();
        let started =
            self.spawn_stream(
                operation,
                input,
                move |dispatcher, request| async move {
                    dispatcher.run_raw_metered(request, stdin).await
                },
                move |mut outputs| async move {
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
                },
            );
        async move {
            // Each of the three owns the task: once the guest has dropped
            // them all, the operation stops.
            let task = Arc::new(started.await?);
            let output = |rx| {
                let task = task.clone();
                ReceiverStream::new(rx)
                    .map(move |bytes| {
                        let _task = &task;
                        bytes
                    })
                    .boxed()
            };
            let (stdout, stderr) = (output(stdout_rx), output(stderr_rx));
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
