//! A man in the middle between the active (dialing) and the standby (accepting): it passes the
//! handshake and the bulk, then replays, reorders, flips a bit in, or injects garbage among the
//! active's transport frames. Each time the standby must close the session, count one rejected
//! frame, keep what it applied before, and apply nothing from the bad frame.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vpngw_sync::{Notice, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Forward the next record frame and keep it; forward the one after, then send the kept one
    /// again.
    Replay,
    /// Hold the next record frame, forward the one after, then the held one.
    Reorder,
    /// Flip one bit in the next record frame.
    Flip,
    /// Inject a well-framed random frame before the next record frame.
    Garbage,
    /// Accept and hang up at once (so the test sees the state the attack left).
    Blocked,
    /// Forward nothing more from the active (a black hole one way).
    Silent,
}

/// Frames from the active that carry a record (the test's bodies are 1500 bytes); heartbeats,
/// role messages and the handshake are far smaller.
const RECORD_FRAME: usize = 1000;

async fn relay(listen: TcpListener, upstream: SocketAddr, mode: Arc<Mutex<Mode>>) {
    loop {
        let (down, _) = listen.accept().await.unwrap();
        if *mode.lock().unwrap() == Mode::Blocked {
            drop(down);
            continue;
        }
        let Ok(up) = TcpStream::connect(upstream).await else { continue };
        let (mut down_rd, mut down_wr) = down.into_split();
        let (mut up_rd, mut up_wr) = up.into_split();
        // Standby to active: untouched.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut up_rd, &mut down_wr).await;
        });
        let mode = mode.clone();
        tokio::spawn(async move {
            let mut held: Option<Vec<u8>> = None;
            let mut seed = 0x1234_5678_9abc_def1u64;
            loop {
                let mut len = [0u8; 2];
                if down_rd.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut frame = len.to_vec();
                frame.resize(2 + usize::from(u16::from_be_bytes(len)), 0);
                if down_rd.read_exact(&mut frame[2..]).await.is_err() {
                    return;
                }
                let m = *mode.lock().unwrap();
                let mut out = Vec::new();
                if m == Mode::Silent {
                    continue;
                }
                if frame.len() < RECORD_FRAME || m == Mode::Pass || m == Mode::Blocked {
                    out.extend_from_slice(&frame);
                } else {
                    match (m, held.take()) {
                        (Mode::Replay, None) => {
                            out.extend_from_slice(&frame);
                            held = Some(frame);
                        }
                        (Mode::Replay, Some(first)) => {
                            out.extend_from_slice(&frame);
                            out.extend_from_slice(&first);
                            *mode.lock().unwrap() = Mode::Blocked;
                        }
                        (Mode::Reorder, None) => held = Some(frame),
                        (Mode::Reorder, Some(first)) => {
                            out.extend_from_slice(&frame);
                            out.extend_from_slice(&first);
                            *mode.lock().unwrap() = Mode::Blocked;
                        }
                        (Mode::Flip, _) => {
                            frame[2 + 40] ^= 0x08;
                            out.extend_from_slice(&frame);
                            *mode.lock().unwrap() = Mode::Blocked;
                        }
                        (Mode::Garbage, _) => {
                            let junk = body(seed, 300);
                            seed += 1;
                            out.extend_from_slice(&(junk.len() as u16).to_be_bytes());
                            out.extend_from_slice(&junk);
                            out.extend_from_slice(&frame);
                            *mode.lock().unwrap() = Mode::Blocked;
                        }
                        (Mode::Pass | Mode::Blocked | Mode::Silent, _) => unreachable!(),
                    }
                }
                if up_wr.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn attack(mode: Mode) {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    let relay_mode = Arc::new(Mutex::new(Mode::Pass));
    tokio::spawn(relay(relay_listener, b_addr, relay_mode.clone()));

    let a = node(config("a", "b", a_addr, relay_addr, KEY), Role::Active, 1);
    let mut expected = std::collections::BTreeMap::new();
    put_all(&a, &mut expected, (0..10).map(|i| (format!("good/{i}"), body(i, 1500))));
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    // One increment through the relay before the attack: it must survive it.
    put_all(&a, &mut expected, [("good/late".to_string(), body(99, 1500))]);
    until("increment before the attack", 2 * SECOND, || b.h.replica().records == expected).await;
    assert_eq!(b.h.stats().rejected_frames, 0);

    *relay_mode.lock().unwrap() = mode;
    match mode {
        Mode::Replay => {
            // The first is applied, then the second; the replayed first must not undo the second.
            a.h.put("good/0".into(), body(1000, 1500));
            a.h.put("good/0".into(), body(2000, 1500));
            expected.insert("good/0".into(), body(2000, 1500));
        }
        Mode::Reorder => {
            a.h.put("bad/1".into(), body(1001, 1500));
            a.h.put("bad/2".into(), body(1002, 1500));
        }
        Mode::Flip | Mode::Garbage => a.h.put("bad/1".into(), body(1001, 1500)),
        Mode::Pass | Mode::Blocked | Mode::Silent => unreachable!(),
    }
    let reason = notice(&mut b, 3 * SECOND, |n| match n {
        Notice::Lost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("rejected"), "{mode:?}: {reason}");
    let stats = b.h.stats();
    assert_eq!(stats.rejected_frames, 1, "{mode:?}: {stats:?}");
    assert!(!stats.connected);
    assert_eq!(b.h.replica().records, expected, "{mode:?}");
    assert!(b.h.replica().complete, "a lost partner leaves the replica complete");
    assert_eq!(stats.auth_failures, 0);

    // The relay behaves again: the next session resyncs everything the active holds.
    *relay_mode.lock().unwrap() = Mode::Pass;
    let healed = match mode {
        Mode::Replay => expected.clone(),
        _ => {
            let mut all = expected.clone();
            all.insert("bad/1".into(), body(1001, 1500));
            if mode == Mode::Reorder {
                all.insert("bad/2".into(), body(1002, 1500));
            }
            all
        }
    };
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    assert_eq!(b.h.replica().records, healed);
    assert_eq!(b.h.stats().rejected_frames, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frame_closes_the_session() {
    attack(Mode::Replay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_frames_close_the_session() {
    attack(Mode::Reorder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_closes_the_session() {
    attack(Mode::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_garbage_closes_the_session() {
    attack(Mode::Garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partner_is_lost_after_dead_after() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    let relay_mode = Arc::new(Mutex::new(Mode::Pass));
    tokio::spawn(relay(relay_listener, b_addr, relay_mode.clone()));
    let a = node(config("a", "b", a_addr, relay_addr, KEY), Role::Active, 1);
    a.h.put("k".into(), body(1, 1500));
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    *relay_mode.lock().unwrap() = Mode::Silent;
    let t0 = std::time::Instant::now();
    let reason = notice(&mut b, 3 * SECOND, |n| match n {
        Notice::Lost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    let took = t0.elapsed();
    assert!(reason.contains("silent"), "{reason}");
    assert!(took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_millis(2500), "{took:?}");
    let stats = b.h.stats();
    assert_eq!((stats.rejected_frames, stats.connected, stats.in_sync), (0, false, false));
    assert!(b.h.replica().complete);
    assert_eq!(b.h.replica().records.len(), 1);
}
