use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::*;

fn ev(kind: EventKind, from: &str) -> Event {
    Event {
        time: "2026-01-01T00:00:00Z".into(),
        kind,
        from: Some(from.into()),
        to: None,
        reason: "r".into(),
        trigger: "automatic".into(),
        duration_ms: None,
        wal_distance_bytes: None,
    }
}

fn fence(reason: &str) -> Fence {
    Fence::new(FenceKind::SplitBrain, reason.into())
}

#[test]
fn journal_without_fence_file_replays_fences() {
    let dir = tempfile::tempdir().unwrap();
    // A journal as an older version wrote it: events only.
    let mut f = std::fs::File::create(dir.path().join("history.jsonl")).unwrap();
    for e in [ev(EventKind::Fence, "pg-a"), ev(EventKind::Fence, "pg-c"), ev(EventKind::Unfence, "pg-c")] {
        writeln!(f, "{}", serde_json::to_string(&e).unwrap()).unwrap();
    }
    f.write_all(b"{garbage\n").unwrap();
    let h = History::open(dir.path()).unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h.fences().keys().collect::<Vec<_>>(), ["pg-a"]);
    assert_eq!(h.newest(1)[0].kind, EventKind::Unfence);
}

#[test]
fn fences_survive_rotation_and_any_amount_of_history() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut h = History::open_with(dir.path(), 2048).unwrap();
        h.push(ev(EventKind::Fence, "pg-a"));
        h.set_fences(Fences::from([("pg-a".to_string(), fence("split brain with pg-b"))]));
        // Far more events than memory or one file holds: the fence event is long gone.
        for i in 0..(MEMORY_CAP + 500) {
            h.push(ev(EventKind::Recovery, &format!("pg-{}", i % 3)));
        }
        assert!(h.flush(Duration::from_secs(10)));
    }
    let current = std::fs::metadata(dir.path().join("history.jsonl")).unwrap().len();
    assert!(current <= 2048 + 512, "rotated at the cap: {current} bytes");
    assert!(dir.path().join("history.1.jsonl").exists());
    let h = History::open_with(dir.path(), 2048).unwrap();
    assert_eq!(h.fences().get("pg-a"), Some(&fence("split brain with pg-b")));
    assert!(h.newest(MEMORY_CAP).iter().all(|e| e.kind == EventKind::Recovery), "the fence event was rotated away");
    let mut h = h;
    h.set_fences(Fences::new());
    assert!(h.flush(Duration::from_secs(10)));
    assert!(History::open(dir.path()).unwrap().fences().is_empty(), "an unfence is stored too");
}

/// A disk that does not answer (here: the event file is a FIFO nobody reads yet) delays
/// the writer, never the caller.
#[test]
fn a_stalled_disk_never_blocks_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path()).unwrap();
    let fifo = dir.path().join("history.jsonl");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
    let started = Instant::now();
    h.push(ev(EventKind::Fence, "pg-a"));
    h.set_fences(Fences::from([("pg-a".to_string(), fence("x"))]));
    h.push(ev(EventKind::Failover, "pg-a"));
    assert!(started.elapsed() < Duration::from_millis(500), "push waited for the disk");
    assert_eq!(h.newest(10).len(), 2, "memory has the events at once");
    assert!(!h.flush(Duration::from_millis(200)), "the writer is stuck on the FIFO");
    // The disk comes back: the events arrive in order.
    let mut reader = std::fs::File::open(&fifo).unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.lines().count() < 2 && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        let n = reader.read(&mut buf).unwrap();
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(text.contains("\"kind\":\"fence\"") && text.contains("\"kind\":\"failover\""), "{text}");
}
