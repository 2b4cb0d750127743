//! Start-up and shutdown: the driver choice and its fallback (io_uring blocked by a seccomp filter
//! the way Docker blocks it), CLI errors that name their flag, a port that is already served,
//! and SIGTERM closing streams and exiting 0.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

both_drivers!(sigterm_closes_streams_and_exits_zero);

fn sigterm_closes_streams_and_exits_zero(driver: &str) {
    let mut server = TestServer::start(driver, &["--interval", "100ms"]);
    let mut clients: Vec<SseClient> = (0..20).map(|_| SseClient::open(server.addr, "")).collect();
    for c in &mut clients {
        c.ticks(1);
    }
    let asked = Instant::now();
    let s = server.stop_and_summary();
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    assert_eq!(s.get("streams_served"), 20);
    assert_eq!(s.get("closed_at_shutdown"), 20);
    assert!(s.get("frames_sent") >= 20);
    // every stream ends (EOF or reset), none hangs
    for mut c in clients {
        while c.next_event_or_end() {}
    }
    assert!(server.log_text().contains("signal=\"SIGTERM\""));
}

trait EndOk {
    fn next_event_or_end(&mut self) -> bool;
}

impl EndOk for SseClient {
    /// `true` while events arrive; `false` at EOF or on a reset.
    fn next_event_or_end(&mut self) -> bool {
        use std::io::Read;
        let mut b = [0u8; 4096];
        matches!(self.stream.read(&mut b), Ok(n) if n > 0)
    }
}

/// Runs the binary to its end: one that fails to start exits by itself; one that starts is sent
/// SIGTERM once its banner (`listening on`) is out. Returns its exit code and its stderr.
fn run_to_exit(args: &[&str], seccomp_errno: Option<i32>) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(["--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(errno) = seccomp_errno {
        unsafe { cmd.pre_exec(move || deny_io_uring(errno)) };
    }
    let mut child = cmd.spawn().unwrap();
    // stderr is read on its own thread (so its pipe never fills) and shared line by line.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    let reading = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut signalled = false;
    let status = loop {
        // `try_wait` reaps the child only once it has exited; until then its pid is ours and
        // cannot be reused, so the signal below can only reach this server.
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let started = log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("listening on http://"));
        if started && !signalled {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            signalled = true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server neither exited nor started{}; log:\n{}",
                if signalled {
                    " (nor stopped after SIGTERM)"
                } else {
                    ""
                },
                log.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    reading.join().unwrap();
    let log = log.lock().unwrap().join("\n");
    (status.code(), log)
}

/// Installs a seccomp filter that fails io_uring_setup with `errno`, as Docker's default profile
/// (EPERM) and podman's (ENOSYS) do.
fn deny_io_uring(errno: i32) -> std::io::Result<()> {
    const IO_URING_SETUP: u32 = 425;
    let ret_errno = 0x0005_0000 | (errno as u32 & 0xffff); // SECCOMP_RET_ERRNO
    let allow = 0x7fff_0000u32; // SECCOMP_RET_ALLOW
    let filter = [
        // load the syscall number
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if nr == io_uring_setup: next, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: ret_errno,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: allow,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                2,
                &prog as *const _ as libc::c_ulong,
                0,
                0,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_blocked() {
    for (errno, name) in [
        (libc::EPERM, "Operation not permitted"),
        (libc::ENOSYS, "not implemented"),
    ] {
        let (code, log) = run_to_exit(&["--listen", "127.0.0.1:0", "--workers", "2"], Some(errno));
        assert_eq!(code, Some(0), "{log}");
        assert_eq!(log.matches("fell back to epoll").count(), 2, "{log}");
        assert!(log.contains(name), "the reason is given: {log}");
        assert_eq!(log.matches("driver=epoll").count(), 2, "{log}");
        assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
    }
}

#[test]
fn uring_refuses_to_fall_back() {
    let (code, log) = run_to_exit(
        &["--listen", "127.0.0.1:0", "--driver", "uring"],
        Some(libc::EPERM),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--driver uring: io_uring is unavailable"),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
    // a ring the kernel will not build: `uring` fails, `auto` falls back and says why
    let (code, log) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--driver",
            "uring",
            "--ring-entries",
            "100000",
        ],
        None,
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot build a ring of 100000 entries"),
        "{log}"
    );
    let (code, log) = run_to_exit(
        &["--listen", "127.0.0.1:0", "--ring-entries", "100000"],
        None,
    );
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        log.matches("fell back to epoll: cannot build a ring")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn auto_prefers_io_uring_and_the_banner_says_so() {
    let (code, log) = run_to_exit(&["--listen", "127.0.0.1:0", "--workers", "2"], None);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches("driver=io_uring").count(), 2, "{log}");
    for field in [
        "version=",
        "kernel=",
        "fd_soft=",
        "fd_hard=",
        "max_streams=",
        "core=",
    ] {
        assert!(log.contains(field), "banner has {field}: {log}");
    }
    assert!(log.contains(" stopped "), "{log}");
}

#[test]
fn a_port_already_served_is_an_error() {
    let server = TestServer::start("auto", &[]);
    let port = server.addr.to_string();
    let (code, log) = run_to_exit(&["--listen", &port], None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("already in use"), "{log}");
    // and the first server was not disturbed
    assert!(request(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ends_with("ok"));
    // a foreign listener without SO_REUSEPORT counts too
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, log) = run_to_exit(
        &["--listen", &foreign.local_addr().unwrap().to_string()],
        None,
    );
    assert_eq!(code, Some(1), "{log}");
}

#[test]
fn bad_flags_are_cli_errors_naming_the_flag() {
    for (args, flag) in [
        (vec!["--event", "a\nb"], "--event"),
        (vec!["--event", "a\rb"], "--event"),
        (vec!["--interval", "fast"], "--interval"),
        (vec!["--interval", "0ms"], "--interval"),
        (vec!["--header-timeout", "0s"], "--header-timeout"),
        (vec!["--listen", "nowhere"], "--listen"),
        (vec!["--driver", "kqueue"], "--driver"),
        (vec!["--workers", "0"], "--workers"),
        (vec!["--cors-origin", ""], "--cors-origin"),
        (vec!["--ring-entries", "100"], "--ring-entries"),
        (vec!["--max-skips", "0"], "--max-skips"),
        (vec!["--heartbeat", "soon"], "--heartbeat"),
        (vec!["--history", "0"], "--history"),
        (vec!["--history-bytes", "lots"], "--history-bytes"),
        (vec!["--max-event-bytes", "0"], "--max-event-bytes"),
        (
            vec!["--max-channels-per-stream", "0"],
            "--max-channels-per-stream",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} names {flag}: {err}");
    }
}
