//! Diagnostics that name the place: file, line, column and field path.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Information that asks for nothing (`validate` exits 0 with notes only).
    Note,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Source name, usually the file path.
    pub file: String,
    /// 1-based; 0 when the problem has no single place (e.g. an unreadable file).
    pub line: usize,
    pub column: usize,
    /// `VirtualService/backend: spec.http[0].route[0].destination.host`
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: {}:{}:{}: {}: {}", self.file, self.line, self.column, self.path, self.message)
    }
}
