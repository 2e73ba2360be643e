//! A caller's W3C trace context, as it arrives on the wire.

/// A caller's W3C trace context (`traceparent`, and `tracestate` if it
/// sent one), checked for shape: a malformed one is ignored, as the W3C
/// recommendation asks, and never reaches a log or an exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    traceparent: String,
    tracestate: Option<String>,
}

/// The longest `tracestate` kept: the W3C recommendation's 32 entries of
/// at most 256 bytes fit, a caller's junk does not grow past it.
const MAX_TRACESTATE: usize = 8192;

impl TraceParent {
    /// `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, not all zeros) and
    /// `tracestate` (printable ASCII, at most 8 KiB, else dropped), or
    /// `None` for a malformed `traceparent`.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let [version, trace_id, parent_id, flags] = parts[..] else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if version != "00"
            || !hex(trace_id, 32)
            || !hex(parent_id, 16)
            || !hex(flags, 2)
            || zero(trace_id)
            || zero(parent_id)
        {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
            .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(str::to_owned);
        Some(Self {
            traceparent: traceparent.trim().to_owned(),
            tracestate,
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if one was sent.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    #[test]
    fn only_well_formed_trace_contexts_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(good, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.tracestate(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad, None), None, "{bad}");
        }
        let junk = "x".repeat(9000);
        assert_eq!(
            TraceParent::parse(good, Some(&junk)).unwrap().tracestate(),
            None
        );
    }
}
