//! Whose fault a broken request body is. An upload that fails on the client's side (bad
//! framing, a client that leaves) must never count against the upstream; these types carry
//! that verdict from the server that read the body (hyper's, or [`crate::h2_server`]) to the
//! attempt that sees the upstream fail (see [`crate::upload`]).

use std::fmt;

use crate::reason::Reason;
use crate::BoxError;

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The body broke the protocol: bad chunked framing, more or less than its declared length.
    Malformed,
    /// The client went away (closed, reset the connection or its stream) before the body ended.
    Disconnected,
}

impl ClientFault {
    /// What the client is answered, if it is still there to read it.
    pub fn reason(self) -> Reason {
        match self {
            ClientFault::Malformed => Reason::BadRequestBody,
            ClientFault::Disconnected => Reason::DownstreamDisconnect,
        }
    }
}

/// A request body the client could not deliver: what went wrong, whose fault ([`ClientFault`]),
/// and the server's own error as the cause.
#[derive(Debug)]
pub struct ClientBodyError {
    fault: ClientFault,
    cause: BoxError,
}

impl ClientBodyError {
    pub fn new(fault: ClientFault, cause: impl Into<BoxError>) -> Self {
        ClientBodyError { fault, cause: cause.into() }
    }

    /// Classifies an error of hyper's server-side body (HTTP/1.1). hyper reports a body that
    /// ended early as `UnexpectedEof`, and bad framing (chunk sizes, extensions, lengths) as
    /// `InvalidInput`/`InvalidData`, each the `io::Error` under its own.
    pub fn from_hyper(e: hyper::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        let mut fault = ClientFault::Disconnected;
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if matches!(io.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData) {
                    fault = ClientFault::Malformed;
                }
                break;
            }
            source = s.source();
        }
        if e.is_parse() {
            fault = ClientFault::Malformed;
        }
        ClientBodyError::new(fault, e)
    }

    pub fn fault(&self) -> ClientFault {
        self.fault
    }
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.fault {
            ClientFault::Malformed => "malformed request body",
            ClientFault::Disconnected => "client left during the request body",
        };
        write!(f, "{what}: {}", self.cause)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}
