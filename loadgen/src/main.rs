//! ringcast-loadgen: opens many EventSource-like connections to an SSE server and measures
//! what it delivers. This file is the orchestration only: check the config, start the
//! cores, let `monitor` watch the run, then add the cores' recorders up, report and write
//! the result file (or, for `merge`, add result files up).

mod cli;
mod conn;
mod engine;
mod http;
mod metrics;
mod monitor;
mod parser;
mod probe;
mod report;
mod result;

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;

use cli::{Cli, Command, MergeArgs, RunArgs};
use engine::{Live, Plan};
use metrics::Recorder;
use result::{Fanout, Resources, Run, RunResult, Server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Merge(args)) => merge(args),
        None => run(cli.run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_outputs(
    result: &RunResult,
    out: Option<&Path>,
    hgrm: Option<&Path>,
) -> Result<(), String> {
    if let Some(path) = out {
        result.save(path)?;
    }
    if let Some(path) = hgrm {
        let histograms = result.decode_histograms()?;
        std::fs::write(path, report::hgrm(&histograms.delivery))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn merge(args: MergeArgs) -> Result<(), String> {
    let parts = args
        .files
        .iter()
        .map(|f| RunResult::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = RunResult::merge(parts)?;
    print!("{}", report::final_report(&merged));
    write_outputs(&merged, args.out.as_deref(), args.hgrm.as_deref())
}

/// Raises the open-files soft limit to the hard limit; returns the limit in force.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft),
    }
}

fn validate(args: &RunArgs) -> Result<(), String> {
    if args.urls.is_empty() {
        return Err("give at least one --url (for example --url http://127.0.0.1:8080/)".into());
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if args.interval.is_zero() {
        return Err("--interval must be positive".into());
    }
    if args.read_buffer < 64 {
        return Err("--read-buffer must be at least 64 bytes".into());
    }
    if args.warmup >= args.duration {
        return Err(
            "--warmup must be shorter than --duration (it is the start of the hold)".into(),
        );
    }
    if args.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<(), String> {
    validate(&args)?;
    let targets = args
        .urls
        .iter()
        .map(|u| http::Target::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let nofile = raise_nofile();
    // Leave room for the runtime's own descriptors (rings, eventfds, files).
    let headroom = 64;
    if (args.connections as u64).saturating_add(headroom) > nofile {
        eprintln!(
            "ringcast-loadgen: warning: {} connections need more open files than the limit {nofile} allows; \
             expect 'other' failures (Too many open files)",
            args.connections
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = threads.min(args.connections);
    let mut environment = probe::environment(args.label.clone());
    let mut notes = Vec::new();
    let server_info = args.server_info.as_deref().and_then(|url| {
        http::fetch_info(url, Duration::from_secs(3))
            .map_err(|e| {
                eprintln!("ringcast-loadgen: --server-info: {e}");
                notes.push(format!("--server-info could not be read: {e}"));
            })
            .ok()
    });
    // A server that states its interval (ringcast's /info has `interval_ms`) can be checked.
    if let Some(server_ms) = server_info.as_ref().and_then(|i| i["interval_ms"].as_f64()) {
        let ours = args.interval.as_secs_f64() * 1e3;
        if (server_ms - ours).abs() > f64::EPSILON {
            let warning = format!(
                "the server's interval is {server_ms} ms but --interval is {ours} ms: delivery latencies are wrong"
            );
            eprintln!("ringcast-loadgen: warning: {warning}");
            notes.push(warning);
        }
    }

    // Ctrl-C (or SIGTERM) ends the run early with a report; a second one exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone());
        let _ = signal_hook::flag::register(signal, interrupted.clone());
    }

    let too_long = || "the ramp and hold are too long to schedule".to_string();
    let start = Instant::now() + Duration::from_millis(200);
    let ramp =
        Duration::try_from_secs_f64(args.connections as f64 / args.rate).map_err(|_| too_long())?;
    let ramp_end = start.checked_add(ramp).ok_or_else(too_long)?;
    let end = ramp_end.checked_add(args.duration).ok_or_else(too_long)?;
    let plan = Arc::new(Plan {
        targets,
        sources: args.source_addrs.clone().map(|s| s.0).unwrap_or_default(),
        connections: args.connections,
        rate: args.rate,
        threads,
        driver: args.driver,
        ring_entries: args.ring_entries,
        start,
        ramp_end,
        measure_from: ramp_end + args.warmup,
        end,
        interval_us: u64::try_from(args.interval.as_micros()).unwrap_or(u64::MAX),
        retry_default: args.retry_default,
        connect_timeout: args.connect_timeout,
        read_buffer: args.read_buffer,
    });
    let live = Arc::new(Live::new(threads));
    let handles = engine::start(plan.clone(), live.clone())?;
    let mut resources = Resources {
        server_pid: args.server_pid,
        baseline: probe::sample(args.server_pid, 0, 0),
        ..Resources::default()
    };

    let early = monitor::watch(&args, &plan, &live, &mut resources, &interrupted);

    let mut recorder = Recorder::default();
    let mut drivers = Vec::new();
    let mut banner = None;
    let mut unfinished = 0;
    for h in handles {
        let core = h.join().map_err(|_| "a core thread panicked".to_string())?;
        recorder.add(&core.recorder);
        drivers.push(core.driver);
        banner = banner.or(core.server_banner);
        unfinished += core.unfinished;
    }
    drivers.dedup();
    environment.loadgen_driver = if drivers.len() == 1 {
        drivers[0].to_string()
    } else {
        "mixed".into()
    };
    environment.loadgen_threads = threads;
    resources.derive();

    notes.insert(0, format!(
        "delivery latency is receive time minus the event's scheduled time (id x {} ms since the Unix epoch); \
         it is only meaningful when the server and the loadgen share a clock (one host, or synced clocks) \
         and --interval matches the server's",
        args.interval.as_secs_f64() * 1e3
    ));
    if let Some(at) = early {
        let held = at.saturating_duration_since(plan.ramp_end).as_secs_f64();
        notes.push(format!(
            "interrupted: the run ended early, after {held:.1} s of the {:.1} s hold",
            args.duration.as_secs_f64()
        ));
    }
    let config = serde_json::to_value(&args).map_err(|e| e.to_string())?;
    let run = Run {
        environment,
        config,
        server: Server {
            banner,
            urls: args.urls.clone(),
            info: server_info,
        },
        resources,
        unfinished_connections: unfinished,
    };
    let mut result = RunResult::new(vec![run], recorder.counters, &recorder.histograms, notes);
    result.fanout = Fanout::of(recorder.ticks);
    print!("{}", report::final_report(&result));
    write_outputs(&result, args.out.as_deref(), args.hgrm.as_deref())
}
