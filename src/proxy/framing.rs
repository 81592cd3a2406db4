//! Following a session's protocol framing without reading its payloads.
//!
//! After the startup, every PostgreSQL message is a type byte and a 4-byte length. The proxy
//! walks those headers in both directions as the bytes pass (never buffering a message), and
//! from them alone knows where each session stands:
//!
//! - what the client sent that still awaits a `ReadyForQuery`: a `Query`, a `FunctionCall`,
//!   or an extended-protocol batch up to its `Sync` (a batch not yet closed by a `Sync` is
//!   in flight too: the client expects its answers);
//! - the transaction status of the last `ReadyForQuery` (`I`, `T`, `E`): its one status byte
//!   is the only payload byte ever looked at.
//!
//! A session is **quiet** when it is idle (`I`) with nothing in flight: its next message
//! starts a new statement, and holding that message back loses nothing. The counts live in
//! a [`Track`] that other tasks read (the pause, the drain); each direction's parser is a
//! [`Framer`] owned by its pump.
//!
//! What the framing cannot follow (a length under 4, which no valid message has) makes the
//! session opaque, as TLS-passthrough sessions are from the start: never quiet, never held.

use std::sync::atomic::{AtomicU32, Ordering};

/// Requests sent that still await a `ReadyForQuery` (the startup counts as one).
const IN_FLIGHT: u32 = 0xFFFF;
/// Extended-protocol messages were sent since the last `Sync`.
const BATCH: u32 = 1 << 16;
/// The last `ReadyForQuery` said `T`: in a transaction block.
const IN_TX: u32 = 1 << 17;
/// The last `ReadyForQuery` said `E`: in a failed transaction block.
const FAILED_TX: u32 = 1 << 18;
/// The client's next message is being held by a pause.
const HELD: u32 = 1 << 19;
/// The framing is not followed (TLS passthrough, or bytes that are no protocol).
const OPAQUE: u32 = 1 << 20;
/// Bytes written to the client may end inside a message: nothing can be injected now.
const DOWN_PARTIAL: u32 = 1 << 21;

/// Anything that makes a session not quiet.
const BUSY: u32 = IN_FLIGHT | BATCH | IN_TX | FAILED_TX | OPAQUE;

/// Where one session stands, written by its own task and read by any other.
///
/// Only the session's task writes (its two pumps are polled by one task, never at once),
/// so every update is a load and a store; the stores that open a new statement are
/// sequentially consistent, pairing with the pause's own (see
/// [`Gate`](super::gate::Gate)).
#[derive(Debug)]
pub struct Track {
    state: AtomicU32,
}

/// A session's standing, as counted by a pause or a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Idle, nothing in flight.
    Quiet,
    /// In a transaction block (`T` or `E`).
    InTransaction,
    /// A statement (or the startup) in flight outside a transaction block.
    Running,
    /// Not followed.
    Opaque,
}

impl Track {
    /// A session whose startup is still under way (its first `ReadyForQuery` ends it).
    pub fn starting() -> Track {
        Track { state: AtomicU32::new(1) }
    }

    /// A session whose bytes the proxy cannot read.
    pub fn opaque() -> Track {
        Track { state: AtomicU32::new(OPAQUE) }
    }

    fn get(&self) -> u32 {
        self.state.load(Ordering::Relaxed)
    }

    fn set(&self, v: u32) {
        self.state.store(v, Ordering::Release);
    }

    pub fn is_opaque(&self) -> bool {
        self.get() & OPAQUE != 0
    }

    /// Idle with nothing in flight.
    pub fn is_quiet(&self) -> bool {
        self.state.load(Ordering::SeqCst) & BUSY == 0
    }

    pub fn is_held(&self) -> bool {
        self.get() & HELD != 0
    }

    pub fn standing(&self) -> Standing {
        let s = self.state.load(Ordering::SeqCst);
        if s & OPAQUE != 0 {
            Standing::Opaque
        } else if s & (IN_TX | FAILED_TX) != 0 {
            Standing::InTransaction
        } else if s & BUSY != 0 {
            Standing::Running
        } else {
            Standing::Quiet
        }
    }

    /// Whether a message can be sent to the client now without cutting one the server sent.
    pub fn client_at_boundary(&self) -> bool {
        self.get() & DOWN_PARTIAL == 0
    }

    /// Stops following the framing.
    pub fn make_opaque(&self) {
        self.set(self.get() | OPAQUE);
    }

    /// Marks a new statement as begun before its first byte is looked at, so a pause that
    /// starts now either sees the session busy or is seen by it (both sides use SeqCst).
    pub(super) fn open(&self) {
        self.state.store(self.get() + 1, Ordering::SeqCst);
    }

    /// Undoes [`open`](Self::open): the statement is held back, or its messages are counted.
    pub(super) fn close(&self) {
        let s = self.get();
        self.set(s - (s & IN_FLIGHT).min(1));
    }

    pub(super) fn set_held(&self, held: bool) {
        let s = self.get();
        self.state.store(if held { s | HELD } else { s & !HELD }, Ordering::SeqCst);
    }

    pub(super) fn set_partial(&self, partial: bool) {
        let s = self.get();
        self.set(if partial { s | DOWN_PARTIAL } else { s & !DOWN_PARTIAL });
    }

    /// A request that awaits its own `ReadyForQuery` (a Query, a FunctionCall, a Sync).
    fn add(&self) {
        let s = self.get();
        if s & IN_FLIGHT == IN_FLIGHT {
            // 65,535 requests pipelined without an answer: stop counting rather than wrap.
            return self.make_opaque();
        }
        self.set(s + 1);
    }

    /// `n` requests counted will never be answered (Syncs the server ignored).
    fn uncount(&self, n: u32) {
        let s = self.get();
        self.set(s - (s & IN_FLIGHT).min(n));
    }

    /// An extended-protocol batch opened (or closed by its Sync).
    fn batch(&self, open: bool) {
        let s = self.get();
        self.set(if open { s | BATCH } else { s & !BATCH });
    }

    /// A `ReadyForQuery` with `status` arrived. Returns true if the session is quiet now.
    fn ready(&self, status: u8) -> bool {
        let s = self.get();
        let tx = match status {
            b'T' => IN_TX,
            b'E' => FAILED_TX,
            _ => 0,
        };
        let next = ((s - (s & IN_FLIGHT).min(1)) & !(IN_TX | FAILED_TX)) | tx;
        self.set(next);
        next & BUSY == 0
    }
}

/// Which way a [`Framer`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

/// One direction's message boundaries, fed the bytes as they pass.
#[derive(Debug)]
pub struct Framer {
    side: Side,
    /// Body bytes of the current message still to pass.
    rest: u64,
    /// A header cut by a read: its bytes so far.
    head: [u8; 5],
    have: u8,
    /// A `ReadyForQuery` header passed; its status byte is next.
    want_status: bool,
    /// Client side: the last message that was not a Sync or Flush was an Execute, and this
    /// many Syncs followed it. If copy data comes next, that Execute started a COPY FROM
    /// STDIN, and the server, in copy-in mode when it read them, ignored those Syncs.
    syncs_after_execute: Option<u32>,
    /// Client side: copy data is flowing (until CopyDone or CopyFail); the server ignores
    /// Syncs and Flushes meanwhile.
    in_copy: bool,
}

/// What a [`Framer::feed`] saw that matters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// The session went quiet (a `ReadyForQuery` left it idle with nothing in flight).
    pub quiet: bool,
    /// The bytes were no protocol: the session is opaque from here.
    pub broken: bool,
}

impl Framer {
    pub fn new(side: Side) -> Framer {
        Framer { side, rest: 0, head: [0; 5], have: 0, want_status: false, syncs_after_execute: None, in_copy: false }
    }

    /// Between two messages: the next byte is a type byte.
    pub fn at_boundary(&self) -> bool {
        self.rest == 0 && self.have == 0 && !self.want_status
    }

    /// Walks `data`'s message headers, updating `track`.
    pub fn feed(&mut self, mut data: &[u8], track: &Track) -> Fed {
        let mut fed = Fed::default();
        while !data.is_empty() {
            if self.want_status {
                self.want_status = false;
                self.rest -= 1;
                fed.quiet = track.ready(data[0]);
                data = &data[1..];
                continue;
            }
            if self.rest > 0 {
                let skip = self.rest.min(data.len() as u64);
                self.rest -= skip;
                data = &data[skip as usize..];
                continue;
            }
            let take = (5 - self.have as usize).min(data.len());
            self.head[self.have as usize..self.have as usize + take].copy_from_slice(&data[..take]);
            self.have += take as u8;
            data = &data[take..];
            if self.have < 5 {
                break;
            }
            self.have = 0;
            let tag = self.head[0];
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
            if len < 4 {
                track.make_opaque();
                fed.broken = true;
                return fed;
            }
            self.rest = u64::from(len) - 4;
            match self.side {
                Side::Frontend => self.client_message(tag, track),
                Side::Backend if tag == b'Z' && self.rest >= 1 => self.want_status = true,
                Side::Backend => {}
            }
        }
        fed
    }
}

impl Framer {
    /// A client message began: count what awaits an answer.
    fn client_message(&mut self, tag: u8, track: &Track) {
        if matches!(tag, b'd' | b'c' | b'f') {
            if let Some(ignored) = self.syncs_after_execute.take() {
                // The Execute started a COPY FROM STDIN: its batch waits for a Sync sent
                // after the copy.
                track.uncount(ignored);
                track.batch(true);
            }
            self.in_copy = tag == b'd';
            return;
        }
        if self.in_copy && matches!(tag, b'S' | b'H') {
            return;
        }
        match tag {
            b'S' => {
                if let Some(n) = self.syncs_after_execute.as_mut() {
                    *n += 1;
                }
                track.batch(false);
                track.add();
            }
            b'H' => track.batch(true),
            b'E' => {
                self.syncs_after_execute = Some(0);
                track.batch(true);
            }
            b'P' | b'B' | b'D' | b'C' => {
                self.syncs_after_execute = None;
                track.batch(true);
            }
            b'Q' | b'F' => {
                self.syncs_after_execute = None;
                track.add();
            }
            _ => self.syncs_after_execute = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn rfq(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }

    /// A session past its startup (its first ReadyForQuery seen).
    fn ready_session() -> (Track, Framer, Framer) {
        let t = Track::starting();
        let (up, mut down) = (Framer::new(Side::Frontend), Framer::new(Side::Backend));
        assert!(!t.is_quiet(), "the startup awaits its ReadyForQuery");
        let mut first = msg(b'R', &[0, 0, 0, 0]);
        first.extend(msg(b'S', b"server_version\x0015\x00"));
        first.extend(msg(b'K', &[0; 8]));
        first.extend(rfq(b'I'));
        assert!(down.feed(&first, &t).quiet);
        (t, up, down)
    }

    #[test]
    fn a_simple_query_is_busy_until_its_ready_for_query() {
        let (t, mut up, mut down) = ready_session();
        up.feed(&msg(b'Q', b"select 1\0"), &t);
        assert_eq!(t.standing(), Standing::Running);
        let mut answer = msg(b'T', &[0; 20]);
        answer.extend(msg(b'D', &[0; 11]));
        answer.extend(msg(b'C', b"SELECT 1\0"));
        assert!(!down.feed(&answer, &t).quiet);
        assert!(!t.is_quiet());
        assert!(down.feed(&rfq(b'I'), &t).quiet);
        assert!(t.is_quiet());
    }

    #[test]
    fn a_transaction_block_is_busy_between_statements() {
        let (t, mut up, mut down) = ready_session();
        up.feed(&msg(b'Q', b"BEGIN\0"), &t);
        down.feed(&[msg(b'C', b"BEGIN\0"), rfq(b'T')].concat(), &t);
        assert_eq!(t.standing(), Standing::InTransaction, "idle in transaction is not quiet");
        up.feed(&msg(b'Q', b"select bad\0"), &t);
        down.feed(&[msg(b'E', b"SERROR\0\0"), rfq(b'E')].concat(), &t);
        assert_eq!(t.standing(), Standing::InTransaction, "a failed transaction still needs its ROLLBACK");
        up.feed(&msg(b'Q', b"ROLLBACK\0"), &t);
        assert!(down.feed(&[msg(b'C', b"ROLLBACK\0"), rfq(b'I')].concat(), &t).quiet);
    }

    #[test]
    fn an_extended_batch_is_in_flight_from_its_first_message_to_the_ready_for_query_of_its_sync() {
        let (t, mut up, mut down) = ready_session();
        up.feed(&msg(b'P', b"\0select $1\0\0\0"), &t);
        assert!(!t.is_quiet(), "a Parse alone opens a batch");
        up.feed(&[msg(b'B', &[0; 10]), msg(b'E', &[0; 5]), msg(b'H', &[])].concat(), &t);
        down.feed(&[msg(b'1', &[]), msg(b'2', &[])].concat(), &t);
        assert!(!t.is_quiet(), "Flush: the batch is still open");
        up.feed(&msg(b'S', &[]), &t);
        assert!(!t.is_quiet());
        assert!(down.feed(&[msg(b'C', b"SELECT 1\0"), rfq(b'I')].concat(), &t).quiet);
    }

    #[test]
    fn pipelined_batches_wait_for_every_sync() {
        let (t, mut up, mut down) = ready_session();
        let batch = [msg(b'B', &[0; 10]), msg(b'E', &[0; 5]), msg(b'S', &[])].concat();
        up.feed(&[batch.clone(), batch.clone(), batch].concat(), &t);
        assert!(!down.feed(&rfq(b'I'), &t).quiet);
        assert!(!down.feed(&rfq(b'I'), &t).quiet);
        assert!(down.feed(&rfq(b'I'), &t).quiet);
    }

    #[test]
    fn copy_in_both_directions_keeps_the_statement_in_flight() {
        let (t, mut up, mut down) = ready_session();
        up.feed(&msg(b'Q', b"copy t from stdin\0"), &t);
        down.feed(&msg(b'G', &[0, 0, 0]), &t);
        up.feed(&[msg(b'd', b"1\n"), msg(b'd', b"2\n"), msg(b'c', &[])].concat(), &t);
        assert!(!t.is_quiet());
        assert!(down.feed(&[msg(b'C', b"COPY 2\0"), rfq(b'I')].concat(), &t).quiet);
        up.feed(&msg(b'Q', b"copy t to stdout\0"), &t);
        down.feed(&[msg(b'H', &[0, 0, 0]), msg(b'd', b"1\n"), msg(b'c', &[]), msg(b'C', b"COPY 1\0")].concat(), &t);
        assert!(!t.is_quiet());
        assert!(down.feed(&rfq(b'I'), &t).quiet);
    }

    #[test]
    fn an_extended_copy_in_ignores_the_syncs_the_server_ignores() {
        let (t, mut up, mut down) = ready_session();
        // Bind, Execute and Sync in one write, as libpq and tokio-postgres send them.
        up.feed(&[msg(b'B', &[0; 10]), msg(b'E', &[0; 5]), msg(b'S', &[])].concat(), &t);
        down.feed(&[msg(b'2', &[]), msg(b'G', &[0, 0, 0])].concat(), &t);
        up.feed(&[msg(b'd', b"1\n"), msg(b'S', &[]), msg(b'd', b"2\n")].concat(), &t);
        assert_eq!(t.standing(), Standing::Running, "copy data flowing");
        up.feed(&[msg(b'c', &[]), msg(b'S', &[])].concat(), &t);
        assert!(down.feed(&[msg(b'C', b"COPY 2\0"), rfq(b'I')].concat(), &t).quiet, "one ReadyForQuery answers the copy");
        // A failed extended COPY (no copy data follows) keeps its Sync.
        up.feed(&[msg(b'B', &[0; 10]), msg(b'E', &[0; 5]), msg(b'S', &[])].concat(), &t);
        assert!(down.feed(&[msg(b'E', b"SERROR\0\0"), rfq(b'I')].concat(), &t).quiet);
    }

    #[test]
    fn headers_and_the_status_byte_may_be_cut_anywhere() {
        let (t, mut up, mut down) = ready_session();
        let q = msg(b'Q', b"select 1\0");
        for b in &q {
            up.feed(std::slice::from_ref(b), &t);
        }
        assert!(up.at_boundary());
        let mut answer = msg(b'D', &[7; 300]);
        answer.extend(rfq(b'I'));
        answer.extend(msg(b'A', b"\0\0\0\x01chan\0\0"));
        let mut quiet = false;
        for chunk in answer.chunks(3) {
            quiet |= down.feed(chunk, &t).quiet;
        }
        assert!(quiet && t.is_quiet() && down.at_boundary());
    }

    #[test]
    fn a_length_no_message_has_makes_the_session_opaque() {
        let (t, mut up, _) = ready_session();
        let fed = up.feed(&[b'Q', 0, 0, 0, 2], &t);
        assert!(fed.broken && t.is_opaque());
        assert_eq!(t.standing(), Standing::Opaque);
        assert!(!t.is_quiet());
    }

    #[test]
    fn an_opened_statement_is_busy_until_closed() {
        let (t, mut up, _) = ready_session();
        t.open();
        assert!(!t.is_quiet());
        up.feed(&msg(b'Q', b"select 1\0"), &t);
        t.close();
        assert_eq!(t.standing(), Standing::Running, "the Query itself keeps it busy");
        let (t, _, _) = ready_session();
        t.open();
        t.close();
        assert!(t.is_quiet(), "a held statement leaves it quiet");
    }

    #[test]
    fn terminate_and_notifications_change_nothing() {
        let (t, mut up, mut down) = ready_session();
        down.feed(&[msg(b'A', b"\0\0\0\x01c\0\0"), msg(b'N', b"SNOTICE\0\0"), msg(b'S', b"a\0b\0")].concat(), &t);
        assert!(t.is_quiet());
        up.feed(&msg(b'X', &[]), &t);
        assert!(t.is_quiet());
    }
}
