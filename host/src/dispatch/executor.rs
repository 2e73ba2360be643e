//! The executor calls run on, apart from the one that serves connections.
//!
//! Tokio's executor is cooperative, and a call's poll can run long (a
//! guest runs up to an epoch tick between yields; the host lifts a large
//! answer in one go). Measured on two cores (`docs/security.md`, the
//! soak), while one worker ran such a poll, the other slept with nobody
//! watching the sockets: a quiet tenant's request sat unread until the
//! poll ended. So a tenant's calls of an operation whose polls run long
//! (`Share::runs_long`) run on workers of their own, and the workers that
//! accept connections and read requests are left to short polls: a request
//! is read as soon as it arrives. Other calls run where they are asked
//! for, without the hop between threads (two wake-ups, which on an idle
//! machine cost more than a short call).

use std::cell::Cell;
use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio_util::task::AbortOnDropHandle;

use crate::call::CallError;

thread_local! {
    /// Whether this thread is a worker of a call executor.
    static CALL_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The call workers of one host.
#[derive(Debug)]
pub(crate) struct CallExecutor {
    runtime: Option<Runtime>,
}

impl CallExecutor {
    /// `workers` threads (one at least) to run calls on.
    pub(crate) fn start(workers: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("opbox-call")
            .on_thread_start(|| CALL_WORKER.set(true))
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `call` on the call workers and waits for its answer; dropping
    /// the wait cancels the call. A call already on a call worker (a
    /// nested one) runs where it is.
    pub(crate) async fn run<F, T>(&self, call: F) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, CallError>> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = match &self.runtime {
            Some(runtime) if !CALL_WORKER.get() => runtime,
            _ => return call.await,
        };
        match AbortOnDropHandle::new(runtime.spawn(call)).await {
            Ok(answer) => answer,
            Err(failed) => {
                tracing::error!("a call's task ended without an answer: {failed}");
                Err(CallError::internal())
            }
        }
    }

    /// Starts `task` on the call workers.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

impl Drop for CallExecutor {
    fn drop(&mut self) {
        // The host may be dropped on an async task, where waiting for the
        // workers to stop is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_runs_on_a_call_worker_and_a_nested_one_where_it_is() {
        let calls = std::sync::Arc::new(CallExecutor::start(1).unwrap());
        let nested = calls.clone();
        let (outer, inner) = calls
            .run(async move {
                let outer = std::thread::current().name().map(str::to_owned);
                let inner = nested
                    .run(async { Ok(std::thread::current().name().map(str::to_owned)) })
                    .await?;
                Ok((outer, inner))
            })
            .await
            .unwrap();
        assert_eq!(outer.as_deref(), Some("opbox-call"));
        assert_eq!(inner, outer);
    }

    #[tokio::test]
    async fn dropping_the_wait_cancels_the_call() {
        let calls = CallExecutor::start(1).unwrap();
        let (dropped, on_drop) = tokio::sync::oneshot::channel::<()>();
        let call = calls.run(async move {
            let _dropped = dropped;
            std::future::pending::<Result<(), CallError>>().await
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), call).await;
        assert!(waited.is_err());
        // The call's task was aborted: what it held is gone.
        assert!(on_drop.await.is_err());
    }
}
