//! The copy loop of a terminated session: both directions at once over streams that are
//! `AsyncRead`/`AsyncWrite` (TLS on either leg), feeding the same framing as the plain splice
//! ([`Follow`]: a quiet session's next statement waits while its server is paused).
//!
//! The plain splice works on socket readiness and drops its buffers while idle; a TLS stream
//! keeps its own record buffers, so each direction here keeps one buffer for the session.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cluster::BackendId;
use crate::metrics::{CloseReason, Metrics};
use crate::proxy::framing::{Framer, Track};
use crate::proxy::gate::Gate;
use crate::proxy::session::Follow;

/// One read's worth: a TLS record's plaintext is at most 16 KiB.
const CHUNK: usize = 16 * 1024;

/// What a followed session brings to its copy loop.
pub struct Following<'a> {
    pub track: &'a Track,
    pub gate: &'a Gate,
    pub backend: BackendId,
    /// The client side's framing (it may have seen the client's first SCRAM message).
    pub up: Framer,
    /// The server side's framing, fed the server's first answer.
    pub down: Framer,
}

/// Copies both ways until both sides ended; returns who ended first.
pub async fn splice<C, S>(client: &mut C, server: &mut S, m: &Metrics, following: Option<Following<'_>>) -> CloseReason
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first_eof = AtomicU8::new(0);
    let (up, down) = match following {
        Some(f) if !f.track.is_opaque() => (Some(Follow::new(f.track, f.gate, f.backend, f.up)), Some(Follow::new(f.track, f.gate, f.backend, f.down))),
        _ => (None, None),
    };
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let to_server = pump(&mut cr, &mut sw, true, m, &first_eof, up);
    let to_client = pump(&mut sr, &mut cw, false, m, &first_eof, down);
    match tokio::try_join!(to_server, to_client) {
        Ok(_) if first_eof.load(Ordering::Relaxed) == 2 => CloseReason::ServerClosed,
        Ok(_) => CloseReason::ClientClosed,
        Err(_) => CloseReason::Error,
    }
}

/// One direction. `up`: client to server.
async fn pump<R, W>(from: &mut R, to: &mut W, up: bool, m: &Metrics, first_eof: &AtomicU8, mut follow: Option<Follow<'_>>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            // A peer that closes its TCP connection without TLS's close_notify (libpq does,
            // after its Terminate): the end of the stream all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let _ = first_eof.compare_exchange(0, if up { 1 } else { 2 }, Ordering::Relaxed, Ordering::Relaxed);
            let _ = to.shutdown().await;
            return Ok(());
        }
        let data = &buf[..n];
        match (&mut follow, up) {
            (Some(f), true) => f.client_bytes(data).await,
            (Some(f), false) => f.server_bytes(data),
            (None, _) => {}
        }
        to.write_all(data).await?;
        to.flush().await?;
        if let (Some(f), false) = (&follow, up) {
            f.server_bytes_sent();
        }
        m.add_bytes(up, n as u64);
    }
}
