//! One blocking HTTP/1.1 GET to a process's admin port: small enough for the benchmarks'
//! plain threads and for readiness polls, with no client library in between.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How often the harness's polls look again.
pub const POLL: Duration = Duration::from_millis(20);

/// An admin port's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body as text (the admin port answers JSON or Prometheus text).
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// `GET path`; None when nothing answers at `addr` (not listening yet, or gone).
pub fn get(addr: SocketAddr, path: &str) -> Option<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    // A frozen process accepts (the kernel does) and never answers: do not wait for ever.
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some(Reply { status, body })
}

/// `GET path` off the async runtime's workers.
pub async fn get_async(addr: SocketAddr, path: &str) -> Option<Reply> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get(addr, &path)).await.ok().flatten()
}
