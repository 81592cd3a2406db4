//! Memory per idle client connection: RSS growth of a proxy process while another process
//! holds N idle connections through it (a proxy needs two descriptors per client and this
//! machine caps a process at 20,000, so client, proxy and backend are separate processes).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::targets::rss_bytes;

/// Child-process mode: open `n` sessions to `addr`, say "ready", hold them until stdin closes.
pub fn client_main(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(open_session(addr).expect("idle session"));
    }
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

/// Bytes of proxy RSS per idle connection through `proxy` (process `pid`).
pub fn per_connection(proxy: SocketAddr, pid: u32, n: usize) -> f64 {
    // Warm up allocator arenas and the runtime with a handful of sessions first.
    warm(proxy, 50);
    let before = settled_rss(pid);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["idle-client", &proxy.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn idle client");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let after = settled_rss(pid);
    drop(child.stdin.take());
    let _ = child.wait();
    (after as f64 - before as f64) / n as f64
}

/// A connection past its StartupMessage, with the server's first answer (PgBouncer's
/// authentication request) read: what a proxy carries for an idle client. A bare TCP connect
/// is not one: pgfailover's session is still in its opening, waiting for the startup.
fn open_session(addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    let mut body = 196608u32.to_be_bytes().to_vec();
    for kv in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    s.write_all(&(body.len() as u32 + 4).to_be_bytes())?;
    s.write_all(&body)?;
    let mut first = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.read_exact(&mut first)?;
    Ok(s)
}

fn warm(proxy: SocketAddr, n: usize) {
    let held: Vec<_> = (0..n).filter_map(|_| open_session(proxy).ok()).collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(held);
}

/// RSS once it stops changing (the proxy has finished setting up every session).
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = rss_bytes(pid);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = rss_bytes(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
