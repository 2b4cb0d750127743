//! Abuse and faults: slowloris, fd exhaustion, a reconnect storm, many non-reading clients. Each
//! checks that the server keeps serving the streams it has, sheds what it cannot take, recovers,
//! and leaks nothing (streams gauge and fd count come back). Bounded in count and time; loopback.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

both_drivers!(
    slowloris_is_cut_at_the_header_timeout,
    fd_exhaustion_degrades_and_recovers,
    reconnect_storm_leaks_nothing,
    many_non_readers_are_shed_with_bounded_memory,
);

/// What /proc says about a process.
struct Proc {
    rss_kb: u64,
    fds: usize,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn proc_of(pid: u32) -> Proc {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let cpu_ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Proc {
        rss_kb,
        fds,
        cpu_ticks,
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rt() -> tokio::runtime::Runtime {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn slowloris_is_cut_at_the_header_timeout(driver: &str) {
    const CONNS: usize = 1000;
    let server = TestServer::start(driver, &["--interval", "100ms", "--header-timeout", "2s"]);
    let mut watcher = SseClient::open(server.addr, "");
    let mut seen = watcher.ticks(1);
    let addr = server.addr;
    let rt = rt();
    // Each attacker sends a request line, then one header byte every 300 ms, forever.
    let attackers = rt.spawn(async move {
        let tasks: Vec<_> = (0..CONNS)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
                    let mut buf = [0u8; 256];
                    loop {
                        tokio::select! {
                            r = s.read(&mut buf) => {
                                // the 408, EOF or a reset: the server cut us off
                                return matches!(r, Ok(n) if n > 0 && buf[..n].starts_with(b"HTTP/1.1 408"));
                            }
                            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                                if s.write_all(b"a").await.is_err() {
                                    return false;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut got_408 = 0;
        for t in tasks {
            got_408 += t.await.unwrap() as usize;
        }
        got_408
    });
    // Meanwhile the stream receives every tick.
    while !attackers.is_finished() {
        seen.extend(watcher.ticks(1));
    }
    let got_408 = rt.block_on(attackers).unwrap();
    seen.extend(watcher.ticks(2));
    server.assert_no_gaps(&seen);
    // Every attacker was cut off; the server counted each as a header timeout.
    wait_for("the timeouts to be counted", || {
        series(
            &admin_get(&server, "/metrics"),
            "ringcast_connections_rejected_total{worker=\"total\",reason=\"timeout\"}",
        ) == CONNS as f64
    });
    eprintln!("{got_408} of {CONNS} slowloris connections read their 408 before the close");
    assert!(got_408 > 0);
}

fn fd_exhaustion_degrades_and_recovers(driver: &str) {
    // 256 fds: ~176 streams by the server's own reckoning. --max-streams above that makes the
    // fd table, not the cap, the limit: accepts fail with EMFILE.
    let server = TestServer::start_with_fd_limit(
        driver,
        256,
        &["--interval", "100ms", "--max-streams", "10000"],
    );
    let mut held: Vec<SseClient> = (0..150).map(|_| SseClient::open(server.addr, "")).collect();
    held[0].ticks(1);
    // 250 more clients than it can take: connect (the kernel completes the handshake into the
    // backlog) and ask for a stream.
    let mut extra = Vec::new();
    for _ in 0..250 {
        let mut s = connect(server.addr);
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
        extra.push(s);
    }
    wait_for("accept to hit the fd limit", || {
        server.log_text().contains("accept failed")
    });
    // Saturated: the held streams keep receiving, and the server does not spin.
    let before = proc_of(server.pid());
    let t0 = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.extend(held[1].ticks(1));
    }
    let spent = proc_of(server.pid()).cpu_ticks - before.cpu_ticks;
    let wall_ticks = t0.elapsed().as_secs_f64() * 100.0; // USER_HZ
    server.assert_no_gaps(&seen);
    eprintln!("saturated: {spent} CPU ticks over {wall_ticks:.0} wall ticks");
    assert!(
        (spent as f64) < wall_ticks * 0.5,
        "the server spins while its fd table is full: {spent} ticks of CPU in {wall_ticks:.0}"
    );
    assert!(held.iter_mut().all(|c| c.ticks(1).len() == 1));
    // Clients leave: the server accepts again and serves new streams.
    drop(extra);
    held.truncate(50);
    let mut fresh = None;
    wait_for("a new stream after clients left", || {
        let mut s = connect(server.addr);
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ok = s
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .is_ok();
        let mut c = SseClient::open_with(s, "");
        if ok && c.head.starts_with("HTTP/1.1 200") {
            fresh = Some(c.ticks(1));
            true
        } else {
            false
        }
    });
    assert!(fresh.is_some());
}

fn reconnect_storm_leaks_nothing(driver: &str) {
    const N: usize = 500;
    let server = TestServer::start(driver, &["--interval", "100ms"]);
    let addr = server.addr;
    let baseline_fds = proc_of(server.pid()).fds;
    let rt = rt();
    let open_all = || async move {
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
                        .await
                        .unwrap();
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    // head and at least one event
                    while !got.windows(4).any(|w| w == b"id: ") || !got.ends_with(b"\n\n") {
                        let n = s.read(&mut buf).await.unwrap();
                        assert!(n > 0, "stream closed");
                        got.extend_from_slice(&buf[..n]);
                    }
                    s
                })
            })
            .collect();
        let mut conns = Vec::with_capacity(N);
        for t in tasks {
            conns.push(t.await.unwrap());
        }
        conns
    };
    let first = rt.block_on(open_all());
    wait_for("all streams open", || {
        metric(&server, "streams_open") == N as f64
    });
    // Everyone drops at once and comes straight back.
    drop(first);
    let second = rt.block_on(open_all());
    wait_for("the dropped streams to be reaped", || {
        metric(&server, "streams_open") == N as f64
            && metric(&server, "streams_opened_total") == 2.0 * N as f64
    });
    drop(second);
    wait_for("every stream to be reaped", || {
        metric(&server, "streams_open") == 0.0
    });
    wait_for("the fds to be closed", || {
        proc_of(server.pid()).fds <= baseline_fds
    });
    let closed = series(
        &admin_get(&server, "/metrics"),
        "ringcast_streams_closed_total{worker=\"total\",reason=\"client_gone\"}",
    );
    assert_eq!(closed, 2.0 * N as f64);
}

fn many_non_readers_are_shed_with_bounded_memory(driver: &str) {
    const STUCK: usize = 50;
    let data = "y".repeat(100_000);
    // A non-reader is shed after --max-skips ticks whatever the interval, so the interval is long
    // enough that the reader (on its own thread) never falls that far behind, however loaded the
    // machine: only the non-readers' fate depends on the server.
    let server = TestServer::start(
        driver,
        &["--interval", "500ms", "--data", &data, "--max-skips", "3"],
    );
    let reader = ReaderThread::start(SseClient::open(server.addr, ""));
    // Let the allocator reach its steady state with 100 KB frames coming and going first.
    reader.wait_for(4);
    let rss_before = proc_of(server.pid()).rss_kb;
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&server.addr.into()).unwrap();
        let mut s: std::net::TcpStream = sock.into();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap();
        stuck.push(s);
    }
    wait_for("every non-reader to be shed", || {
        series(
            &admin_get(&server, "/metrics"),
            "ringcast_streams_closed_total{worker=\"total\",reason=\"skips_exceeded\"}",
        ) == STUCK as f64
    });
    // The reader kept receiving through the shedding, and still does.
    reader.wait_for(reader.count() + 2);
    assert_eq!(metric(&server, "streams_open"), 1.0);
    let rss_after = proc_of(server.pid()).rss_kb;
    let seen = reader.stop();
    server.assert_no_gaps(&seen);
    eprintln!("server RSS {rss_before} KiB -> {rss_after} KiB with {STUCK} non-readers shed");
    // The frame is shared: parked writes hold references, not copies. A copy per stream per
    // tick would keep 50 streams x 100 KB x 3 skips = 15 MB alive; allow the allocator's caches
    // (a few frames' worth of pages) but not that.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew with the non-readers: {rss_before} -> {rss_after} KiB"
    );
}
