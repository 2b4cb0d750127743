//! The main thread's watch over a run: one status line per second on stderr, a progress
//! bar during the ramp when stderr is a terminal, the resource samples at the start of the
//! measurement and shortly before the end, and the early stop on Ctrl-C. The cores never
//! wait for it: it only reads their published snapshots.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::RunArgs;
use crate::engine::{Live, Plan};
use crate::probe::{self, Sample};
use crate::report;
use crate::result::Resources;

/// Prints the status line each second (and a progress bar during the ramp on a terminal)
/// and takes the resource samples, until the run's end.
/// Returns when the run ended early because of Ctrl-C (or SIGTERM), with the time it did.
pub fn watch(
    args: &RunArgs,
    plan: &Plan,
    live: &Live,
    resources: &mut Resources,
    interrupted: &AtomicBool,
) -> Option<Instant> {
    let tty = std::io::stderr().is_terminal() && !args.quiet;
    let mut last_status = Instant::now();
    // (time, events) of recent status lines: the rate is taken over at least one tick
    // interval, so a 2 s interval does not read as alternating 0 and 2x events/s.
    let mut history: std::collections::VecDeque<(Instant, u64)> = [(last_status, 0)].into();
    let window = args.interval.max(Duration::from_secs(1));
    let mut bar_drawn = false;
    // The end-of-hold sample is taken a little before the end, while everything is open.
    let hold_end_at = plan
        .end
        .checked_sub(Duration::from_millis(600))
        .unwrap_or(plan.end)
        .max(plan.measure_from);
    let mut early = None;
    loop {
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        if interrupted.load(Ordering::Relaxed) {
            live.request_stop();
            let snap = live.total();
            if resources.hold_end.is_none() {
                resources.hold_end = Some(sample(args, &snap.counters));
            }
            early = Some(now);
            break;
        }
        let in_ramp = now < plan.ramp_end;
        let step = if tty && in_ramp {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(250)
        };
        std::thread::sleep(step.min(plan.end - now));
        let now = Instant::now();
        let snap = live.total();
        if resources.measure_start.is_none() && now >= plan.measure_from {
            resources.measure_start = Some(sample(args, &snap.counters));
        }
        if resources.hold_end.is_none() && now >= hold_end_at {
            resources.hold_end = Some(sample(args, &snap.counters));
        }
        if tty && !in_ramp && bar_drawn {
            eprint!("{CLEAR_LINE}");
            bar_drawn = false;
        }
        if tty && in_ramp {
            eprint!(
                "{}",
                report::progress_bar(snap.counters.open, plan.connections, 40)
            );
            let _ = std::io::stderr().flush();
            bar_drawn = true;
        }
        let since = now.duration_since(last_status);
        if !args.quiet && since >= Duration::from_secs(1) {
            if bar_drawn {
                // The status line takes the bar's place; the bar is redrawn below it.
                eprint!("{CLEAR_LINE}");
                bar_drawn = false;
            }
            while history.len() > 1 && now.duration_since(history[1].0) >= window {
                history.pop_front();
            }
            let (then, events_then) = history[0];
            let rate = snap.counters.events.saturating_sub(events_then) as f64
                / now.duration_since(then).as_secs_f64().max(1e-3);
            history.push_back((now, snap.counters.events));
            let phase = if now < plan.ramp_end {
                "ramp"
            } else if now < plan.measure_from {
                "warm"
            } else {
                "hold"
            };
            let elapsed = now.saturating_duration_since(plan.start).as_secs_f64();
            eprintln!(
                "{}",
                report::status_line(
                    elapsed,
                    phase,
                    &snap.counters,
                    plan.connections,
                    rate,
                    &snap.delivery,
                    plan.channels
                        .as_ref()
                        .filter(|_| args.publish.is_some())
                        .map(|c| c.published_ok.load(Ordering::Relaxed)),
                )
            );
            last_status = now;
        }
    }
    if bar_drawn {
        eprint!("{CLEAR_LINE}");
    }
    early
}

fn sample(args: &RunArgs, c: &crate::metrics::Counters) -> Sample {
    Sample {
        publish_events: c.publish_events,
        ..probe::sample(args.server_pid, c.open, c.events)
    }
}

/// Carriage return and ANSI "erase line": removes the progress bar on a terminal.
const CLEAR_LINE: &str = "\r\x1b[2K";
