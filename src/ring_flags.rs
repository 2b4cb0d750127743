//! io_uring setup flags: which ones a worker's ring is built with, and the fallback chain.
//!
//! A default ring makes the kernel interrupt the worker (a reschedule IPI) to run io_uring's
//! task work on every completion. `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+) defers that work until
//! the worker next waits for completions, batched and without interrupts, which is what measured
//! fastest here (`../shared/notes/uring-fast-paths.md`); `COOP_TASKRUN | TASKRUN_FLAG` (5.19+)
//! avoids the interrupt but not the separate run. Older kernels reject unknown flags with EINVAL,
//! so `auto` tries each set in turn on the worker's own thread (SINGLE_ISSUER binds the ring to
//! the thread that builds it) and takes the first the kernel accepts: decided by a real setup,
//! never by the kernel version string.

use std::fmt;

use clap::ValueEnum;

/// `--uring-flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Choice {
    /// The best set this kernel accepts: defer, else coop, else none.
    Auto,
    /// SINGLE_ISSUER | DEFER_TASKRUN, or fail.
    Defer,
    /// COOP_TASKRUN | TASKRUN_FLAG, or fail.
    Coop,
    /// No setup flags (monoio's default ring).
    None,
}

/// One set of setup flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    Defer,
    Coop,
    None,
}

impl Flags {
    /// The sets to try for `choice`, best first.
    pub fn chain(choice: Choice) -> &'static [Flags] {
        match choice {
            Choice::Auto => &[Flags::Defer, Flags::Coop, Flags::None],
            Choice::Defer => &[Flags::Defer],
            Choice::Coop => &[Flags::Coop],
            Choice::None => &[Flags::None],
        }
    }

    /// A ring builder with these flags.
    pub fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            Flags::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            Flags::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            Flags::None => {}
        }
        b
    }

    /// Whether the kernel sets up a ring with these flags (on this thread).
    pub fn accepted(self) -> Result<(), std::io::Error> {
        self.builder().build(8).map(drop)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flags::Defer => "single_issuer|defer_taskrun",
            Flags::Coop => "coop_taskrun|taskrun_flag",
            Flags::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_the_best_first_and_ends_with_none() {
        assert_eq!(
            Flags::chain(Choice::Auto),
            &[Flags::Defer, Flags::Coop, Flags::None]
        );
        assert_eq!(Flags::chain(Choice::None), &[Flags::None]);
        // this kernel (6.18 here; CI's too) takes every set
        if io_uring::IoUring::new(8).is_ok() {
            for f in Flags::chain(Choice::Auto) {
                f.accepted().unwrap_or_else(|e| panic!("{f}: {e}"));
            }
        }
    }
}
