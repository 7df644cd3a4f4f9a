//! The kernel compatibility mask (`RingConfig::kernel_compat`, `IOXIDE_KERNEL_COMPAT`): a
//! ring told to behave as on Linux 6.1 leaves every newer feature unused, reports so, and
//! still does all its I/O through the fallbacks.
#![allow(clippy::unwrap_used)]

use ioxide::net::{Stream, TcpListener};
use ioxide::time::sleep;
use ioxide::{KernelVersion, Reactor, RingConfig, Runtime};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn masked(compat: Option<KernelVersion>) -> Runtime {
    let config = RingConfig {
        kernel_compat: compat,
        ..RingConfig::default()
    };
    Runtime::with_config(config, 0).unwrap()
}

/// The running kernel's version, from `/proc/sys/kernel/osrelease`.
fn running_kernel() -> KernelVersion {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    KernelVersion::parse(&release).unwrap()
}

#[test]
fn a_6_1_mask_reports_every_newer_feature_off() {
    let features =
        masked(Some(KernelVersion::new(6, 1))).block_on(async { Reactor::current().features() });
    assert_eq!(features.kernel_compat, Some(KernelVersion::new(6, 1)));
    // 6.1 has these: kept.
    assert!(features.defer_taskrun, "{features:?}");
    assert!(features.submit_all, "{features:?}");
    // 6.6 and 6.12: masked whatever this kernel offers.
    assert!(!features.no_sqarray, "{features:?}");
    assert!(!features.min_timeout, "{features:?}");
}

#[test]
fn without_a_mask_the_ring_uses_what_this_kernel_offers() {
    let kernel = running_kernel();
    let features = masked(None).block_on(async { Reactor::current().features() });
    assert_eq!(features.kernel_compat, None);
    assert!(features.defer_taskrun, "{features:?}");
    assert_eq!(
        features.no_sqarray,
        kernel >= KernelVersion::new(6, 6),
        "{kernel}: {features:?}"
    );
    assert_eq!(
        features.min_timeout,
        kernel >= KernelVersion::new(6, 12),
        "{kernel}: {features:?}"
    );
}

#[test]
fn a_6_6_mask_keeps_no_sqarray_and_masks_only_the_min_timeout() {
    let kernel = running_kernel();
    let features =
        masked(Some(KernelVersion::new(6, 6))).block_on(async { Reactor::current().features() });
    assert_eq!(features.no_sqarray, kernel >= KernelVersion::new(6, 6));
    assert!(!features.min_timeout, "{features:?}");
}

#[test]
fn under_a_6_1_mask_accept_connect_send_multishot_recv_and_timers_work() {
    let rt = masked(Some(KernelVersion::new(6, 1)));
    let (echoed, slept) = rt.block_on(async {
        // Server side: multishot accept, multishot receive into provided buffers, send.
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ioxide::spawn(async move {
            let s = listener.accept().await.unwrap();
            let mut rx = s.recv_stream();
            while let Some(chunk) = rx.next().await.unwrap() {
                let (r, _) = s.send_all(chunk.to_vec()).await;
                r.unwrap();
            }
        });
        // Client side: ring socket + connect, send, single-shot receive.
        let c = Stream::connect(addr).await.unwrap();
        let (r, _) = c.send_all(b"hello, 6.1".to_vec()).await;
        r.unwrap();
        let mut buf = Vec::with_capacity(64);
        while buf.len() < 10 {
            let (r, b) = c.recv(buf).await;
            buf = b;
            assert!(r.unwrap() > 0, "unexpected EOF");
        }
        drop(c);
        server.await;
        let started = Instant::now();
        sleep(Duration::from_millis(20)).await;
        (buf, started.elapsed())
    });
    assert_eq!(&echoed, b"hello, 6.1");
    assert!(slept >= Duration::from_millis(20), "{slept:?}");
    assert!(slept < Duration::from_secs(2), "{slept:?}");
}

#[test]
fn under_a_6_1_mask_a_batched_wait_is_a_timed_wait_then_an_ordinary_one() {
    // Without min_wait_usec, a batched wait is a plain wait bounded by the window: a reply
    // that comes well after the window ends it with ETIME, and the loop enters again with an
    // ordinary wait, which the reply ends. (With min_wait_usec the kernel would keep waiting
    // in the same enter.)
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        s.write_all(&buf).unwrap();
        // Stay open until the reactor has read the reply.
        let _ = s.read(&mut buf);
    });
    let rt = masked(Some(KernelVersion::new(6, 1)));
    let (got, stats, elapsed) = rt.block_on(async move {
        let r = Reactor::current();
        let s = Stream::connect(addr).await.unwrap();
        let (res, _) = s.send_all(b"ping".to_vec()).await;
        res.unwrap();
        let before = r.ring_stats();
        let started = Instant::now();
        let recv = s.recv(Vec::with_capacity(16));
        ioxide::batch_wait(Duration::from_millis(5));
        let (res, buf) = recv.await;
        res.unwrap();
        (buf, r.ring_stats().since(&before), started.elapsed())
    });
    peer.join().unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(stats.batched_waits, 1, "{stats:?}");
    assert!(
        stats.enters >= 2,
        "a 5 ms window and a 60 ms reply take two enters without min_wait_usec: {stats:?}"
    );
    assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
}

#[test]
fn the_environment_variable_sets_the_default_mask() {
    // Under CI's second run (`IOXIDE_KERNEL_COMPAT=6.1 cargo test ...`) this checks that the
    // mask reached every default-built ring; otherwise, that no mask is set by default.
    let expected = std::env::var(ioxide::KERNEL_COMPAT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            KernelVersion::parse(&v)
                .unwrap()
                .max(KernelVersion::MINIMUM)
        });
    assert_eq!(RingConfig::default().kernel_compat, expected);
    let features = ioxide::block_on(async { Reactor::current().features() });
    assert_eq!(features.kernel_compat, expected);
    if expected.is_some_and(|v| v < KernelVersion::new(6, 12)) {
        assert!(!features.min_timeout, "{features:?}");
    }
}
