//! Socket options for both legs of a session, and the bounded connect to a backend.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::{BackendConfig, ProxyConfig};

/// TCP_NODELAY (the protocol is request/response), keepalive and, on Linux,
/// TCP_USER_TIMEOUT, so a session to a partitioned peer dies in seconds.
pub fn tune(stream: &TcpStream, cfg: &ProxyConfig) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let ka = TcpKeepalive::new().with_time(cfg.keepalive_idle).with_interval(cfg.keepalive_interval).with_retries(cfg.keepalive_count);
    sock.set_tcp_keepalive(&ka)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(cfg.user_timeout).filter(|d| !d.is_zero()))?;
    Ok(())
}

/// Connects to a backend within `connect_timeout`, and tunes the socket.
pub async fn connect(backend: &BackendConfig, cfg: &ProxyConfig) -> io::Result<TcpStream> {
    let target = (backend.host.as_str(), backend.port);
    let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(target)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {}", humantime::format_duration(cfg.connect_timeout)))),
    };
    tune(&stream, cfg)?;
    Ok(stream)
}

/// Half-closes the write side so the peer sees EOF while the other direction keeps flowing.
pub fn shutdown_write(stream: &TcpStream) {
    let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// How long to wait between connect attempts while a client is held.
pub const RETRY_DELAY: Duration = Duration::from_millis(100);
