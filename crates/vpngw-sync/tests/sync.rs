//! Two in-process nodes over loopback TCP: bulk, increments, lag, restart, and the refusals
//! (wrong key, wrong name, stale epoch, both active).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use vpngw_sync::{Notice, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_increments_lag_and_standby_restart() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    // "a" sorts lower: it dials; "b" accepts.
    let mut a = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 7);
    let mut expected = BTreeMap::new();
    put_all(&a, &mut expected, (0..1000).map(|i| (tunnel_key(i), body(i, 2000 + (i as usize % 97)))));
    assert_eq!(a.h.stats().records, 1000);

    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Fault, 0);
    let partner = notice(&mut b, 3 * SECOND, |n| match n {
        Notice::Connected { partner, .. } => Some(partner.clone()),
        _ => None,
    })
    .await;
    assert_eq!(partner, "a");
    // The Hello may predate a's set_role (it raced the dial); a Role message follows then.
    until("b sees a Active at epoch 7", SECOND, || {
        let s = b.h.stats();
        (s.partner_role, s.partner_epoch) == (Some(Role::Active), Some(7))
    })
    .await;
    // Fault: nothing is sent yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.h.replica().records.is_empty());
    assert!(!b.h.replica().complete);

    let t0 = Instant::now();
    b.h.set_role(Role::Standby, 7);
    let (records, took) = notice(&mut b, 5 * SECOND, |n| match n {
        Notice::BulkDone { records, took } => Some((*records, *took)),
        _ => None,
    })
    .await;
    let wall = t0.elapsed();
    println!("bulk of 1000 records of ~2 KB: {took:?} from BulkBegin to BulkEnd, {wall:?} from set_role(Standby)");
    assert_eq!(records, 1000);
    assert!(wall < Duration::from_secs(2), "bulk took {wall:?}");
    let replica = b.h.replica();
    assert_eq!(replica.records, expected);
    assert_eq!(replica.epoch, 7);
    assert!(replica.complete);
    assert!(replica.applied_at_unix_ms.is_some());
    let stats = b.h.stats();
    assert_eq!((stats.bulk_syncs, stats.records), (1, 1000));
    assert!(stats.in_sync && stats.connected);
    assert_eq!(stats.partner_role, Some(Role::Active));
    assert_eq!(notice(&mut a, SECOND, |n| matches!(n, Notice::Connected { .. }).then_some(())).await, ());
    notice(&mut a, SECOND, |n| matches!(n, Notice::PartnerRole { role: Role::Standby, epoch: 7 }).then_some(())).await;

    // Active: the bulk gets acknowledged, lag drops to zero.
    until("active lag zero after the bulk", 2 * SECOND, || a.h.stats().lag == Some(Duration::ZERO)).await;
    assert!(a.h.stats().in_sync);

    // Increments: new, modified (including a 200 KB body, split over frames), removed, and a
    // put with an unchanged body (a no-op).
    let before = a.h.stats().messages_sent;
    a.h.put(tunnel_key(5), expected[&tunnel_key(5)].clone());
    put_all(&a, &mut expected, [(tunnel_key(1), body(10_001, 2048)), ("sequences".into(), body(3, 200_000))]);
    put_all(&a, &mut expected, [("connections".into(), b"c1".to_vec())]);
    a.h.remove(&tunnel_key(2));
    expected.remove(&tunnel_key(2));
    a.h.remove("never-there");
    until("increments applied", 3 * SECOND, || b.h.replica().records == expected).await;
    until("active lag zero after increments", 2 * SECOND, || a.h.stats().lag == Some(Duration::ZERO)).await;
    let sa = a.h.stats();
    // 4 updates at least; heartbeats also count, so only a lower bound.
    assert!(sa.messages_sent >= before + 4);
    assert!(sa.bytes_sent > 2_000_000 + 200_000, "{sa:?}");
    assert_eq!(sa.records, expected.len());
    let sb = b.h.stats();
    assert!(sb.lag.unwrap() < Duration::from_millis(500), "{sb:?}");
    assert!(sb.bytes_received > 2_000_000 + 200_000, "{sb:?}");
    assert_eq!((sb.rejected_frames, sb.auth_failures, sb.stale_refused), (0, 0, 0));

    // Standby restart: the old one goes away, a new one with an empty replica bulk-syncs again.
    drop(b);
    notice(&mut a, 3 * SECOND, |n| matches!(n, Notice::Lost { .. }).then_some(())).await;
    assert!(!a.h.stats().connected);
    assert_eq!(a.h.stats().lag, None);
    a.h.put("while-away".into(), b"x".to_vec());
    expected.insert("while-away".into(), b"x".to_vec());
    let mut b2 = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 7);
    let (records, _) = notice(&mut b2, 5 * SECOND, |n| match n {
        Notice::BulkDone { records, took } => Some((*records, *took)),
        _ => None,
    })
    .await;
    assert_eq!(records, expected.len());
    assert_eq!(b2.h.replica().records, expected);
    assert_eq!(a.h.stats().bulk_syncs, 2);
    a.h.remove("while-away");
    expected.remove("while-away");
    until("increment after restart", 2 * SECOND, || b2.h.replica().records == expected).await;
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_and_changes_nothing() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 1);
    a.h.put("r".into(), b"one".to_vec());
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    let before = b.h.replica();
    drop(a);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::Lost { .. }).then_some(())).await;

    // Same name, other key: the handshake fails on both sides, again and again.
    let impostor = node(config("a", "b", a_addr, b_addr, OTHER_KEY), Role::Active, 2);
    impostor.h.put("r".into(), b"forged".to_vec());
    until("standby counts auth failures", 3 * SECOND, || b.h.stats().auth_failures >= 2).await;
    until("impostor counts auth failures", 3 * SECOND, || impostor.h.stats().auth_failures >= 2).await;
    let stats = b.h.stats();
    assert!(!stats.connected);
    assert_eq!(stats.partner_epoch, None);
    assert_eq!(b.h.replica(), before);
    assert_eq!(b.h.replica().records["r"], b"one");
    while let Ok(n) = b.notices.try_recv() {
        assert!(!matches!(n, Notice::Connected { .. }), "{n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_partner_name_is_refused() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    // Right key, but it calls itself "a0"; b expects "a".
    let a0 = node(config("a0", "b", a_addr, b_addr, KEY), Role::Active, 1);
    a0.h.put("r".into(), b"from a0".to_vec());
    until("standby counts the wrong name", 3 * SECOND, || b.h.stats().auth_failures >= 2).await;
    assert!(!b.h.stats().connected);
    assert!(b.h.replica().records.is_empty());
    while let Ok(n) = b.notices.try_recv() {
        assert!(!matches!(n, Notice::Connected { .. } | Notice::BulkDone { .. }), "{n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_active_cannot_overwrite() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 5);
    a.h.put("x".into(), b"epoch 5".to_vec());
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 5);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    let before = b.h.replica();
    assert_eq!(before.epoch, 5);
    drop(a);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::Lost { .. }).then_some(())).await;

    // The old active of epoch 3 comes back, still believing it is Active.
    let old = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 3);
    old.h.put("x".into(), b"epoch 3".to_vec());
    old.h.put("y".into(), b"epoch 3".to_vec());
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::Connected { .. }).then_some(())).await;
    until("b sees the old active's epoch", SECOND, || b.h.stats().partner_epoch == Some(3)).await;
    // Its bulk (begin, 2 puts, end) is refused message by message.
    until("stale updates refused", 3 * SECOND, || b.h.stats().stale_refused >= 4).await;
    old.h.put("z".into(), b"epoch 3".to_vec());
    until("stale increment refused", 3 * SECOND, || b.h.stats().stale_refused >= 5).await;
    assert_eq!(b.h.replica(), before);
    let stats = b.h.stats();
    assert!(stats.connected && !stats.in_sync, "{stats:?}");
    assert_eq!(stats.bulk_syncs, 1);
    // The old active never hears an acknowledgement.
    assert!(old.h.stats().lag.unwrap() > Duration::ZERO);
    assert!(!old.h.stats().in_sync);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_active_apply_nothing() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 4);
    let b = node(config("b", "a", b_addr, a_addr, KEY), Role::Active, 4);
    a.h.put("from-a".into(), b"a".to_vec());
    b.h.put("from-b".into(), b"b".to_vec());
    until("a sees b Active", 3 * SECOND, || a.h.stats().partner_role == Some(Role::Active)).await;
    until("b sees a Active", SECOND, || b.h.stats().partner_role == Some(Role::Active)).await;
    a.h.put("from-a-2".into(), b"a".to_vec());
    tokio::time::sleep(Duration::from_millis(400)).await;
    for n in [&a, &b] {
        let stats = n.h.stats();
        assert!(stats.connected);
        assert_eq!(stats.partner_role, Some(Role::Active));
        assert!(stats.role_conflicts >= 1, "{stats:?}");
        assert!(!stats.in_sync);
        assert_eq!(stats.lag, None);
        assert!(n.h.replica().records.is_empty());
        assert_eq!(stats.bulk_syncs, 0);
    }

    // b goes Standby and gets a's store; back to Active (a split brain again): a's next puts
    // do not reach b's replica.
    b.h.set_role(Role::Standby, 4);
    until("b synced", 3 * SECOND, || b.h.replica().records.len() == 2).await;
    b.h.set_role(Role::Active, 5);
    until("a sees b active", 2 * SECOND, || a.h.stats().partner_role == Some(Role::Active)).await;
    a.h.put("after-split".into(), b"a".to_vec());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.h.replica().records.contains_key("after-split"));
    assert!(a.h.stats().role_conflicts >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_records_is_refused() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut ca = config("a", "b", a_addr, b_addr, KEY);
    ca.max_records = 10;
    let a = node(ca, Role::Active, 1);
    for i in 0..12 {
        a.h.put(format!("r{i}"), vec![i as u8]);
    }
    let stats = a.h.stats();
    assert_eq!((stats.records, stats.records_refused), (10, 2));
    a.h.put("r0".into(), vec![99]); // replacing is not growing
    assert_eq!(a.h.stats().records_refused, 2);

    let mut cb = config("b", "a", b_addr, a_addr, KEY);
    cb.max_records = 4;
    let mut b = node(cb, Role::Standby, 1);
    let records = notice(&mut b, 3 * SECOND, |n| match n {
        Notice::BulkDone { records, .. } => Some(*records),
        _ => None,
    })
    .await;
    assert_eq!(records, 4);
    assert_eq!(b.h.stats().records_refused, 6);
}

#[test]
fn config_debug_shows_no_key() {
    let c = config("a", "b", "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), KEY);
    let shown = format!("{c:?}");
    assert!(shown.contains("SyncKey(redacted)"), "{shown}");
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(!shown.contains(&hex::encode(KEY)[..16]), "{shown}");
    assert!(!shown.contains("48, 49, 50"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silent_handshakes_count_as_auth_failures() {
    use tokio::io::AsyncWriteExt;
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    // Wait for the listener.
    let mut s = loop {
        match tokio::net::TcpStream::connect(b_addr).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut junk = vec![0, 60];
    junk.extend(body(1, 60));
    s.write_all(&junk).await.unwrap();
    until("garbage handshake counted", SECOND, || b.h.stats().auth_failures == 1).await;

    // Connected and silent: refused after the 2 s handshake timeout.
    let t0 = Instant::now();
    let _silent = tokio::net::TcpStream::connect(b_addr).await.unwrap();
    until("silent handshake counted", 4 * SECOND, || b.h.stats().auth_failures == 2).await;
    assert!(t0.elapsed() >= Duration::from_millis(1900), "{:?}", t0.elapsed());
    let stats = b.h.stats();
    assert!(!stats.connected);
    assert_eq!(stats.rejected_frames, 0);
    assert!(b.h.replica().records.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_the_session_and_resyncs_with_a_bulk() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 1);
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    // Far more increments at once than the queue holds: put() never waits for the network.
    let t0 = Instant::now();
    let mut expected = BTreeMap::new();
    put_all(&a, &mut expected, (0..30_000).map(|i| (format!("r/{i}"), body(i, 200))));
    assert!(t0.elapsed() < Duration::from_secs(2), "puts blocked: {:?}", t0.elapsed());
    assert!(a.h.stats().queue_overflows >= 1, "{:?}", a.h.stats());
    // The dialer comes back and the standby gets everything as a bulk.
    until("standby resynced", 10 * SECOND, || b.h.replica().records == expected).await;
    assert!(a.h.stats().bulk_syncs >= 2);
    until("in sync again", 3 * SECOND, || a.h.stats().in_sync && b.h.stats().in_sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_keeps_the_replica_and_the_old_active_rejoins_as_standby() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = node(config("a", "b", a_addr, b_addr, KEY), Role::Active, 1);
    a.h.put("t1".into(), b"v1".to_vec());
    let mut b = node(config("b", "a", b_addr, a_addr, KEY), Role::Standby, 1);
    notice(&mut b, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    drop(a);
    let reason = notice(&mut b, 3 * SECOND, |n| match n {
        Notice::Lost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    println!("lost: {reason}");
    let replica = b.h.replica();
    assert!(replica.complete, "lost partner: the replica stays complete");
    assert_eq!((replica.epoch, replica.records.len()), (1, 1));
    assert!(!b.h.stats().in_sync);

    // Takeover: b becomes Active at epoch 2 and puts what it took over, plus a change.
    b.h.set_role(Role::Active, 2);
    for (k, v) in &replica.records {
        b.h.put(k.clone(), v.clone());
    }
    b.h.put("t2".into(), b"v2".to_vec());
    // a comes back as Standby: it gets b's store.
    let mut a2 = node(config("a", "b", a_addr, b_addr, KEY), Role::Standby, 2);
    notice(&mut a2, 3 * SECOND, |n| matches!(n, Notice::BulkDone { .. }).then_some(())).await;
    let got = a2.h.replica();
    assert_eq!(got.epoch, 2);
    assert_eq!(got.records.keys().collect::<Vec<_>>(), ["t1", "t2"]);
}
