//! Reference proxies that show what any Layer-4 proxy can reach on this machine, run beside
//! pgfailover in the same interleaved rounds:
//!
//! - `splice-floor`: the least userspace work per message there is: blocking sockets, one
//!   thread per direction, `recv` then `send`, nothing else (no event loop, no accounting, no
//!   failover). It is not a product; it is the floor a userspace splice cannot go below.
//! - `sockmap`: the bytes never reach userspace. Both sockets of a session go into an eBPF
//!   SOCKHASH whose stream-verdict program redirects every received skb to the peer socket's
//!   transmit path (`bpf_sk_redirect_hash`), so the kernel forwards data without waking the
//!   proxy. Needs root (CAP_BPF + CAP_NET_ADMIN); skipped when `bpf()` refuses.
//!
//! Each runs as a child process of the benchmark binary (`floor-proxy <kind> <listen>
//! <upstream>`), so its CPU time is measured like the other proxies'.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

/// Child-process mode: serve `kind` ("splice" or "sockmap") on `listen`, forwarding to `upstream`.
pub fn main(kind: &str, listen: &str, upstream: &str) {
    let listener = TcpListener::bind(listen).expect("bind");
    let upstream: SocketAddr = upstream.parse().unwrap();
    let map = match kind {
        "sockmap" => match Redirector::new() {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("sockmap unavailable: {e}");
                std::process::exit(3);
            }
        },
        _ => None,
    };
    println!("ready");
    let _ = io::stdout().flush();
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else { continue };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        match &map {
            None => {
                thread::spawn(move || splice(client, server));
            }
            Some(m) => {
                if let Err(e) = m.pair(&client, &server) {
                    eprintln!("sockmap insert: {e}");
                    continue;
                }
                thread::spawn(move || watch(client, server));
            }
        }
    }
}

fn splice(client: TcpStream, server: TcpStream) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let down = thread::spawn(move || pump(s2, c2));
    pump(client, server);
    let _ = down.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The in-kernel path: the verdict program forwards the data. This thread first forwards
/// bytes that reached a socket before the pair was in the map (the client's first message),
/// then sleeps until a side sends FIN and propagates the EOF once everything received on that
/// side has been delivered to the other. It waits for POLLRDHUP only: a socket in a sockmap
/// can report POLLIN with nothing for userspace to read, and spinning on that would keep the
/// CPUs awake and distort every measurement on the machine.
fn watch(client: TcpStream, server: TcpStream) {
    let socks = [&client, &server];
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..2 {
        loop {
            // SAFETY: recv(2) writes at most buf.len() bytes into buf, which outlives the call.
            let n = unsafe { libc::recv(socks[i].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            let mut out = socks[1 - i];
            if n <= 0 || out.write_all(&buf[..n as usize]).is_err() {
                break;
            }
        }
    }
    let mut open = [true, true];
    while open[0] || open[1] {
        let mut fds: Vec<libc::pollfd> =
            socks.iter().zip(open).map(|(s, o)| libc::pollfd { fd: if o { s.as_raw_fd() } else { -1 }, events: libc::POLLRDHUP, revents: 0 }).collect();
        // SAFETY: poll(2) reads and writes the two pollfd entries of fds, which outlives the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            break;
        }
        for i in 0..2 {
            if fds[i].revents == 0 {
                continue;
            }
            let (from, to) = (socks[i], socks[1 - i]);
            // EOF (or error): wait until the peer socket has had every received byte
            // acknowledged, so the half-close does not overtake data the kernel is still
            // forwarding, then pass the EOF on.
            let deadline = Instant::now() + Duration::from_secs(2);
            while tcp_bytes(from.as_raw_fd()).0.saturating_sub(1) > tcp_bytes(to.as_raw_fd()).1 && Instant::now() < deadline {
                thread::sleep(Duration::from_micros(200));
            }
            let _ = to.shutdown(Shutdown::Write);
            open[i] = false;
        }
    }
}

/// (bytes received incl. the FIN's sequence number, bytes acknowledged by the peer).
fn tcp_bytes(fd: RawFd) -> (u64, u64) {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most len bytes into info (len is its size).
    if unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) } != 0 || len < 136 {
        return (0, 0);
    }
    // struct tcp_info: tcpi_bytes_acked at 120, tcpi_bytes_received at 128.
    let acked = u64::from_ne_bytes(info[120..128].try_into().unwrap());
    let received = u64::from_ne_bytes(info[128..136].try_into().unwrap());
    (received, acked)
}

/// A SOCKHASH keyed by socket cookie whose value is the peer socket, with a stream-verdict
/// program attached: skb received on socket S -> transmit on map[cookie(S)].
struct Redirector {
    map: RawFd,
    _prog: RawFd,
}

#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Attr([0; 144])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<RawFd> {
    // SAFETY: bpf(2) reads and writes at most attr.0.len() bytes of attr, which outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
const FUNC_GET_SOCKET_COOKIE: i32 = 46;
const FUNC_SK_REDIRECT_HASH: i32 = 72;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64) | ((dst as u64 | (src as u64) << 4) << 8) | ((off as u16 as u64) << 16) | ((imm as u32 as u64) << 32)
}

impl Redirector {
    fn new() -> io::Result<Self> {
        let map = bpf(BPF_MAP_CREATE, Attr::new().u32(0, BPF_MAP_TYPE_SOCKHASH).u32(4, 8).u32(8, 8).u32(12, 65536))?;
        // r6 = ctx; r0 = get_socket_cookie(ctx); *(u64*)(fp-8) = r0;
        // return sk_redirect_hash(ctx, map, fp-8, 0) ?: SK_PASS
        let prog: Vec<u64> = vec![
            insn(0xbf, 6, 1, 0, 0),
            insn(0x85, 0, 0, 0, FUNC_GET_SOCKET_COOKIE),
            insn(0x7b, 10, 0, -8, 0),
            insn(0xbf, 1, 6, 0, 0),
            insn(0x18, 2, 1, 0, map), // ld_imm64 r2 = map (BPF_PSEUDO_MAP_FD)
            0,
            insn(0xbf, 3, 10, 0, 0),
            insn(0x07, 3, 0, 0, -8),
            insn(0xb7, 4, 0, 0, 0),
            insn(0x85, 0, 0, 0, FUNC_SK_REDIRECT_HASH),
            insn(0x55, 0, 0, 1, 0), // if r0 != SK_DROP: return it
            insn(0xb7, 0, 0, 0, 1), // lookup failed: SK_PASS (the watcher forwards it)
            insn(0x95, 0, 0, 0, 0),
        ];
        let license = b"GPL\0";
        let mut log = vec![0u8; 4096];
        let loaded = bpf(
            BPF_PROG_LOAD,
            Attr::new()
                .u32(0, BPF_PROG_TYPE_SK_SKB)
                .u32(4, prog.len() as u32)
                .u64(8, prog.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64),
        );
        let prog_fd = loaded.map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            io::Error::new(e.kind(), format!("{e}: {}", text.trim_end_matches('\0')))
        })?;
        bpf(BPF_PROG_ATTACH, Attr::new().u32(0, map as u32).u32(4, prog_fd as u32).u32(8, BPF_SK_SKB_STREAM_VERDICT))?;
        Ok(Redirector { map, _prog: prog_fd })
    }

    fn pair(&self, a: &TcpStream, b: &TcpStream) -> io::Result<()> {
        self.insert(cookie(a)?, b)?;
        self.insert(cookie(b)?, a)
    }

    fn insert(&self, key: u64, value: &TcpStream) -> io::Result<()> {
        let fd = value.as_raw_fd() as u64;
        bpf(BPF_MAP_UPDATE_ELEM, Attr::new().u32(0, self.map as u32).u64(8, &key as *const u64 as u64).u64(16, &fd as *const u64 as u64)).map(|_| ())
    }
}

fn cookie(s: &TcpStream) -> io::Result<u64> {
    let mut v = 0u64;
    let mut len = 8 as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most len (8) bytes into v, a u64.
    if unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&mut v as *mut u64).cast(), &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}
