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
//! Bytes the proxy cannot read as a startup packet (a direct TLS ClientHello, garbage) and
//! CancelRequests go to the routed server unjudged: it decides what they mean.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::route::{self, Route};

use super::datapath::DataPath;
use super::socket;
use super::wire::{self, FirstReply, Packet, CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST};

/// Why a session could not be opened.
pub enum Failed {
    /// The client went away, or sent nothing in time; there is no one to answer.
    Abandoned,
    /// The client sent a length no startup packet can have: closed at once.
    Invalid(u32),
    /// No server took the client within the hold timeout (or the proxy is stopping): answer
    /// with a 57P03 carrying `reason`, after handling `pending`, the client's last packet.
    Refused { reason: String, pending: Option<Packet> },
}

/// A server that has accepted the client, and its index in config order.
pub struct Opened {
    pub server: TcpStream,
    pub backend: usize,
}

/// Reads the client's startup packets and finds them a server, retrying while servers are
/// down or cannot take sessions yet. On success the server's first answer has been passed to
/// the client, and the rest is the splice's.
pub async fn open(client: &mut TcpStream, dp: &DataPath, route: &mut watch::Receiver<Route>, stopping: &CancellationToken) -> Result<Opened, Failed> {
    // The connect to the routed server overlaps the client's first packet on the wire, as a
    // plain splice's would; a failed early connect is retried (and reported) by the hold.
    // The client's whole startup (its packets, not the server's answers) is bounded.
    let deadline = Instant::now() + dp.proxy.startup_timeout;
    let (packet, early) = tokio::join!(read_client(client, deadline), early_connect(dp, route));
    let mut packet = match packet {
        Some(Packet::Invalid(len)) => return Err(Failed::Invalid(len)),
        Some(p) => p,
        None => return Err(Failed::Abandoned),
    };
    let mut hold = Hold { deadline: Instant::now() + dp.hold_timeout, counted: false, last_error: None, wait_first: false };
    // A connected server to use next: the early connect, or one already asked about
    // encryption (it said N) that the StartupMessage goes to.
    let mut asked: Option<(TcpStream, usize)> = early;
    loop {
        let (mut server, backend) = match asked.take() {
            Some(pair) => pair,
            None => match hold.connect(dp, route, stopping).await {
                Ok(pair) => pair,
                Err(reason) => return Err(Failed::Refused { reason, pending: Some(packet) }),
            },
        };
        let name = &dp.backends[backend].name;
        match &packet {
            Packet::Invalid(len) => return Err(Failed::Invalid(*len)),
            Packet::Opaque(bytes) | Packet::Untyped { code: CANCEL_REQUEST, bytes } => {
                if let Err(e) = send(&mut server, bytes, dp).await {
                    hold.failed(dp, backend, format!("{name} closed the connection: {e}"));
                    continue;
                }
                return Ok(Opened { server, backend });
            }
            Packet::Untyped { code: SSL_REQUEST | GSSENC_REQUEST, bytes } => {
                match ask(&mut server, bytes, 1, dp, route, backend).await {
                    Answer::Bytes(b) if b[0] == b'N' => {
                        if client.write_all(&b).await.is_err() {
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
                    Answer::Bytes(b) => return forward(client, b, server, backend, dp).await,
                    Answer::Lost(why) => hold.failed(dp, backend, format!("{name} did not answer the encryption request: {why}")),
                    Answer::Moved => hold.moved(dp),
                }
            }
            Packet::Untyped { bytes, .. } => match ask(&mut server, bytes, 0, dp, route, backend).await {
                Answer::Bytes(b) => match wire::first_reply(&b) {
                    Some(FirstReply::Unavailable(why)) => hold.failed(dp, backend, format!("{name} refused the session: {why}")),
                    _ => return forward(client, b, server, backend, dp).await,
                },
                Answer::Lost(why) => hold.failed(dp, backend, format!("{name} did not answer the startup: {why}")),
                Answer::Moved => hold.moved(dp),
            },
        }
    }
}

/// A connection to the current route target, if there is one and it accepts.
async fn early_connect(dp: &DataPath, route: &watch::Receiver<Route>) -> Option<(TcpStream, usize)> {
    let target = route.borrow().target?;
    socket::connect(&dp.backends[target], &dp.proxy).await.ok().map(|s| (s, target))
}

/// The client's next startup packet, before `deadline`; `None` if it went away or was late.
async fn read_client(client: &mut TcpStream, deadline: Instant) -> Option<Packet> {
    match tokio::time::timeout_at(deadline, wire::read_packet(client)).await {
        Ok(Ok(Some(p))) => Some(p),
        _ => None,
    }
}

async fn send(server: &mut TcpStream, bytes: &[u8], dp: &DataPath) -> std::io::Result<()> {
    server.write_all(bytes).await?;
    dp.metrics.add_bytes(true, bytes.len() as u64);
    Ok(())
}

/// Passes the server's first answer to the client: the session is opened.
async fn forward(client: &mut TcpStream, first: Vec<u8>, server: TcpStream, backend: usize, dp: &DataPath) -> Result<Opened, Failed> {
    if client.write_all(&first).await.is_err() {
        return Err(Failed::Abandoned);
    }
    dp.metrics.add_bytes(false, first.len() as u64);
    Ok(Opened { server, backend })
}

enum Answer {
    /// The server's first bytes: exactly one for an encryption request; for a StartupMessage
    /// at least enough to judge it (a whole ErrorResponse, or the first byte of anything else).
    Bytes(Vec<u8>),
    /// Closed or reset.
    Lost(String),
    /// The route left the server while waiting (a failover): try the new one at once.
    Moved,
}

/// Sends a startup packet and waits for the server's first answer ([`awaiting`]).
async fn ask(server: &mut TcpStream, bytes: &[u8], exact: usize, dp: &DataPath, route: &watch::Receiver<Route>, backend: usize) -> Answer {
    match send(server, bytes, dp).await {
        Ok(()) => awaiting(server, exact, route, backend).await,
        Err(e) => Answer::Lost(e.to_string()),
    }
}

/// Waits for the server's first answer: `exact` bytes if non-zero, else as much as
/// [`wire::first_reply`] needs. Gives up when the route leaves `backend` (the monitor found
/// it hung or lost: the client can go to the new primary instead). There is no time limit
/// of its own: while the monitor still routes to this server it is alive, if slow, and a
/// slow answer beats a refusal. A proxy that starts stopping lets the answer come (the
/// session then drains like any other); the end of the drain period ends the wait.
async fn awaiting(server: &mut TcpStream, exact: usize, route: &watch::Receiver<Route>, backend: usize) -> Answer {
    let read = async {
        let mut buf = Vec::with_capacity(if exact > 0 { exact } else { 512 });
        loop {
            match server.read_buf(&mut buf).await {
                Ok(0) => return Answer::Lost("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Answer::Lost(e.to_string()),
            }
            let enough = if exact > 0 { buf.len() >= exact } else { wire::first_reply(&buf).is_some() };
            if enough {
                return Answer::Bytes(buf);
            }
        }
    };
    let mut route = route.clone();
    tokio::select! {
        a = read => a,
        _ = route::left(&mut route, backend) => Answer::Moved,
    }
}

/// One client's wait for a server: the hold deadline, and why the last attempt failed.
struct Hold {
    deadline: Instant,
    counted: bool,
    last_error: Option<String>,
    /// The last server failed us: pause before the next attempt.
    wait_first: bool,
}

impl Hold {
    /// Records a failed attempt on `backend` and makes the monitor check it now (passive
    /// detection).
    fn failed(&mut self, dp: &DataPath, backend: usize, why: String) {
        dp.metrics.connect_error(backend);
        let _ = dp.connect_failed.try_send(backend);
        tracing::debug!(backend = %dp.backends[backend].name, %why, "held client: server failed, retrying");
        self.last_error = Some(why);
        self.wait_first = true;
    }

    /// The route moved away while the client waited for its server's answer (a failover
    /// began): from here it is held like a new client, however long that answer took.
    fn moved(&mut self, dp: &DataPath) {
        self.deadline = self.deadline.max(Instant::now() + dp.hold_timeout);
    }

    /// Waits (up to the hold deadline) for a routable backend and connects to it, retrying
    /// while it refuses. On failure returns the text for the client's 57P03 error.
    async fn connect(&mut self, dp: &DataPath, route: &mut watch::Receiver<Route>, stopping: &CancellationToken) -> Result<(TcpStream, usize), String> {
        loop {
            if std::mem::take(&mut self.wait_first) {
                self.count(dp);
                if Instant::now() >= self.deadline {
                    return Err(self.refusal(None));
                }
                self.pause(route, true, stopping).await?;
            }
            let current = route.borrow_and_update().clone();
            if let Some(target) = current.target {
                let backend = &dp.backends[target];
                match socket::connect(backend, &dp.proxy).await {
                    Ok(server) => return Ok((server, target)),
                    Err(e) => {
                        self.failed(dp, target, format!("could not connect to primary {} ({}): {e}", backend.name, backend.address()));
                        continue;
                    }
                }
            }
            self.count(dp);
            if Instant::now() >= self.deadline {
                return Err(self.refusal(Some(&current.reason)));
            }
            self.pause(route, false, stopping).await?;
        }
    }

    /// The 57P03 text: why the last attempt failed, else why there is no route.
    fn refusal(&self, route_reason: Option<&str>) -> String {
        let why = self.last_error.as_deref().or(route_reason).unwrap_or("no primary");
        format!("no primary database is available: {why}")
    }

    /// Counts the client as held, once.
    fn count(&mut self, dp: &DataPath) {
        if !std::mem::replace(&mut self.counted, true) {
            dp.metrics.held();
        }
    }

    /// Waits before the next attempt: a retry delay after a failure, else until the route
    /// changes; never past the deadline. Errs only when the proxy stops.
    async fn pause(&self, route: &mut watch::Receiver<Route>, after_failure: bool, stopping: &CancellationToken) -> Result<(), String> {
        let next = async {
            if after_failure {
                tokio::time::sleep(socket::RETRY_DELAY).await;
            } else if route.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = next => Ok(()),
            _ = tokio::time::sleep_until(self.deadline) => Ok(()),
            _ = stopping.cancelled() => Err("the proxy is shutting down".into()),
        }
    }
}
