//! In-process micro-benchmark of the splice loop: a client talks to a loopback echo server
//! through `session::splice`, compared with talking to it directly. Judge a data-path change
//! in seconds:  cargo bench --bench splice

use std::sync::Arc;

use pgfailover::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

fn main() {
    divan::main();
}

async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A client connected to the echo server, directly or through a spliced pair.
fn client(rt: &Runtime, through_proxy: bool) -> TcpStream {
    rt.block_on(async {
        let echo = echo_server().await;
        if !through_proxy {
            let s = TcpStream::connect(echo).await.unwrap();
            s.set_nodelay(true).unwrap();
            return s;
        }
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(&["echo".to_string()]));
        tokio::spawn(async move {
            let (inbound, _) = front.accept().await.unwrap();
            let outbound = TcpStream::connect(echo).await.unwrap();
            inbound.set_nodelay(true).unwrap();
            outbound.set_nodelay(true).unwrap();
            pgfailover::proxy::session::splice(&inbound, &outbound, &metrics).await;
        });
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s
    })
}

fn round_trip(bencher: divan::Bencher, size: usize, through_proxy: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut s = client(&rt, through_proxy);
    let out = vec![7u8; size];
    let mut back = vec![0u8; size];
    bencher.counter(divan::counter::BytesCount::new(size)).bench_local(|| {
        rt.block_on(async {
            let (mut r, mut w) = s.split();
            let write = w.write_all(&out);
            let read = r.read_exact(&mut back);
            let (a, b) = tokio::join!(write, read);
            a.unwrap();
            b.unwrap();
        })
    });
}

#[divan::bench(args = [64, 16 * 1024, 1024 * 1024])]
fn direct(bencher: divan::Bencher, size: usize) {
    round_trip(bencher, size, false);
}

#[divan::bench(args = [64, 16 * 1024, 1024 * 1024])]
fn spliced(bencher: divan::Bencher, size: usize) {
    round_trip(bencher, size, true);
}
