//! The last log lines of a plugin version, kept for its operator and its
//! tenants to read (`admin/logs`): at most [`MAX_LINES`] lines and
//! [`MAX_BYTES`] of messages, the oldest dropped first. And the plugin
//! version's share of the host's own log: at most
//! [`HOST_LOG_LINES_PER_SECOND`] of its lines a second reach it.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Lines of one plugin version the host's log takes a second (as many at
/// once). Writing the host's log costs the host a thread and its output
/// whatever the line; past this, lines stay in the tail and the call's
/// trace, and the host's log says how many it skipped.
pub const HOST_LOG_LINES_PER_SECOND: u32 = 1_000;

/// Lines a tail keeps at most.
pub const MAX_LINES: usize = 256;

/// Bytes of messages a tail keeps at most.
pub const MAX_BYTES: usize = 64 << 10;

/// One line, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailLine {
    /// Its place among the plugin version's lines, from 1.
    pub seq: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The call that wrote it.
    pub request_id: Arc<str>,
    /// The tenant the call ran for.
    pub tenant: Arc<str>,
    /// `trace`, `debug`, `info`, `warn`, `error` or `fatal`.
    pub level: &'static str,
    /// `stdout` or `stderr` for a line the guest printed; `None` for one
    /// of the log interface.
    pub stream: Option<&'static str>,
    /// What it said (at most 4 KiB).
    pub message: String,
}

#[derive(Debug, Default)]
struct Lines {
    kept: VecDeque<TailLine>,
    bytes: usize,
    last: u64,
}

impl Lines {
    /// Drops the oldest lines until the tail is within its bounds.
    fn trim(&mut self) {
        while self.kept.len() > MAX_LINES || self.bytes > MAX_BYTES {
            let Some(oldest) = self.kept.pop_front() else {
                break;
            };
            self.bytes -= oldest.message.len();
        }
    }
}

/// A plugin version's last log lines.
#[derive(Debug)]
pub struct LogTail {
    lines: Mutex<Lines>,
    /// The version's rate of lines into the host's log.
    host_log: DefaultDirectRateLimiter,
    /// Lines kept out of the host's log since it last took one.
    skipped: AtomicU64,
}

impl Default for LogTail {
    fn default() -> Self {
        let rate = NonZeroU32::new(HOST_LOG_LINES_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Self {
            lines: Mutex::default(),
            host_log: RateLimiter::direct(Quota::per_second(rate)),
            skipped: AtomicU64::new(0),
        }
    }
}

impl LogTail {
    /// Whether the host's log takes one more line of this version now:
    /// `Some` with the lines it skipped before this one, or `None`.
    pub(super) fn to_host_log(&self) -> Option<u64> {
        if self.host_log.check().is_ok() {
            Some(self.skipped.swap(0, Ordering::Relaxed))
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    pub(super) fn push(
        &self,
        request_id: &Arc<str>,
        tenant: &Arc<str>,
        level: &'static str,
        stream: Option<&'static str>,
        message: &str,
    ) {
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.last += 1;
        let seq = lines.last;
        lines.bytes += message.len();
        lines.kept.push_back(TailLine {
            seq,
            at_ms,
            request_id: request_id.clone(),
            tenant: tenant.clone(),
            level,
            stream,
            message: message.to_owned(),
        });
        lines.trim();
    }

    /// Makes this tail (a new version's) go on from `earlier` (the version
    /// it replaces): `earlier`'s lines come first, and this one's are
    /// counted after them, so a reader asking for the lines after the last
    /// it read misses none and is not sent back to the start. Lines the
    /// old version writes from now on stay in its own tail.
    pub fn continue_from(&self, earlier: &LogTail) {
        let before = earlier.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let own = std::mem::take(&mut lines.kept);
        lines.kept = before.kept.clone();
        lines.bytes = before.bytes;
        lines.last = before.last;
        for mut line in own {
            lines.last += 1;
            line.seq = lines.last;
            lines.bytes += line.message.len();
            lines.kept.push_back(line);
        }
        lines.trim();
    }

    /// Up to `limit` lines after `after`, of calls of `tenant` only when
    /// one is named; and the last line's `seq`, to ask from next.
    pub fn after(&self, after: u64, limit: usize, tenant: Option<&str>) -> (Vec<TailLine>, u64) {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let found = lines
            .kept
            .iter()
            .filter(|line| line.seq > after)
            .filter(|line| tenant.is_none_or(|t| &*line.tenant == t))
            .take(limit)
            .cloned()
            .collect::<Vec<_>>();
        let next = found.last().map_or(after.max(lines.last), |line| line.seq);
        (found, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_newest_lines_within_its_bounds() {
        let tail = LogTail::default();
        let (id, acme, globex): (Arc<str>, Arc<str>, Arc<str>) =
            (Arc::from("r1"), Arc::from("acme"), Arc::from("globex"));
        for n in 0..MAX_LINES + 10 {
            let tenant = if n % 2 == 0 { &acme } else { &globex };
            tail.push(&id, tenant, "info", None, &format!("line {n}"));
        }
        let (all, next) = tail.after(0, usize::MAX, None);
        assert_eq!(all.len(), MAX_LINES);
        assert_eq!(all[0].message, "line 10");
        assert_eq!(next, (MAX_LINES + 10) as u64);
        let (mine, _) = tail.after(0, usize::MAX, Some("acme"));
        assert!(mine.iter().all(|l| &*l.tenant == "acme"));
        // Long lines: the byte bound holds too.
        let long = "x".repeat(4096);
        for _ in 0..100 {
            tail.push(&id, &acme, "warn", None, &long);
        }
        let (kept, _) = tail.after(0, usize::MAX, None);
        let bytes: usize = kept.iter().map(|l| l.message.len()).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert_eq!(kept.len(), MAX_BYTES / 4096);
    }

    #[test]
    fn the_host_log_takes_a_plugins_lines_at_its_rate() {
        let tail = LogTail::default();
        let burst = HOST_LOG_LINES_PER_SECOND as usize;
        let taken = (0..burst * 3)
            .filter(|_| tail.to_host_log().is_some())
            .count();
        // A second's worth at once (and whatever refilled while counting).
        assert!((burst..burst + burst / 10).contains(&taken), "{taken}");
        // The next line taken says how many were skipped before it.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let skipped = tail.to_host_log().expect("refilled");
        assert_eq!(skipped as usize, burst * 3 - taken);
        assert_eq!(tail.to_host_log(), Some(0), "nothing skipped since");
    }
}
