//! `opbox:plugin/log`: guest log lines, attributed to plugin, request and
//! tenant.
//! Always granted; each line is cut at 4 KiB and each call may write
//! `log_lines` of them, `fatal` included, and the lines it printed on
//! stdout and stderr too (the rest are counted, and reported once). The
//! host's own log takes a plugin version's lines at a bounded rate; the
//! plugin's tail (`admin/logs`) and the call's trace take them all.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::bindings::Level;
use super::bindings::opbox::plugin::{log, types};
use super::log_tail::{HOST_LOG_LINES_PER_SECOND, LogTail};
use crate::call::cut;
use crate::telemetry::trace::CallSpan;

/// The longest log line kept; the rest is cut so one call cannot flood the log.
const MAX_LINE: usize = 4096;

/// The log of one call: whom its lines are attributed to, how many it may
/// still write, and the last thing it said before it failed.
#[derive(Debug)]
pub struct LogState {
    plugin: Arc<str>,
    /// The plugin version's tail, for its operator and tenants.
    tail: Arc<LogTail>,
    request_id: Arc<str>,
    tenant: Arc<str>,
    /// The call's span: each line is one of its events.
    span: CallSpan,
    lines_left: u32,
    /// Lines written past the limit, and so dropped.
    pub(crate) dropped: u64,
    /// The last message the guest reported through `log.fatal`.
    pub(crate) fatal: Option<String>,
}

impl LogState {
    pub(super) fn new(
        plugin: Arc<str>,
        tail: Arc<LogTail>,
        request_id: Arc<str>,
        tenant: Arc<str>,
        span: CallSpan,
        lines: u32,
    ) -> Self {
        Self {
            plugin,
            tail,
            request_id,
            tenant,
            span,
            lines_left: lines,
            dropped: 0,
            fatal: None,
        }
    }

    /// Whether this line goes to the host's log too; says first how many
    /// lines of the plugin it skipped.
    fn to_host_log(&self) -> bool {
        match self.tail.to_host_log() {
            None => false,
            Some(0) => true,
            Some(skipped) => {
                tracing::warn!(
                    plugin = &*self.plugin,
                    skipped,
                    "guest log lines kept out of the host's log (past {HOST_LOG_LINES_PER_SECOND} a second; they are in the plugin's tail)"
                );
                true
            }
        }
    }

    /// What the guest printed on `stream` (`stdout` or `stderr`), line by
    /// line, as `info` lines of the log: each counts against `log_lines`,
    /// is cut at 4 KiB, goes to the tail and the trace, and to the host's
    /// log at the plugin's rate, like any other line.
    pub(crate) fn printed(&mut self, stream: &'static str, text: &str) {
        for line in text.lines().filter(|line| !line.is_empty()) {
            if !self.take_line() {
                continue;
            }
            let line = cut(line, MAX_LINE);
            if self.keep("info", Some(stream), line) {
                let (plugin, request_id, tenant) =
                    (&*self.plugin, &*self.request_id, &*self.tenant);
                tracing::info!(plugin, request_id, tenant, stream, "{line}");
            }
        }
    }

    /// Puts a line in the tail and the trace; whether the host's log takes
    /// it too.
    fn keep(&mut self, level: &'static str, stream: Option<&'static str>, line: &str) -> bool {
        self.tail
            .push(&self.request_id, &self.tenant, level, stream, line);
        self.span.log(level, line);
        self.to_host_log()
    }

    /// Takes one line of the allowance; `false` once it is spent.
    fn take_line(&mut self) -> bool {
        if self.lines_left == 0 {
            self.dropped += 1;
            return false;
        }
        self.lines_left -= 1;
        true
    }
}

impl log::Host for LogState {
    fn log(&mut self, level: Level, message: String) {
        if !self.take_line() {
            return;
        }
        let message = cut(&message, MAX_LINE);
        let name = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        if !self.keep(name, None, message) {
            return;
        }
        let (plugin, request_id, tenant) = (&*self.plugin, &*self.request_id, &*self.tenant);
        match level {
            Level::Trace => tracing::trace!(plugin, request_id, tenant, "{message}"),
            Level::Debug => tracing::debug!(plugin, request_id, tenant, "{message}"),
            Level::Info => tracing::info!(plugin, request_id, tenant, "{message}"),
            Level::Warn => tracing::warn!(plugin, request_id, tenant, "{message}"),
            Level::Error => tracing::error!(plugin, request_id, tenant, "{message}"),
        }
    }

    /// Counts against `log_lines` like any line; the last message is kept
    /// either way, as the panic message of a call that traps.
    fn fatal(&mut self, message: String) {
        let message = cut(&message, MAX_LINE);
        self.fatal = Some(message.to_owned());
        if !self.take_line() {
            return;
        }
        if !self.keep("fatal", None, message) {
            return;
        }
        tracing::error!(
            plugin = &*self.plugin,
            request_id = &*self.request_id,
            tenant = &*self.tenant,
            "guest fatal: {message}"
        );
    }
}

impl types::Host for LogState {}

pub(super) fn add_to_linker<T: super::View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn state<T: super::View>(store: &mut T) -> &mut LogState {
        &mut store.capabilities().0.log
    }
    types::add_to_linker::<T, HasSelf<LogState>>(linker, state)?;
    log::add_to_linker::<T, HasSelf<LogState>>(linker, state)
}
