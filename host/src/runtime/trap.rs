//! What a failed guest call was: a limit, a trap with the guest's last words,
//! or a host failure.

use wasmtime::{Store, Trap};

use super::StoreState;
use super::invoke::InvokeError;
use super::limits::LimitHit;

/// Turns a wasmtime error into what the caller should hear: a limit that was
/// hit, or a trap with the guest's last words.
pub(super) fn classify(store: &mut Store<StoreState>, error: wasmtime::Error) -> InvokeError {
    let state = store.data_mut();
    if let Some(hit) = state.limiter.hit {
        return InvokeError::Limit(hit);
    }
    let Some(trap) = error.downcast_ref::<Trap>().copied() else {
        return InvokeError::Host(format!("{error:#}"));
    };
    if let (Trap::OutOfFuel, Some(fuel)) = (trap, state.limiter.fuel) {
        return InvokeError::Limit(LimitHit::new("fuel", fuel));
    }
    let stderr = state.stderr_text();
    let message = state
        .capabilities
        .take_fatal()
        .or_else(|| panic_from_stderr(&stderr));
    InvokeError::Trap {
        kind: trap_kind(trap).to_owned(),
        message,
        stderr: stderr_tail(&stderr),
    }
}

/// The most of a guest's stderr a failure carries.
pub(crate) const MAX_STDERR_TAIL: usize = 4096;

/// The last whole lines of `stderr`, at most [`MAX_STDERR_TAIL`] bytes: what
/// a guest that is not built with the SDK (a Python traceback, a JS stack)
/// said before it trapped. `None` when it said nothing.
fn stderr_tail(stderr: &str) -> Option<String> {
    let stderr = stderr.trim_end();
    if stderr.trim().is_empty() {
        return None;
    }
    if stderr.len() <= MAX_STDERR_TAIL {
        return Some(stderr.to_owned());
    }
    let mut start = stderr.len() - MAX_STDERR_TAIL;
    while !stderr.is_char_boundary(start) {
        start += 1;
    }
    let window = &stderr[start..];
    // Whole lines only, unless one line is longer than the whole tail.
    let window = window
        .split_once('\n')
        .map_or(window, |(_, rest)| rest)
        .trim_start_matches('\n');
    Some(window.to_owned())
}

/// A guest that did not report its panic through `log.fatal` (not built with
/// the SDK) still prints it to stderr the standard way: the message is what
/// follows the `panicked at` line, up to the runtime's own `note:` lines.
fn panic_from_stderr(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let text = stderr[at..].trim();
    let text = text
        .split_once('\n')
        .map_or(text, |(_, message)| message.trim());
    let text = text
        .lines()
        .take_while(|line| !line.starts_with("note: "))
        .collect::<Vec<_>>()
        .join("\n");
    (!text.is_empty()).then(|| text.chars().take(4096).collect())
}

fn trap_kind(trap: Trap) -> &'static str {
    match trap {
        Trap::StackOverflow => "stack_overflow",
        Trap::MemoryOutOfBounds => "memory_out_of_bounds",
        Trap::HeapMisaligned => "heap_misaligned",
        Trap::TableOutOfBounds => "table_out_of_bounds",
        Trap::IndirectCallToNull => "indirect_call_to_null",
        Trap::BadSignature => "bad_signature",
        Trap::IntegerOverflow => "integer_overflow",
        Trap::IntegerDivisionByZero => "integer_division_by_zero",
        Trap::BadConversionToInteger => "bad_conversion_to_integer",
        Trap::UnreachableCodeReached => "unreachable",
        Trap::Interrupt => "interrupt",
        Trap::OutOfFuel => "out_of_fuel",
        Trap::AllocationTooLarge => "allocation_too_large",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_stderr_is_its_message_without_the_runtimes_notes() {
        let stderr = "Traceback\nValueError: x\n\nthread '<unnamed>' (1) panicked at \
                      runtime/src/lib.rs:1:2:\nPython function threw\nnote: run with \
                      `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_from_stderr(stderr).as_deref(),
            Some("Python function threw")
        );
        assert_eq!(panic_from_stderr("no panic here"), None);
    }

    #[test]
    fn the_stderr_tail_is_the_last_whole_lines_within_the_cap() {
        assert_eq!(stderr_tail(" \n\n"), None);
        assert_eq!(stderr_tail("one\ntwo\n").as_deref(), Some("one\ntwo"));
        let long: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        let tail = stderr_tail(&long).unwrap();
        assert!(tail.len() <= MAX_STDERR_TAIL);
        assert!(tail.starts_with("line ") && tail.ends_with("line 999"));
        let one_line = "é".repeat(3000);
        assert!(stderr_tail(&one_line).unwrap().len() <= MAX_STDERR_TAIL);
    }
}
