//! One client session: open it on the routed backend (held while none can take it, see
//! [`startup`]), then splice bytes both ways until either side ends, the
//! route moves away, or the proxy shuts down.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::cluster::BackendId;
use crate::metrics::{CloseReason, Metrics, ReadGuard};

use super::datapath::{DataPath, Port};
use super::framing::{Framer, Side, Track};
use super::gate::Gate;
use super::placement::Placement;
use super::socket;
use super::startup::{self, Failed};
use super::wire;

/// Serves one accepted client until the session ends. Never panics on client input.
/// `stopping`: the proxy stops accepting (held clients are refused at once); `kill`: the
/// drain period is over (spliced sessions are closed). `guard` is kept for as long as the
/// session lasts (its counts on the data-path thread and in the drain).
///
/// An `async` block rather than an `async fn`, here and in the splice below: an async fn's
/// arguments are stored twice in its future (once as captured, once as moved into its body),
/// and this future is what every idle session costs. Locals that are taken apart (the opened
/// connection, the server's first answer) live in inner blocks for the same reason: a local
/// moved out of in part keeps its room in the future until its scope ends.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice in its future")]
pub fn serve<G: Send + 'static>(
    mut client: TcpStream,
    dp: Arc<DataPath>,
    port: Port,
    stopping: CancellationToken,
    kill: CancellationToken,
    guard: G,
) -> impl Future<Output = ()> + Send {
    async move {
        let m = &dp.metrics;
        m.accepted();
        let _active = m.session_started();
        // The settings in force when the client came: one read per session (in a block, so
        // that the handle on them is not kept for the session's life).
        let startup_timeout = {
            let cfg = dp.config();
            if let Err(e) = socket::tune(&client, &cfg.proxy) {
                tracing::debug!(error = %e, "client socket options");
            }
            // `[tls] mode = "terminate"`: the proxy answers the client's TLS itself.
            // Boxed, here and for the refusals below: a rare path's state (a TLS connection, a
            // throw-away handshake) must not size every plaintext session's task.
            if let Some(acceptor) = cfg.material.acceptor.clone() {
                drop(cfg);
                return Box::pin(super::terminate::serve(client, &dp, port, &stopping, &kill, acceptor)).await;
            }
            cfg.proxy.startup_timeout
        };
        let mut place = Placement::for_port(&dp, port);
        let (server, backend, first) = {
            let opened = tokio::select! {
                // Boxed: the startup's state is freed once it is done, instead of sizing the
                // session's task for as long as the session lasts.
                r = Box::pin(startup::open(&mut client, &dp, &mut place, &stopping)) => r,
                // The drain period is over and this client's server still has not answered.
                _ = kill.cancelled() => {
                    m.session_closed(CloseReason::Shutdown);
                    return;
                }
            };
            match opened {
                Ok(opened) => (opened.server, opened.backend, opened.first),
                // One await, so that `opened` is not kept in more than one state of this future.
                Err(failed) => return Box::pin(refused(client, failed, m, port, tokio::time::Instant::now() + startup_timeout)).await,
            }
        };
        let _reading = read_counted(m, &place, port, backend);
        // Followed from the server's first answer on, unless encrypted end to end. (By value:
        // the answer is freed here, not kept for as long as the session lasts.)
        let (track, down) = followed_from_owned(first);
        let _counted = dp.gate.register(track.clone(), backend);
        let reason = tokio::select! {
            r = splice_with(&client, &server, m, Some(Tracking { track: &track, gate: &dp.gate, backend, down })) => r,
            _ = place.left(backend) => CloseReason::RouteChanged,
            _ = kill.cancelled() => CloseReason::Shutdown,
        };
        if reason == CloseReason::RouteChanged {
            let ended = Box::pin(end(&mut client, &track, &place, port)).await;
            tracing::debug!(backend = %dp.backend(backend).name, ended = ended.as_str(), "session ended: the route moved away");
            m.session_closed(ended);
        } else {
            m.session_closed(reason);
        }
        // Named last so that it is captured last, and so released after the sockets: the
        // drain ends only once the session's sockets are closed.
        let _ = &guard;
    }
}

/// A new session's standing and its server side's framing, fed the server's first answer;
/// `None`: encrypted end to end, not followed.
pub(super) fn followed_from(first: Option<&[u8]>) -> (Arc<Track>, Framer) {
    let mut down = Framer::new(Side::Backend);
    let track = match first {
        Some(first) => {
            let t = Track::starting();
            down.feed(first, &t);
            t
        }
        None => Track::opaque(),
    };
    (Arc::new(track), down)
}

/// [`followed_from`], freeing the answer.
fn followed_from_owned(first: Option<Vec<u8>>) -> (Arc<Track>, Framer) {
    followed_from(first.as_deref())
}

/// [`refuse`] for a plain session, whose direct-TLS client gets a throw-away handshake
/// first, to be told in words.
async fn refused(mut client: TcpStream, failed: Failed, m: &Metrics, port: Port, deadline: tokio::time::Instant) {
    match failed {
        Failed::DirectTls { hello, reason } => {
            super::direct::refuse(client, hello, &reason, deadline).await;
            m.session_closed(CloseReason::ClientClosed);
        }
        failed => refuse(&mut client, failed, m, port, deadline).await,
    }
}

/// A read session counts toward its backend's load (least_connections) while it lasts; one
/// on the primary by fallback is counted as such.
pub(super) fn read_counted<'m>(m: &'m Metrics, place: &Placement, port: Port, backend: BackendId) -> Option<ReadGuard<'m>> {
    port.is_read().then(|| {
        if place.is_fallback(backend) {
            m.read_fallback();
        }
        m.read_session_started(backend)
    })
}

/// Answers a client whose session could not be opened, and counts it. A direct-TLS client
/// is the caller's to answer (a plain session hands it a throw-away handshake); here it is
/// only counted.
pub(super) async fn refuse<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C, failed: Failed, m: &Metrics, port: Port, deadline: tokio::time::Instant) {
    match failed {
        Failed::Abandoned | Failed::DirectTls { .. } => m.session_closed(CloseReason::ClientClosed),
        Failed::Invalid(len) => {
            tracing::debug!(len, "invalid length of startup packet: connection closed");
            m.session_closed(CloseReason::InvalidStartup);
        }
        Failed::Refused { reason, pending } => {
            if port.is_read() {
                m.read_refused();
            } else {
                m.refused();
            }
            let outcome = wire::refuse(client, pending, wire::SQLSTATE_CANNOT_CONNECT_NOW, &reason, deadline).await;
            tracing::info!(%reason, outcome = outcome.as_str(), "client refused");
        }
        Failed::BadSetting { reason, pending } => {
            let outcome = wire::refuse(client, pending, wire::SQLSTATE_INVALID_PARAMETER_VALUE, &reason, deadline).await;
            tracing::info!(%reason, outcome = outcome.as_str(), "client refused: bad pgfailover setting");
        }
    }
}

/// Ends a session whose server the route left. Where the framing allows, the client gets a
/// FATAL 57P01 at a message boundary, as from a server shutting down, instead of a bare
/// close: a quiet session learns that nothing of it was running (its held message, if any,
/// never reached the server), a busy one that its statement did not finish.
pub(super) async fn end<C: AsyncWrite + Unpin>(client: &mut C, track: &Track, place: &Placement, port: Port) -> CloseReason {
    if track.is_opaque() || !track.client_at_boundary() {
        return CloseReason::RouteChanged;
    }
    let quiet = track.is_quiet();
    let why = place.why_left();
    let message = match port {
        Port::Primary => format!("terminating connection because the primary database changed: {why}"),
        Port::Read | Port::ReadAt(_) => format!("terminating connection because its read-only server left the read set: {why}"),
    };
    let detail = if quiet {
        "The session was idle: none of its statements was running, and a statement sent meanwhile never reached the server. Reconnect and retry."
    } else {
        "A statement or transaction was in progress and did not finish; if it was a COMMIT, its outcome is unknown."
    };
    let msg = wire::error_response("FATAL", wire::SQLSTATE_ADMIN_SHUTDOWN, &message, Some(detail));
    let written = async {
        client.write_all(&msg).await?;
        // Half-closes (a TLS client gets its close_notify first).
        client.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), written).await;
    if quiet {
        CloseReason::EndedQuiet
    } else {
        CloseReason::RouteChanged
    }
}

/// Refuses a client over `proxy.max_client_connections` as PostgreSQL refuses one over
/// `max_connections`: a FATAL 53300 in answer to its StartupMessage.
pub async fn refuse_over_limit(mut client: TcpStream, dp: Arc<DataPath>) {
    dp.metrics.over_limit();
    let deadline = tokio::time::Instant::now() + dp.config().proxy.startup_timeout;
    let message = format!("sorry, too many clients already (pgfailover's proxy.max_client_connections is {})", dp.config().proxy.max_client_connections);
    let outcome = wire::refuse(&mut client, None, wire::SQLSTATE_TOO_MANY_CONNECTIONS, &message, deadline).await;
    tracing::debug!(outcome = outcome.as_str(), "client over the connection limit refused");
}

/// Copies both directions at once (a pipelining client and a busy server never deadlock),
/// half-closing each side as its peer finishes. Returns who ended it. The framing is not
/// followed (benchmarks and tests of the plain splice).
pub async fn splice(client: &TcpStream, server: &TcpStream, m: &Metrics) -> CloseReason {
    splice_with(client, server, m, None).await
}

/// What a session whose framing is followed brings to its splice.
pub struct Tracking<'a> {
    /// Where the session stands (read by the pause's census).
    pub track: &'a Track,
    pub gate: &'a Gate,
    /// The session's server, in config order: a pause of it holds this session.
    pub backend: BackendId,
    /// The server side's framing, already fed the server's first answer.
    pub down: Framer,
}

/// [`splice`], following the framing when `tracking` is given: a quiet session's next
/// message waits while the gate holds its server. (An `async` block: see [`serve`].)
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice in its future")]
pub fn splice_with<'a>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    m: &'a Metrics,
    tracking: Option<Tracking<'a>>,
) -> impl Future<Output = CloseReason> + Send + 'a {
    async move {
        // Which side reached EOF first: 0 = none yet, else the Direction's tag.
        let first_eof = AtomicU8::new(0);
        // Moved whole into the pumps, so that they are not stored twice.
        let (up_ctx, down_ctx) = follows(tracking);
        let up = pump(client, server, Direction::Up, m, &first_eof, up_ctx);
        let down = pump(server, client, Direction::Down, m, &first_eof, down_ctx);
        match tokio::try_join!(up, down) {
            Ok(_) if first_eof.load(Ordering::Relaxed) == Direction::Down as u8 => CloseReason::ServerClosed,
            Ok(_) => CloseReason::ClientClosed,
            Err(_) => CloseReason::Error,
        }
    }
}

/// Each direction's part in following the framing, if it is followed.
fn follows(tracking: Option<Tracking<'_>>) -> (Option<Follow<'_>>, Option<Follow<'_>>) {
    match tracking {
        Some(t) if !t.track.is_opaque() => {
            let up = Follow::new(t.track, t.gate, t.backend, Framer::new(Side::Frontend));
            let down = Follow::new(t.track, t.gate, t.backend, t.down);
            (Some(up), Some(down))
        }
        _ => (None, None),
    }
}

/// One direction's part in following a session's framing.
pub(super) struct Follow<'a> {
    track: &'a Track,
    gate: &'a Gate,
    backend: BackendId,
    framer: Framer,
    /// The client bytes being forwarded began a statement of a quiet session: counted as
    /// busy until they are fed to the framer.
    opened: bool,
}

impl<'a> Follow<'a> {
    pub(super) fn new(track: &'a Track, gate: &'a Gate, backend: BackendId, framer: Framer) -> Follow<'a> {
        Follow { track, gate, backend, framer, opened: false }
    }

    /// Client bytes just read, not yet forwarded: waits while the pause holds them (see
    /// [`admit`](Self::admit)), then counts them. For copy loops that own their buffer.
    pub(super) async fn client_bytes(&mut self, data: &[u8]) {
        while !self.admit() {
            self.held().await;
        }
        self.client_fed(data);
    }

    /// Client bytes read, not yet forwarded: whether they may go now. If they begin a
    /// statement of a quiet session whose server is paused, they may not (see [`held`]);
    /// otherwise the statement counts as begun from here (busy first, then the pause is
    /// looked at: the gate's handshake), and [`client_fed`] counts the bytes.
    ///
    /// [`held`]: Self::held
    /// [`client_fed`]: Self::client_fed
    fn admit(&mut self) -> bool {
        if !(self.framer.at_boundary() && self.track.is_quiet()) {
            return true;
        }
        self.track.open();
        if self.gate.holds(self.backend) {
            self.track.close();
            return false;
        }
        self.opened = true;
        true
    }

    /// Counts admitted client bytes.
    fn client_fed(&mut self, data: &[u8]) {
        self.framer.feed(data, self.track);
        if std::mem::take(&mut self.opened) {
            self.track.close();
        }
    }

    /// Waits while the pause holds this session's next statement (the outer select ends the
    /// wait if the session must end instead).
    async fn held(&mut self) {
        let mut changes = self.gate.watch();
        changes.borrow_and_update();
        if !self.gate.holds(self.backend) {
            return;
        }
        self.track.set_held(true);
        let _counted = self.gate.hold_statement();
        self.gate.went_quiet();
        while self.gate.holds(self.backend) {
            if changes.changed().await.is_err() {
                // The data path is gone: the proxy stops, and shutdown ends us.
                std::future::pending::<()>().await;
            }
        }
        self.track.set_held(false);
    }

    /// Server bytes about to be forwarded.
    pub(super) fn server_bytes(&mut self, data: &[u8]) {
        if self.framer.feed(data, self.track).quiet {
            self.gate.went_quiet();
        }
        self.track.set_partial(true);
    }

    /// Server bytes forwarded: is the client between two messages?
    pub(super) fn server_bytes_sent(&self) {
        if self.framer.at_boundary() {
            self.track.set_partial(false);
        }
    }
}

#[derive(Clone, Copy)]
#[repr(u8)]
enum Direction {
    /// Client to server.
    Up = 1,
    /// Server to client.
    Down = 2,
}

/// The scratch buffer's size: reads up to this much at once (COPY, large results) while an
/// ordinary protocol message fits many times over.
const LARGE: usize = 256 * 1024;

/// Copies one direction. A buffer exists only while data flows: it is taken when the socket
/// becomes readable and dropped once the socket is drained, so an idle session holds none.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice in its future")]
fn pump<'a>(
    from: &'a TcpStream,
    to: &'a TcpStream,
    dir: Direction,
    m: &'a Metrics,
    first_eof: &'a AtomicU8,
    mut follow: Option<Follow<'a>>,
) -> impl Future<Output = io::Result<()>> + Send + 'a {
    // An `async` block: see [`serve`].
    async move {
        let up = matches!(dir, Direction::Up);
        loop {
            // Readiness polled in place: the waker sits in the socket's own reader slot (this pump
            // is the socket's only reader), so an idle session's task holds no waiter node per
            // direction, as a `readable()` future would (152 bytes each).
            std::future::poll_fn(|cx| from.poll_read_ready(cx)).await?;
            loop {
                // One chunk through the thread's scratch buffer, forwarded at once if the other
                // socket takes it; only what must wait (a held statement, a full socket) is
                // copied into a buffer of the session's own.
                let step = SCRATCH.with_borrow_mut(|buf| -> io::Result<Step> {
                    buf.clear();
                    let n = match read_chunk(from, buf) {
                        Ok(0) => return Ok(Step::Eof),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Drained),
                        Err(e) => return Err(e),
                    };
                    let short = n < buf.capacity();
                    match (&mut follow, dir) {
                        (Some(f), Direction::Up) => {
                            if !f.admit() {
                                return Ok(Step::Hold(buf.to_vec(), short));
                            }
                            f.client_fed(buf);
                        }
                        (Some(f), Direction::Down) => f.server_bytes(buf),
                        (None, _) => {}
                    }
                    m.add_bytes(up, n as u64);
                    let sent = write_now(to, buf)?;
                    if sent < n {
                        return Ok(Step::Rest(buf[sent..].to_vec(), short));
                    }
                    Ok(Step::Sent(short))
                })?;
                let short = match step {
                    Step::Eof => {
                        let _ = first_eof.compare_exchange(0, dir as u8, Ordering::Relaxed, Ordering::Relaxed);
                        socket::shutdown_write(to);
                        return Ok(());
                    }
                    Step::Drained => break,
                    Step::Sent(short) => short,
                    // Boxed, and the step moved whole into it: these waits are rare, and their
                    // state must not size every idle session's task (the readiness wait above
                    // is all an idle one holds).
                    waits => Box::pin(wait_then_send(waits, to, follow.as_mut(), m, up)).await?,
                };
                if let (Some(f), Direction::Down) = (&follow, dir) {
                    f.server_bytes_sent();
                }
                if short {
                    break;
                }
            }
        }
    }
}

/// A chunk that could not go at once ([`Step::Rest`], [`Step::Hold`]): sends it when it
/// may. Returns whether the read was short.
async fn wait_then_send(step: Step, to: &TcpStream, follow: Option<&mut Follow<'_>>, m: &Metrics, up: bool) -> io::Result<bool> {
    match step {
        Step::Rest(rest, short) => {
            write_all(to, &rest).await?;
            Ok(short)
        }
        Step::Hold(data, short) => {
            let f = follow.expect("only a followed session is held");
            loop {
                f.held().await;
                if f.admit() {
                    break;
                }
            }
            f.client_fed(&data);
            m.add_bytes(up, data.len() as u64);
            write_all(to, &data).await?;
            Ok(short)
        }
        Step::Eof | Step::Drained | Step::Sent(_) => unreachable!("sent or ended at once"),
    }
}

/// What became of one chunk.
enum Step {
    /// The socket reached EOF.
    Eof,
    /// Nothing to read (any more).
    Drained,
    /// Forwarded whole; `true` if the read was short (the socket is drained).
    Sent(bool),
    /// Forwarded in part: the rest waits for the other socket.
    Rest(Vec<u8>, bool),
    /// A quiet session's next statement while its server is paused: not forwarded yet.
    Hold(Vec<u8>, bool),
}

thread_local! {
    /// Every session's reads on this thread go through this buffer (reads fill its spare
    /// capacity, nothing is zeroed): an idle session holds no buffer, and a busy one
    /// allocates only when the other side cannot take its bytes at once.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(LARGE));
}

/// Writes as much of `data` as `to` takes now.
fn write_now(to: &TcpStream, mut data: &[u8]) -> io::Result<usize> {
    let whole = data.len();
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(whole - data.len())
}

/// One read into `buf`'s spare capacity. A short read means the socket was drained, so the
/// readiness is cleared right here instead of paying another read() just to get EAGAIN. The
/// clear must use the readiness observed *before* the read: `try_io` captures it first and
/// tokio ignores a clear whose tick is stale, so data arriving after the read (even while the
/// caller then awaits a write) raises readiness again and is never missed. A pending EOF stays
/// flagged too: tokio never clears the closed state.
fn read_chunk(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let cap = buf.capacity();
    let mut got: io::Result<usize> = Err(io::ErrorKind::WouldBlock.into());
    let cleared = from.try_io(Interest::READABLE, || {
        got = from.try_read_buf(buf);
        match got {
            Ok(n) if n > 0 && n < cap => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(()),
        }
    });
    match cleared {
        // Not ready at all, or the read itself hit EAGAIN: `got` says which.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got.is_err() => Err(e),
        _ => got,
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
