//! The opening of a session, up to the server's first answer.
//!
//! Until a server has said anything the client will see, nothing is lost by going to another
//! one: the proxy holds the client's startup packets and replays them. So a new client is
//! held (up to `failover.hold_timeout`), not refused, when the routed server
//!   - refuses the TCP connect (it is down),
//!   - accepts it but answers the StartupMessage with "the database system is shutting down /
//!     starting up / in recovery mode" (57P01, 57P02, 57P03: a primary in the middle of an
//!     immediate stop or a crash restart still forks backends for a moment to say so),
//!   - closes the connection or stops answering before its first message (a crash, a hang),
//!   - or the route moves away while the proxy waits for that first message.
//!
//! An SSLRequest or GSSENCRequest is put to the server too. If it answers `S`/`G`, the rest
//! of the startup is end-to-end encrypted and the session is committed to that server. If it
//! answers `N`, the client goes on in clear, and its StartupMessage is judged as above; a retry
//! on another server then sends only the StartupMessage.
//!
//! CancelRequests go to the routed server unjudged: it decides what they mean. So does a
//! direct-TLS ClientHello (PostgreSQL 17's `sslnegotiation=direct`), with one exception: a
//! server that closes the connection on it without a word does not speak direct TLS (it is
//! older than 17, or has no TLS), and the client is told so in words ([`Failed::DirectTls`]).
//!
//! Under `[tls] mode = "terminate"` the client's TLS has been answered by the proxy before
//! this (see [`super::terminate`]), and the server is reached through a [`Leg`] that opens the
//! proxy's own TLS to it; the rest is the same.
//!
//! On the read-only port the same holds with "routed" read as "placed" (see
//! [`Placement`]): the StartupMessage may carry a tighter freshness bound
//! (`options=-c pgfailover.max_lag=100ms`), and a server picked before it was read is
//! changed if it does not meet that bound. Over TLS the StartupMessage is encrypted end to
//! end, so only the configured bounds apply there.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ask::{ask, send, Answer};
use super::datapath::DataPath;
use super::direct::Offered;
pub use super::leg::{Leg, Plain};
use super::placement::{Bound, Pick, Placement};
use super::socket;
use super::wire::{self, FirstReply, Packet, CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_3, SSL_REQUEST};
use crate::cluster::BackendId;

/// Why a session could not be opened.
pub enum Failed {
    /// The client went away, or sent nothing in time; there is no one to answer.
    Abandoned,
    /// The client sent a length no startup packet can have: closed at once.
    Invalid(u32),
    /// No server took the client within the hold timeout (or the proxy is stopping): answer
    /// with a 57P03 carrying `reason`, after handling `pending`, the client's last packet.
    Refused { reason: String, pending: Option<Packet> },
    /// A `pgfailover.*` setting in the StartupMessage has a value the proxy cannot read:
    /// answered with 22023 (invalid_parameter_value) and `reason`.
    BadSetting { reason: String, pending: Option<Packet> },
    /// A direct-TLS ClientHello (`hello`, as read from the client) that the server closed the
    /// connection on: it does not speak direct TLS. `reason` says which server.
    DirectTls { hello: Vec<u8>, reason: String },
}

/// A server that has accepted the client, and its index in config order.
pub struct Opened<S = TcpStream> {
    pub server: S,
    pub backend: BackendId,
    /// The server's first answer to a StartupMessage in clear: the framing is followed from
    /// it on. `None` when the session is encrypted end to end (or a CancelRequest).
    pub first: Option<Vec<u8>>,
}

/// Reads the client's startup packets and finds them a server, retrying while servers are
/// down or cannot take sessions yet. On success the server's first answer has been passed to
/// the client, and the rest is the splice's.
pub async fn open(client: &mut TcpStream, dp: &DataPath, place: &mut Placement, stopping: &CancellationToken) -> Result<Opened, Failed> {
    open_with(client, None, dp, place, stopping, &Plain).await
}

/// [`open`] for any client stream (a TLS one the proxy terminated) and any [`Leg`] to the
/// servers; `first`: the client's startup packet when it was already read.
pub async fn open_with<C, L>(
    client: &mut C,
    first: Option<Packet>,
    dp: &DataPath,
    place: &mut Placement,
    stopping: &CancellationToken,
    leg: &L,
) -> Result<Opened<L::Server>, Failed>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    L: Leg,
{
    // The connect to the routed server overlaps the client's first packet on the wire, as a
    // plain splice's would; a failed early connect is retried (and reported) by the hold.
    // The client's whole startup (its packets, not the server's answers) is bounded.
    let cfg = dp.config();
    let deadline = Instant::now() + cfg.proxy.startup_timeout;
    let read = async {
        match first {
            Some(p) => Some(p),
            None => read_client(client, deadline).await,
        }
    };
    let (packet, early) = tokio::join!(read, early_connect(dp, place, leg));
    let mut packet = match packet {
        Some(Packet::Invalid(len)) => return Err(Failed::Invalid(len)),
        Some(p) => p,
        None => return Err(Failed::Abandoned),
    };
    if let (true, Packet::Untyped { code: CANCEL_REQUEST, bytes }) = (place.is_read(), &packet) {
        // Which read server runs the session to cancel is not known here: every server that
        // may hold read sessions gets the request, and the others ignore its key.
        cancel_everywhere(dp, bytes).await;
        return Err(Failed::Abandoned);
    }
    let mut hold = Hold { deadline: Instant::now() + cfg.failover.hold_timeout, counted: false, last_error: None, wait_first: false, pause: dp.gate.watch() };
    // A connected server to use next: the early connect, or one already asked about
    // encryption (it said N) that the StartupMessage goes to.
    let mut asked: Option<(L::Server, BackendId)> = early;
    // The client's own freshness bound, read once from its StartupMessage.
    let mut bound_read = false;
    loop {
        if let Packet::Untyped { code: PROTOCOL_3, bytes } = &packet {
            if place.is_read() && !std::mem::replace(&mut bound_read, true) {
                match client_bound(bytes) {
                    Ok(Some(b)) => place.tighten(b, cfg.read.min_lsn_wait),
                    Ok(None) => {}
                    Err(reason) => return Err(Failed::BadSetting { reason, pending: Some(packet) }),
                }
                // A server picked before the bound was known may not meet it.
                if asked.as_ref().is_some_and(|(_, b)| !place.fits(*b)) {
                    asked = None;
                }
            }
        }
        let (mut server, backend) = match asked.take() {
            Some(pair) => pair,
            None => match hold.connect(dp, place, stopping, leg).await {
                Ok(pair) => pair,
                Err(reason) => return Err(Failed::Refused { reason, pending: Some(packet) }),
            },
        };
        let name = &dp.backend(backend).name;
        match &packet {
            Packet::Invalid(len) => return Err(Failed::Invalid(*len)),
            Packet::Opaque(head) => match super::direct::offer(client, &mut server, head, dp, place, backend, deadline).await {
                Offered::Answered(b) => return forward(client, b, server, backend, dp, false, leg).await,
                Offered::Refused(hello) => {
                    let reason =
                        format!("{name} ({}) closed the connection on a direct TLS ClientHello: it does not speak direct TLS", dp.backend(backend).address());
                    return Err(Failed::DirectTls { hello, reason });
                }
                Offered::Abandoned => return Err(Failed::Abandoned),
                Offered::Failed(read, why) => {
                    hold.failed(dp, backend, format!("{name} did not answer the direct TLS ClientHello: {why}"));
                    packet = Packet::Opaque(read);
                }
                Offered::Moved(read) => {
                    hold.moved(dp);
                    packet = Packet::Opaque(read);
                }
            },
            Packet::Untyped { code: CANCEL_REQUEST, bytes } => {
                if let Err(e) = send(&mut server, bytes, dp).await {
                    hold.failed(dp, backend, format!("{name} closed the connection: {e}"));
                    continue;
                }
                return Ok(Opened { server, backend, first: None });
            }
            Packet::Untyped { code: SSL_REQUEST | GSSENC_REQUEST, bytes } => {
                match ask(&mut server, bytes, 1, dp, place, backend, false).await {
                    Answer::Bytes(b) if b[0] == b'N' => {
                        if client.write_all(&b).await.is_err() || client.flush().await.is_err() {
                            return Err(Failed::Abandoned);
                        }
                        dp.metrics.add_bytes(false, 1);
                        // The client goes on in clear; its next packet is the StartupMessage.
                        packet = match read_client(client, deadline).await {
                            Some(Packet::Invalid(len)) => return Err(Failed::Invalid(len)),
                            Some(p) => p,
                            None => return Err(Failed::Abandoned),
                        };
                        asked = Some((server, backend));
                    }
                    // S, G (or an old server's error): the session is the server's from here.
                    Answer::Bytes(b) => return forward(client, b, server, backend, dp, false, leg).await,
                    Answer::Lost(why) => hold.failed(dp, backend, format!("{name} did not answer the encryption request: {why}")),
                    Answer::Moved => hold.moved(dp),
                }
            }
            Packet::Untyped { bytes, .. } => match ask(&mut server, bytes, 0, dp, place, backend, leg.whole_first()).await {
                Answer::Bytes(b) => match wire::first_reply(&b) {
                    Some(FirstReply::Unavailable(why)) => hold.failed(dp, backend, format!("{name} refused the session: {why}")),
                    _ => return forward(client, b, server, backend, dp, true, leg).await,
                },
                Answer::Lost(why) => hold.failed(dp, backend, format!("{name} did not answer the startup: {why}")),
                Answer::Moved => hold.moved(dp),
            },
        }
    }
}

/// The client's own read bound, from `pgfailover.max_lag` / `pgfailover.max_lag_bytes` in its
/// StartupMessage (as `-c` settings in `options`, or as parameters of their own). Unset
/// parts are unbounded here; the configured bounds still apply.
fn client_bound(startup: &[u8]) -> Result<Option<Bound>, String> {
    let params = wire::startup_params(startup);
    let mut settings: Vec<(String, String)> = params.iter().filter(|(k, _)| k.starts_with("pgfailover.")).cloned().collect();
    if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
        settings.extend(wire::option_settings(options).into_iter().filter(|(k, _)| k.starts_with("pgfailover.")));
    }
    if settings.is_empty() {
        return Ok(None);
    }
    let mut bound = Bound { max_lag_bytes: u64::MAX, max_lag: Duration::MAX, min_lsn: 0 };
    for (k, v) in settings {
        match k.as_str() {
            "pgfailover.max_lag" => {
                bound.max_lag = humantime::parse_duration(v.trim())
                    .map_err(|_| format!("invalid value for parameter \"pgfailover.max_lag\": {v:?} (a duration like \"100ms\")"))?;
            }
            "pgfailover.max_lag_bytes" => {
                bound.max_lag_bytes =
                    v.trim().parse().map_err(|_| format!("invalid value for parameter \"pgfailover.max_lag_bytes\": {v:?} (a number of bytes)"))?;
            }
            "pgfailover.min_lsn" => {
                bound.min_lsn = crate::monitor::observation::parse_lsn(&v).ok_or_else(|| {
                    format!("invalid value for parameter \"pgfailover.min_lsn\": {v:?} (an LSN such as 0/3000060, as pg_current_wal_insert_lsn() returns it)")
                })?;
            }
            other => {
                return Err(format!("unrecognized pgfailover parameter \"{other}\" (known: pgfailover.max_lag, pgfailover.max_lag_bytes, pgfailover.min_lsn)"))
            }
        }
    }
    Ok(Some(bound))
}

/// Sends a CancelRequest to every backend that may hold read sessions (answering, not
/// fenced), at once; a server whose process and key do not match ignores it.
async fn cancel_everywhere(dp: &DataPath, request: &[u8]) {
    let live = dp.read_route.borrow().live.clone();
    let sends = live.into_iter().map(|b| async move {
        if let Ok(mut s) = socket::connect(dp.backend(b), &dp.config().proxy).await {
            if s.write_all(request).await.is_ok() {
                dp.metrics.add_bytes(true, request.len() as u64);
                // The server closes the connection once it has read the request.
                let mut sink = [0u8; 1];
                let _ = tokio::time::timeout(dp.config().proxy.connect_timeout, s.read(&mut sink)).await;
            }
        }
    });
    futures_util::future::join_all(sends).await;
}

/// A connection to where the placement points now, if anywhere, not paused, and it accepts.
async fn early_connect<L: Leg>(dp: &DataPath, place: &mut Placement, leg: &L) -> Option<(L::Server, BackendId)> {
    let Pick::Backend(target) = place.pick(dp) else { return None };
    if dp.gate.holds(target) {
        return None;
    }
    leg.connect(dp, target).await.ok().map(|s| (s, target))
}

/// The client's next startup packet, before `deadline`; `None` if it went away or was late.
async fn read_client<C: AsyncRead + Unpin>(client: &mut C, deadline: Instant) -> Option<Packet> {
    match tokio::time::timeout_at(deadline, wire::read_packet(client)).await {
        Ok(Ok(Some(p))) => Some(p),
        _ => None,
    }
}

/// Passes the server's first answer to the client: the session is opened. `readable`: the
/// answer is to a StartupMessage in clear, so the session's framing can be followed.
async fn forward<C, L>(
    client: &mut C,
    mut first: Vec<u8>,
    server: L::Server,
    backend: BackendId,
    dp: &DataPath,
    readable: bool,
    leg: &L,
) -> Result<Opened<L::Server>, Failed>
where
    C: AsyncWrite + Unpin,
    L: Leg,
{
    if readable {
        leg.adjust_first(&mut first);
    }
    if client.write_all(&first).await.is_err() || client.flush().await.is_err() {
        return Err(Failed::Abandoned);
    }
    dp.metrics.add_bytes(false, first.len() as u64);
    Ok(Opened { server, backend, first: readable.then_some(first) })
}

/// One client's wait for a server: the hold deadline, and why the last attempt failed.
struct Hold {
    deadline: Instant,
    counted: bool,
    last_error: Option<String>,
    /// The last server failed us: pause before the next attempt.
    wait_first: bool,
    /// The data path's pause: a held client goes on when it ends.
    pause: tokio::sync::watch::Receiver<Option<crate::cluster::Scope>>,
}

impl Hold {
    /// Records a failed attempt on `backend` and makes the monitor check it now (passive
    /// detection).
    fn failed(&mut self, dp: &DataPath, backend: BackendId, why: String) {
        dp.metrics.connect_error(backend);
        let _ = dp.connect_failed.try_send(backend);
        tracing::debug!(backend = %dp.backend(backend).name, %why, "held client: server failed, retrying");
        self.last_error = Some(why);
        self.wait_first = true;
    }

    /// The route moved away while the client waited for its server's answer (a failover
    /// began): from here it is held like a new client, however long that answer took.
    fn moved(&mut self, dp: &DataPath) {
        self.deadline = self.deadline.max(Instant::now() + dp.config().failover.hold_timeout);
    }

    /// Waits (up to the hold deadline) for a backend to place the client on and connects to
    /// it, retrying while it refuses. On failure returns the text for the client's 57P03.
    async fn connect<L: Leg>(&mut self, dp: &DataPath, place: &mut Placement, stopping: &CancellationToken, leg: &L) -> Result<(L::Server, BackendId), String> {
        loop {
            if std::mem::take(&mut self.wait_first) {
                self.count(dp);
                if Instant::now() >= self.deadline {
                    return Err(place.refusal(self.last_error.as_deref().unwrap_or("no server took the session")));
                }
                self.pause(place, true, stopping).await?;
            }
            // Seen before the pick: a resume from here on wakes the pause below.
            self.pause.borrow_and_update();
            let why = match place.pick(dp) {
                Pick::Backend(target) if dp.gate.holds(target) => {
                    // Held for as long as the pause lasts (PgBouncer's PAUSE does the same):
                    // the hold timeout is for finding a server, and runs again after it.
                    let _held = dp.gate.hold_new();
                    self.count(dp);
                    self.pause(place, false, stopping).await?;
                    self.deadline = self.deadline.max(Instant::now() + dp.config().failover.hold_timeout);
                    continue;
                }
                Pick::Backend(target) => {
                    let backend = dp.backend(target);
                    match leg.connect(dp, target).await {
                        Ok(server) => return Ok((server, target)),
                        Err(e) => {
                            let role = if place.is_read() { "" } else { "primary " };
                            self.failed(dp, target, format!("could not connect to {role}{} ({}): {e}", backend.name, backend.address()));
                            continue;
                        }
                    }
                }
                Pick::Refuse(why) => return Err(place.refusal(&why)),
                Pick::Wait(why) => why,
            };
            self.count(dp);
            if Instant::now() >= self.deadline {
                return Err(place.refusal(self.last_error.as_deref().unwrap_or(&why)));
            }
            self.pause(place, false, stopping).await?;
        }
    }

    /// Counts the client as held, once.
    fn count(&mut self, dp: &DataPath) {
        if !std::mem::replace(&mut self.counted, true) {
            dp.metrics.held();
        }
    }

    /// Waits before the next attempt: a retry delay after a failure, else until the route
    /// changes; never past the deadline. Errs only when the proxy stops.
    async fn pause(&mut self, place: &mut Placement, after_failure: bool, stopping: &CancellationToken) -> Result<(), String> {
        // A `min_lsn` session looks again when its wait ends, to fall back.
        let wake = place.wake_at().unwrap_or(self.deadline).min(self.deadline);
        let pause = &mut self.pause;
        let next = async {
            if after_failure {
                tokio::time::sleep(socket::RETRY_DELAY).await;
            } else {
                tokio::select! {
                    _ = place.changed() => {}
                    // The pause ended or changed (a closed sender means the proxy stops).
                    r = pause.changed() => if r.is_err() { std::future::pending::<()>().await },
                }
            }
        };
        tokio::select! {
            _ = next => Ok(()),
            _ = tokio::time::sleep_until(wake) => Ok(()),
            _ = stopping.cancelled() => Err("the proxy is shutting down".into()),
        }
    }
}
