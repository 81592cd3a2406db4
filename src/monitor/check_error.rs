//! Why a health check (or an operation on a backend) failed, and what that means for
//! failover.
//!
//! Only a [`ErrorKind::Down`] error says the server may be gone: refused, reset, silent, or
//! answering "shutting down / starting up / in recovery" (57P01–57P03). A server that
//! answers with an authentication, missing-database or permission error is up and the
//! proxy's own settings are wrong ([`ErrorKind::Misconfigured`]); one that answers "too many
//! clients" is up and busy ([`ErrorKind::Overloaded`]). Neither may cause a failover.

use std::time::Duration;

use serde::Serialize;

/// What a failed check says about the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The server may be gone: counts toward the failure threshold.
    Down,
    /// The server answered, but the checker's settings or privileges are wrong.
    Misconfigured,
    /// The server answered that it has no room or resources for the checker.
    Overloaded,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 3] = [ErrorKind::Down, ErrorKind::Misconfigured, ErrorKind::Overloaded];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Down => "down",
            ErrorKind::Misconfigured => "misconfigured",
            ErrorKind::Overloaded => "overloaded",
        }
    }
}

/// A failed check or operation, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Connect refused, reset, closed, or another network-level failure.
    #[error("{0}")]
    Unreachable(String),
    /// Nothing answered within the bound.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The server answered with an error (SQLSTATE `code`).
    #[error("{message} (SQLSTATE {code})")]
    Server { code: String, message: String },
    /// The TLS handshake was refused (certificate, protocol) or TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The checker's own settings are incomplete (e.g. a password the server asks for).
    #[error("{0}")]
    Settings(String),
    /// The server answered something the check cannot read.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl CheckError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CheckError::Unreachable(_) | CheckError::Timeout(_) => ErrorKind::Down,
            CheckError::Server { code, .. } => classify_sqlstate(code),
            CheckError::Tls(_) | CheckError::Settings(_) | CheckError::Protocol(_) => ErrorKind::Misconfigured,
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CheckError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Classifies a tokio-postgres error without ever printing a password (it never holds
    /// one).
    pub fn from_postgres(e: &tokio_postgres::Error) -> CheckError {
        if let Some(db) = e.as_db_error() {
            return CheckError::Server { code: db.code().code().to_string(), message: db.message().to_string() };
        }
        let text = chain(e);
        // A TLS failure is a setting unless the handshake itself lost the connection.
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            if let Some(ssl) = inner.downcast_ref::<openssl::ssl::Error>() {
                return if ssl.io_error().is_some() || ssl.code() == openssl::ssl::ErrorCode::ZERO_RETURN {
                    CheckError::Unreachable(text)
                } else {
                    CheckError::Tls(text)
                };
            }
            if inner.downcast_ref::<std::io::Error>().is_some() {
                return CheckError::Unreachable(text);
            }
            src = inner.source();
        }
        if text.contains("does not support TLS") {
            CheckError::Tls(text)
        } else if text.starts_with("invalid configuration") {
            CheckError::Settings(text)
        } else {
            // Closed connections, timeouts inside the driver, unreadable messages from a
            // server that is going away: all network-level.
            CheckError::Unreachable(text)
        }
    }
}

/// SQLSTATE classes: 57P0x and 08 (connection) mean the server is going or gone; 58 and XX
/// (I/O and internal errors) mean it cannot do its work; 53 and 57014 (a statement
/// timeout) mean it is short of resources; everything else means it answered and refused
/// the checker.
pub fn classify_sqlstate(code: &str) -> ErrorKind {
    match code {
        "57P01" | "57P02" | "57P03" | "57P04" => ErrorKind::Down,
        "57014" => ErrorKind::Overloaded,
        c if c.starts_with("08") || c.starts_with("58") || c.starts_with("XX") => ErrorKind::Down,
        c if c.starts_with("53") => ErrorKind::Overloaded,
        _ => ErrorKind::Misconfigured,
    }
}

/// The error and its sources on one line.
fn chain(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let more = inner.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for (code, kind) in [
            ("57P01", ErrorKind::Down),
            ("57P03", ErrorKind::Down),
            ("08006", ErrorKind::Down),
            ("58030", ErrorKind::Down),
            ("XX000", ErrorKind::Down),
            ("28P01", ErrorKind::Misconfigured),
            ("28000", ErrorKind::Misconfigured),
            ("3D000", ErrorKind::Misconfigured),
            ("42501", ErrorKind::Misconfigured),
            ("53300", ErrorKind::Overloaded),
            ("53100", ErrorKind::Overloaded),
            ("57014", ErrorKind::Overloaded),
        ] {
            assert_eq!(classify_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn kinds_and_text() {
        let e = CheckError::Server { code: "3D000".into(), message: "database \"nope\" does not exist".into() };
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert_eq!(e.to_string(), "database \"nope\" does not exist (SQLSTATE 3D000)");
        assert_eq!(CheckError::Timeout(Duration::from_millis(500)).to_string(), "no answer within 500ms");
        assert_eq!(CheckError::Timeout(Duration::from_millis(500)).kind(), ErrorKind::Down);
        assert_eq!(CheckError::Tls("certificate verify failed".into()).kind(), ErrorKind::Misconfigured);
    }
}
