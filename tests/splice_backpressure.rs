//! The splice loop under backpressure: the receiver reads slowly, so the proxy's writes block
//! while more data arrives on the other socket. The sender then stops and waits for every
//! byte to arrive (like the end of a COPY): a lost readiness wake-up leaves the tail of a
//! burst unread forever, which shows up here as a timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgfailover::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_of_every_burst_arrives_when_the_reader_is_slow() {
    let sink_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (sink_addr, front_addr) = (sink_l.local_addr().unwrap(), front.local_addr().unwrap());
    tokio::spawn(async move {
        let metrics = Metrics::new(&["sink".to_string()]);
        let (inbound, _) = front.accept().await.unwrap();
        let outbound = TcpStream::connect(sink_addr).await.unwrap();
        pgfailover::proxy::session::splice(&inbound, &outbound, &metrics).await;
    });
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    tokio::spawn(async move {
        let (mut s, _) = sink_l.accept().await.unwrap();
        let (mut expect, mut buf) = (0u8, vec![0u8; 2048]);
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            for b in &buf[..n] {
                assert_eq!(*b, expect, "byte out of order");
                expect = expect.wrapping_add(1);
            }
            let total = seen.fetch_add(n, Ordering::SeqCst) + n;
            // A slow reader: the proxy's writes to it keep blocking.
            if total % (64 * 1024) < n {
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
    });
    let mut client = TcpStream::connect(front_addr).await.unwrap();
    let (mut next, mut sent) = (0u8, 0usize);
    for burst in 0..300 {
        for _ in 0..(50 + burst % 70) {
            let chunk: Vec<u8> = (0..3000)
                .map(|_| {
                    let b = next;
                    next = next.wrapping_add(1);
                    b
                })
                .collect();
            client.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::SeqCst) < sent {
            assert!(tokio::time::Instant::now() < deadline, "burst {burst}: {} of {sent} bytes arrived (lost wake-up)", received.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
