//! Asking a server for its first answer while a session opens: a startup packet sent, and
//! the server's first bytes awaited, or the route leaving it meanwhile.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::datapath::DataPath;
use super::placement::Placement;
use super::wire;
use crate::cluster::BackendId;

/// What a server answered.
pub enum Answer {
    /// The server's first bytes: exactly one for an encryption request; for a StartupMessage
    /// at least enough to judge it (a whole ErrorResponse, or the first byte of anything else).
    Bytes(Vec<u8>),
    /// Closed or reset.
    Lost(String),
    /// The route left the server while waiting (a failover): try the new one at once.
    Moved,
}

/// Sends a startup packet and waits for the server's first answer ([`awaiting`]).
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    server: &mut S,
    bytes: &[u8],
    exact: usize,
    dp: &DataPath,
    place: &Placement,
    backend: BackendId,
    whole: bool,
) -> Answer {
    match send(server, bytes, dp).await {
        Ok(()) => awaiting(server, exact, place, backend, whole).await,
        Err(e) => Answer::Lost(e.to_string()),
    }
}

/// What [`Answer::Lost`] says of a server that closed the connection without a byte.
pub const CLOSED: &str = "the server closed the connection";

/// Waits for the server's first answer: `exact` bytes if non-zero, else as much as
/// [`wire::first_reply`] needs (and its whole first message when `whole`). Gives up when the route leaves `backend` (the monitor found
/// it hung or lost: the client can go to the new primary instead). There is no time limit
/// of its own: while the monitor still routes to this server it is alive, if slow, and a
/// slow answer beats a refusal. A proxy that starts stopping lets the answer come (the
/// session then drains like any other); the end of the drain period ends the wait.
pub async fn awaiting<S: AsyncRead + Unpin>(server: &mut S, exact: usize, place: &Placement, backend: BackendId, whole: bool) -> Answer {
    let read = async {
        let mut buf = Vec::with_capacity(if exact > 0 { exact } else { 512 });
        loop {
            match server.read_buf(&mut buf).await {
                Ok(0) => return Answer::Lost(CLOSED.into()),
                Ok(_) => {}
                Err(e) => return Answer::Lost(e.to_string()),
            }
            let enough = if exact > 0 { buf.len() >= exact } else { wire::first_reply(&buf).is_some() && (!whole || wire::whole_message(&buf)) };
            if enough {
                return Answer::Bytes(buf);
            }
        }
    };
    let mut watching = place.clone();
    tokio::select! {
        a = read => a,
        _ = watching.left(backend) => Answer::Moved,
    }
}

/// Sends `bytes` to the server, counted.
pub async fn send<S: AsyncWrite + Unpin>(server: &mut S, bytes: &[u8], dp: &DataPath) -> std::io::Result<()> {
    server.write_all(bytes).await?;
    server.flush().await?;
    dp.metrics.add_bytes(true, bytes.len() as u64);
    Ok(())
}
