//! The `ringcast` binary: parse flags, start the server, wait for SIGINT/SIGTERM, stop cleanly.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use ringcast::{Args, Config, Server};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    ringcast::net::disable_huge_pages();
    let args = Args::parse();
    if args.probe_uring {
        let mut facts = ringcast::uring_facts::probe();
        // Not io_uring, but decided by a start-up probe too and wanted in the kernel matrix.
        let opts = Config::from_args(&args).stream_options();
        facts["tcp_options_inherited"] = ringcast::net::probe_inherited(opts).to_json();
        println!("{facts}");
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .unwrap_or_else(|e| {
            eprintln!("error: invalid value for '--log <FILTER>': {e}");
            std::process::exit(2);
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Signals first, so one that arrives during start-up is not lost.
    let (sig_tx, sig_rx) = mpsc::channel();
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig_tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .expect("spawn the signal thread");

    let mut server = match Server::start(Config::from_args(&args)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    server.log_banner();

    let code = loop {
        match sig_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                tracing::info!(
                    signal = name,
                    streams = server.streams_open(),
                    "shutting down"
                );
                break ExitCode::SUCCESS;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(id) = server.wait_worker_exit(Duration::ZERO) {
                    tracing::error!(worker = id, "a worker exited; shutting down");
                    break ExitCode::FAILURE;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break ExitCode::FAILURE,
        }
    };
    let summary = server.stop();
    let t = summary.totals;
    tracing::info!(
        streams_served = t.streams_opened,
        frames_sent = t.frames_sent,
        bytes_sent = t.bytes_sent,
        frames_skipped = t.frames_skipped,
        dropped_client_gone = t.closed_client_gone,
        dropped_write_error = t.closed_write_error,
        dropped_skips = t.closed_skips,
        closed_at_shutdown = t.closed_shutdown,
        ok_requests = t.ok_requests,
        rejected = t.rejected(),
        ticks = t.ticks,
        ticks_missed = t.ticks_missed,
        "stopped"
    );
    if summary.stragglers > 0 {
        tracing::warn!(workers = summary.stragglers, "workers still busy at exit");
    }
    code
}

// A size-segregated allocator: the few long-lived small objects of each stream are not scattered
// over pages that the request phase's short-lived buffers and tasks once occupied (with glibc's
// malloc they were, and an idle stream cost ~2.3 KB of RSS instead of ~200 B).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
