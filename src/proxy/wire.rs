//! The few PostgreSQL wire-protocol pieces the proxy itself speaks: reading the client's
//! startup packets, judging the server's first answer, and sending a FATAL `ErrorResponse`
//! to a client it must refuse. Everything after the server's first answer is spliced
//! without being parsed.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
#[cfg(test)]
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Request codes of the untyped startup packets.
pub const SSL_REQUEST: u32 = 80877103;
pub const GSSENC_REQUEST: u32 = 80877104;
pub const CANCEL_REQUEST: u32 = 80877102;
/// SQLSTATE "cannot_connect_now".
pub const SQLSTATE_CANNOT_CONNECT_NOW: &str = "57P03";

/// SQLSTATE "invalid_parameter_value".
pub const SQLSTATE_INVALID_PARAMETER_VALUE: &str = "22023";
/// SQLSTATE "admin_shutdown": a session ended by an operator's action (here: the primary
/// changed), as PostgreSQL's own `pg_terminate_backend` says.
pub const SQLSTATE_ADMIN_SHUTDOWN: &str = "57P01";
/// SQLSTATE "too_many_connections".
pub const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";

/// The largest startup packet we accept (PostgreSQL's own limit is 10000).
const MAX_STARTUP_LEN: u32 = 10_000;
/// The first byte of a TLS handshake record: a direct-TLS ClientHello (PostgreSQL 17's
/// `sslnegotiation=direct`) instead of a length.
const TLS_HANDSHAKE: u8 = 0x16;

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

/// One packet of the startup phase, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A well-formed untyped packet: `code` is the request code (SSLRequest, CancelRequest,
    /// ...) or the protocol version of a StartupMessage; `bytes` is the whole packet.
    Untyped { code: u32, bytes: Vec<u8> },
    /// The first 8 bytes of a direct-TLS ClientHello: the proxy does not judge them, the
    /// server does.
    Opaque(Vec<u8>),
    /// A length no startup packet can have (under 8 or over 10000): PostgreSQL closes such
    /// a connection at once, and so does the proxy.
    Invalid(u32),
}

/// Reads one startup-phase packet. `Ok(None)`: the client closed before a whole packet
/// arrived. The length is judged as soon as its 4 bytes are in, as PostgreSQL does, so
/// garbage is refused at once however little of it follows.
pub async fn read_packet<C: AsyncRead + Unpin>(client: &mut C) -> std::io::Result<Option<Packet>> {
    let mut head = [0u8; 8];
    let eof = |e: std::io::Error| if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(None) } else { Err(e) };
    if let Err(e) = client.read_exact(&mut head[..4]).await {
        return eof(e);
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if head[0] != TLS_HANDSHAKE && !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Ok(Some(Packet::Invalid(len)));
    }
    if let Err(e) = client.read_exact(&mut head[4..]).await {
        return eof(e);
    }
    if head[0] == TLS_HANDSHAKE {
        return Ok(Some(Packet::Opaque(head.to_vec())));
    }
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let mut bytes = vec![0u8; len as usize];
    bytes[..8].copy_from_slice(&head);
    match client.read_exact(&mut bytes[8..]).await {
        Ok(_) => Ok(Some(Packet::Untyped { code, bytes })),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The protocol version 3.0 of a StartupMessage (its "code").
pub const PROTOCOL_3: u32 = 0x0003_0000;

/// The parameters of a StartupMessage (`user`, `database`, `options`, …), in order.
pub fn startup_params(packet: &[u8]) -> Vec<(String, String)> {
    let body = packet.get(8..).unwrap_or_default();
    let mut fields = body.split(|b| *b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        if k.is_empty() {
            break;
        }
        out.push((k, v));
    }
    out
}

/// `-c name=value` settings in a StartupMessage's `options` (also `-cname=value` and
/// `--name=value`), backslash escapes honoured as the server does.
pub fn option_settings(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("-c").map(str::to_string)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// Whether `buf` begins with a whole typed message (type byte, length, body); an impossible
/// length counts as whole (nothing more would help reading it).
pub fn whole_message(buf: &[u8]) -> bool {
    match buf.get(1..5) {
        Some(len) => {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            !(4..=MAX_FIRST_ERROR_LEN).contains(&len) || buf.len() > len
        }
        None => false,
    }
}

/// What a server's first message in answer to a StartupMessage says about it.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstReply {
    /// Anything but "cannot take connections now": the session belongs to this server.
    Accepted,
    /// A FATAL ErrorResponse with a SQLSTATE meaning the server is starting up, shutting
    /// down or in crash recovery (57P01, 57P02, 57P03): another server may take the client.
    Unavailable(String),
}

/// SQLSTATEs of a server that cannot take a session right now, but another one could:
/// admin_shutdown, crash_shutdown, cannot_connect_now.
const UNAVAILABLE_SQLSTATES: [&[u8]; 3] = [b"57P01", b"57P02", b"57P03"];
/// An ErrorResponse longer than this is not read whole; it is forwarded as it is.
const MAX_FIRST_ERROR_LEN: usize = 16 * 1024;

/// Judges the server's first bytes. `None`: not enough bytes yet to tell (an ErrorResponse
/// that has not fully arrived). The ErrorResponse is read with PostgreSQL's own message
/// parser (`postgres-protocol`, as tokio-postgres uses it).
pub fn first_reply(buf: &[u8]) -> Option<FirstReply> {
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::message::backend::{Header, Message};
    if *buf.first()? != b'E' {
        return Some(FirstReply::Accepted);
    }
    let header = match Header::parse(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(_) => return Some(FirstReply::Accepted),
    };
    if !(4..=MAX_FIRST_ERROR_LEN).contains(&(header.len() as usize)) {
        return Some(FirstReply::Accepted);
    }
    if buf.len() < header.len() as usize + 1 {
        return None;
    }
    let mut bytes = bytes::BytesMut::from(&buf[..header.len() as usize + 1]);
    let Ok(Some(Message::ErrorResponse(body))) = Message::parse(&mut bytes) else { return Some(FirstReply::Accepted) };
    let (mut code, mut message) = (None, None);
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = Some(f.value_bytes().to_vec()),
            b'M' => message = Some(String::from_utf8_lossy(f.value_bytes()).into_owned()),
            _ => {}
        }
    }
    match code {
        Some(c) if UNAVAILABLE_SQLSTATES.contains(&c.as_slice()) => {
            Some(FirstReply::Unavailable(format!("{} ({})", message.unwrap_or_default(), String::from_utf8_lossy(&c))))
        }
        _ => Some(FirstReply::Accepted),
    }
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

impl Refused {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Startup => "answered",
            Refused::Cancel => "cancel request",
            Refused::Abandoned => "client gone or silent",
        }
    }
}

/// Refuses a client properly: `N` to SSL/GSS encryption requests, then the StartupMessage
/// is answered with a FATAL `sqlstate` carrying `message`, all before `deadline`. `pending`
/// is a packet already read from the client and not yet answered. Never panics on bad bytes.
pub async fn refuse<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C, pending: Option<Packet>, sqlstate: &str, message: &str, deadline: Instant) -> Refused {
    let outcome = tokio::time::timeout_at(deadline, refuse_inner(client, pending, sqlstate, message)).await;
    let outcome = outcome.unwrap_or(Ok(Refused::Abandoned)).unwrap_or(Refused::Abandoned);
    let _ = client.shutdown().await;
    outcome
}

async fn refuse_inner<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    mut pending: Option<Packet>,
    sqlstate: &str,
    message: &str,
) -> std::io::Result<Refused> {
    loop {
        let packet = match pending.take() {
            Some(p) => p,
            None => match read_packet(client).await {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => return Ok(Refused::Abandoned),
            },
        };
        match packet {
            Packet::Opaque(_) | Packet::Invalid(_) => return Ok(Refused::Abandoned),
            Packet::Untyped { code: SSL_REQUEST | GSSENC_REQUEST, .. } => {
                client.write_all(b"N").await?;
                client.flush().await?;
            }
            Packet::Untyped { code: CANCEL_REQUEST, .. } => return Ok(Refused::Cancel),
            Packet::Untyped { .. } => {
                let msg = error_response("FATAL", sqlstate, message, None);
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
    fn startup_parameters_and_option_settings() {
        let mut p = vec![0, 0, 0, 0, 0, 3, 0, 0];
        for f in ["user", "alice", "options", "-c pgfailover.max_lag=100ms --pgfailover.max_lag_bytes=0 -cwork_mem=4MB", ""] {
            p.extend(f.as_bytes());
            p.push(0);
        }
        let params = startup_params(&p);
        assert_eq!(params[0], ("user".into(), "alice".into()));
        let opts = option_settings(&params[1].1);
        assert_eq!(
            opts,
            vec![("pgfailover.max_lag".into(), "100ms".into()), ("pgfailover.max_lag_bytes".into(), "0".into()), ("work_mem".into(), "4MB".into())]
        );
        assert_eq!(option_settings("-c a=x\\ y"), vec![("a".into(), "x y".into())]);
        assert!(startup_params(b"short").is_empty());
    }

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

    #[test]
    fn first_reply_tells_unavailable_servers_from_everything_else() {
        let shutting = error_response("FATAL", "57P03", "the database system is shutting down", None);
        assert_eq!(first_reply(&shutting), Some(FirstReply::Unavailable("the database system is shutting down (57P03)".into())));
        for code in ["57P01", "57P02"] {
            assert!(matches!(first_reply(&error_response("FATAL", code, "x", None)), Some(FirstReply::Unavailable(_))));
        }
        // Errors the client must see: a wrong database, too many clients.
        for code in ["3D000", "53300", "28000"] {
            assert_eq!(first_reply(&error_response("FATAL", code, "x", None)), Some(FirstReply::Accepted));
        }
        // An authentication request, a protocol negotiation: the session is the server's.
        assert_eq!(first_reply(b"R\0\0\0\x08\0\0\0\0"), Some(FirstReply::Accepted));
        assert_eq!(first_reply(b"v"), Some(FirstReply::Accepted));
        // Not enough bytes to judge an error yet.
        assert_eq!(first_reply(b""), None);
        assert_eq!(first_reply(&shutting[..3]), None);
        assert_eq!(first_reply(&shutting[..shutting.len() - 1]), None);
        // A declared length beyond what we read whole: passed on as it is.
        assert_eq!(first_reply(b"E\x7f\xff\xff\xff"), Some(FirstReply::Accepted));
    }

    #[tokio::test]
    async fn read_packet_frames_startup_packets_and_leaves_the_rest_opaque() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&ssl).await.unwrap();
            s.write_all(&tls_hello).await.unwrap();
            s.write_all(&[0, 0, 0, 9]).await.unwrap();
        });
        let (mut s, _) = l.accept().await.unwrap();
        writer.await.unwrap();
        assert_eq!(read_packet(&mut s).await.unwrap(), Some(Packet::Untyped { code: SSL_REQUEST, bytes: ssl.to_vec() }));
        assert_eq!(read_packet(&mut s).await.unwrap(), Some(Packet::Opaque(tls_hello[..8].to_vec())));
        // The hello's next byte and the 0, 0, 0 after it make no possible length.
        assert_eq!(read_packet(&mut s).await.unwrap(), Some(Packet::Invalid(0xfc00_0000)));
        // Then one byte and a close.
        assert_eq!(read_packet(&mut s).await.unwrap(), None);
    }

    /// "hello\n": its first four bytes are a length no startup packet has; PostgreSQL closes
    /// such a connection without waiting for more, and so does the proxy.
    #[tokio::test]
    async fn an_impossible_length_is_judged_from_four_bytes() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        c.write_all(b"hello\n").await.unwrap();
        assert_eq!(read_packet(&mut s).await.unwrap(), Some(Packet::Invalid(0x6865_6c6c)));
        c.write_all(&[0, 0, 0, 4]).await.unwrap();
        let (mut s2, _) = {
            let mut c2 = TcpStream::connect(addr).await.unwrap();
            c2.write_all(&[0, 0, 0, 4]).await.unwrap();
            let pair = l.accept().await.unwrap();
            drop(c2);
            pair
        };
        assert_eq!(read_packet(&mut s2).await.unwrap(), Some(Packet::Invalid(4)));
    }
}
