//! The error an operation returns to its caller.

use std::fmt;

/// A domain error: the operation ran and refused, for a reason the caller can
/// act on.
///
/// The `code` is upper snake case. The host passes plugin codes through to the
/// caller unchanged; the well-known codes of the opbox protocol (such as
/// [`Error::INVALID_INPUT`]) keep their protocol meaning.
///
/// A panic is not an `Error`: it traps the instance and the host reports it as
/// `PLUGIN_FAILED`, with the panic message.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    code: String,
    message: String,
    details: Option<serde_json::Value>,
}

impl Error {
    /// The input does not fit the operation.
    pub const INVALID_INPUT: &'static str = "INVALID_INPUT";
    /// The operation failed for a reason that is not the caller's.
    pub const INTERNAL: &'static str = "INTERNAL";

    /// An error with a code of the plugin's choosing, e.g. `"NOT_FOUND"` or
    /// `"QUOTA_EXCEEDED"`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    /// `INVALID_INPUT` with the given message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID_INPUT, message)
    }

    /// `INTERNAL` with the given message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Self::INTERNAL, message)
    }

    /// Attaches machine-readable details (a JSON object is expected).
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The details, if any.
    pub fn details(&self) -> Option<&serde_json::Value> {
        self.details.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<crate::__private::CallError> for Error {
    fn from(e: crate::__private::CallError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

impl From<Error> for crate::__private::CallError {
    fn from(e: Error) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details.map(|d| d.to_string()),
        }
    }
}

/// The result of an operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
