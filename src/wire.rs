//! The few PostgreSQL wire-protocol pieces the proxy itself speaks: recognising the
//! startup packets and sending a FATAL `ErrorResponse` to a client it must refuse.
//! Everything else on the data path is spliced without being parsed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Request codes of the untyped startup packets.
pub const SSL_REQUEST: u32 = 80877103;
pub const GSSENC_REQUEST: u32 = 80877104;
pub const CANCEL_REQUEST: u32 = 80877102;
/// SQLSTATE "cannot_connect_now".
pub const SQLSTATE_CANNOT_CONNECT_NOW: &str = "57P03";

/// The largest startup packet we accept (PostgreSQL's own limit is 10000).
const MAX_STARTUP_LEN: u32 = 10_000;
/// A client that does not finish its startup in this time is dropped.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// Encodes an `ErrorResponse` message (protocol 3.0).
pub fn error_response(severity: &str, sqlstate: &str, message: &str, detail: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    let mut field = |code: u8, value: &str| {
        body.push(code);
        // A NUL would end the field early; the text is ours, but never trust it.
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    };
    field(b'S', severity);
    field(b'V', severity);
    field(b'C', sqlstate);
    field(b'M', message);
    if let Some(d) = detail {
        field(b'D', d);
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(b'E');
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// What a refused client had sent when we answered it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A StartupMessage was read and the ErrorResponse sent.
    Startup,
    /// A CancelRequest: nothing to answer, the connection is just closed.
    Cancel,
    /// The client sent garbage, went away or was too slow; closed without an answer.
    Abandoned,
}

/// Refuses a client properly: `N` to SSL/GSS encryption requests, then the StartupMessage
/// is read and answered with a FATAL 57P03 carrying `message`. Never panics on bad bytes.
pub async fn refuse(client: &mut TcpStream, message: &str) -> Refused {
    let outcome = tokio::time::timeout(STARTUP_DEADLINE, refuse_inner(client, message)).await;
    let outcome = outcome.unwrap_or(Ok(Refused::Abandoned)).unwrap_or(Refused::Abandoned);
    let _ = client.shutdown().await;
    outcome
}

async fn refuse_inner(client: &mut TcpStream, message: &str) -> std::io::Result<Refused> {
    loop {
        let mut head = [0u8; 8];
        if client.read_exact(&mut head).await.is_err() {
            return Ok(Refused::Abandoned);
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Ok(Refused::Abandoned);
        }
        let mut rest = vec![0u8; len as usize - 8];
        if client.read_exact(&mut rest).await.is_err() {
            return Ok(Refused::Abandoned);
        }
        match code {
            SSL_REQUEST | GSSENC_REQUEST => client.write_all(b"N").await?,
            CANCEL_REQUEST => return Ok(Refused::Cancel),
            _ => {
                let msg = error_response("FATAL", SQLSTATE_CANNOT_CONNECT_NOW, message, None);
                client.write_all(&msg).await?;
                client.flush().await?;
                return Ok(Refused::Startup);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let m = error_response("FATAL", "57P03", "no primary", None);
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        let body = &m[5..];
        assert!(body.windows(6).any(|w| w == b"C57P03"));
        assert!(body.windows(11).any(|w| w == b"Mno primary"));
        assert_eq!(*body.last().unwrap(), 0);
    }

    #[test]
    fn nul_in_message_cannot_break_framing() {
        let m = error_response("FATAL", "57P03", "a\0b", Some("d"));
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        assert!(m.windows(4).any(|w| w == b"Mab\0"));
    }
}
