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
    let message = state
        .capabilities
        .take_fatal()
        .or_else(|| panic_from_stderr(&state.stderr_text()));
    InvokeError::Trap {
        kind: trap_kind(trap).to_owned(),
        message,
    }
}

/// A guest that did not report its panic through `log.fatal` (not built with
/// the SDK) still prints it to stderr the standard way.
fn panic_from_stderr(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let text = stderr[at..].trim();
    let text = text
        .split_once('\n')
        .map_or(text, |(_, message)| message.trim());
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
