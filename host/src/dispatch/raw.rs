//! Byte-stream operations through the dispatcher: the same admission,
//! scopes, quotas, input validation, log line, metering and draining as a
//! subscription, with bytes in both directions after the arguments.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::nested::invocation;
use super::pipeline::{
    Admitted, Kind, NO_DEADLINE, Target, holding, until_retired, with_time_limit,
};
use super::remote::Reach;
use super::{Dispatcher, Handler, Metered, Outputs, failure};
use crate::call::{CallError, CallRequest, ErrorCode, Meter};
use crate::runtime::RawOutput;
use crate::telemetry::trace::CallSpan;

/// What a byte-stream operation sends back: its output, then its exit code;
/// or the error that ends it.
pub type RawOutputs = Outputs<RawOutput>;

/// The caller's bytes for a byte-stream operation; the end of the stream
/// closes the operation's stdin.
pub type RawInput = BoxStream<'static, Bytes>;

impl Dispatcher {
    /// Starts byte-stream operation `request.operation` with `request.input`
    /// as its arguments and `stdin` as the caller's bytes. Errors found
    /// before it starts (unknown operation, wrong kind, bad arguments, a
    /// guest that refuses) are returned here; later ones end the stream.
    pub async fn run_raw(
        &self,
        request: CallRequest,
        stdin: RawInput,
    ) -> Result<RawOutputs, CallError> {
        self.run_raw_metered(request, stdin).await.result
    }

    /// [`Dispatcher::run_raw`], with the meter of what the call spends
    /// (final once its stream has ended) and where its trace is.
    pub async fn run_raw_metered(
        &self,
        request: CallRequest,
        stdin: RawInput,
    ) -> Metered<RawOutputs> {
        let request = &request;
        self.stream_metered(request, |meter, span| async move {
            self.raw_inner(request, stdin, &meter, &span).await
        })
        .await
    }

    async fn raw_inner(
        &self,
        request: &CallRequest,
        stdin: RawInput,
        meter: &Arc<Meter>,
        span: &CallSpan,
    ) -> Result<RawOutputs, CallError> {
        // Byte streams are not forwarded across the cluster (yet): an
        // operation this host does not hold is refused, saying so.
        let Admitted {
            target,
            tenant,
            in_flight,
            admission,
        } = self.admit(request, Kind::Raw, Reach::Cluster)?;
        let op = match target {
            Target::Here(op) => op,
            Target::Remote(_) => {
                return Err(CallError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "`{}` is not held by this host, and byte streams are not forwarded across the cluster: call a host that holds it",
                        request.operation
                    ),
                ));
            }
        };
        let Handler::Plugin { plugin, op: name } = &op.handler else {
            return Err(CallError::internal());
        };
        let input = self.validate(&op, request.input.clone()).await?;
        let limit = self.subscription_limit(request);
        let held = vec![admission, Some(tenant.usage.instance()?)];
        let deadline = limit.unwrap_or(NO_DEADLINE);
        let cpu = Duration::from_millis(plugin.limits().cpu_ms);
        let invocation = invocation(self, request, deadline, cpu, meter, span);
        let counted = plugin.count_call();
        let input = input.to_string();
        meter.bytes_in(input.len());
        let metered_in = meter.clone();
        let stdin = stdin
            .inspect(move |chunk| metered_in.bytes_in(chunk.len()))
            .boxed();
        let outputs = plugin
            .run_raw(&invocation, name, input, stdin)
            .await
            .map_err(|e| failure::from_invoke(e, plugin, name))?;
        counted.succeeded();
        let ending = plugin.ending();
        let (plugin, name, meter) = (plugin.clone(), name.clone(), meter.clone());
        let outputs = outputs
            .map(move |output| match output {
                Ok(output) => {
                    if let RawOutput::Stdout(bytes) | RawOutput::Stderr(bytes) = &output {
                        meter.bytes_out(bytes.len());
                    }
                    Ok(output)
                }
                Err(e) => Err(failure::from_invoke(e, &plugin, &name)),
            })
            .boxed();
        let outputs = until_retired(outputs, ending);
        let outputs = match limit {
            Some(limit) => with_time_limit(outputs, limit),
            None => outputs,
        };
        let outputs = holding(outputs, held);
        Ok(self.inner.drain.until_drained(outputs, in_flight))
    }
}
