//! `opbox:plugin/log`: guest log lines, attributed to plugin, request and
//! tenant.
//! Always granted; each line is cut at 4 KiB and each call may write
//! `log_lines` of them, `fatal` included (the rest are counted, and reported
//! once).

use crate::error::cut;
use crate::runtime::StoreState;
use crate::runtime::bindings::Level;
use crate::runtime::bindings::opbox::plugin::{log, types};

/// The longest log line kept; the rest is cut so one call cannot flood the log.
const MAX_LINE: usize = 4096;

impl log::Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_lines_left == 0 {
            self.log_lines_dropped += 1;
            return;
        }
        self.log_lines_left -= 1;
        let message = cut(&message, MAX_LINE);
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
        if self.log_lines_left == 0 {
            self.log_lines_dropped += 1;
            return;
        }
        self.log_lines_left -= 1;
        tracing::error!(
            plugin = &*self.plugin,
            request_id = &*self.request_id,
            tenant = &*self.tenant,
            "guest fatal: {message}"
        );
    }
}

impl types::Host for StoreState {}
