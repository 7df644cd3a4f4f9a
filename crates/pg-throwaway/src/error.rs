//! The one error type of the crate.

use std::fmt;
use std::io;

/// What went wrong, coarsely, so a caller can match on meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The PostgreSQL server binaries (`initdb`, `postgres`) could not be found.
    MissingBinaries,
    /// An operating-system call failed (file, process, socket).
    Io,
    /// A helper program (`initdb`, `psql`, …) ran and reported failure.
    CommandFailed,
    /// Something did not happen within its deadline (server start, stop, a `psql` run).
    Timeout,
    /// The postmaster exited when it should have kept running.
    ServerExited,
    /// A test certificate or key could not be made.
    Certificate,
}

/// An error starting or driving a cluster. Its `Display` text is written for a human (a
/// failed test, a terminal): it names the step, and carries the helper's stderr or the server log tail.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O failure while doing `what`.
    pub(crate) fn io(what: impl fmt::Display, source: io::Error) -> Self {
        Self {
            kind: ErrorKind::Io,
            message: format!("{what}: {source}"),
            source: Some(source),
        }
    }

    /// The coarse category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The full human-readable message (the same text `Display` prints).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Appends context (e.g. a server log tail) to the message.
    pub(crate) fn with_detail(mut self, detail: impl fmt::Display) -> Self {
        self.message = format!("{}\n{detail}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// The result type of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
