//! The worker's signals, read from a signalfd: no handler runs, so no work is done in one.
//!
//! TERM, INT, QUIT and USR1 are blocked and read through the signalfd, which the event loop
//! polls. The worker is single-threaded, so the blocked mask covers every thread.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::WorkerError;

/// What the signals read so far ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Nothing (no signal, or only ignored ones).
    None,
    /// TERM: stop accepting, finish the requests in flight, exit 0.
    Graceful,
    /// INT or QUIT: exit 0 at once.
    Quick,
}

/// The blocked signals and the signalfd that reads them.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
    ignore_term: bool,
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
    ] {
        set.add(signal);
    }
    set
}

impl Signals {
    /// Blocks the handled signals and opens a non-blocking signalfd for them; with
    /// `ignore_term`, TERM is read and dropped.
    pub fn block(ignore_term: bool) -> Result<Signals, WorkerError> {
        let set = handled();
        let io = |errno: nix::errno::Errno| WorkerError::Io {
            what: "signalfd",
            source: errno.into(),
        };
        set.thread_block().map_err(io)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io)?;
        Ok(Signals { fd, ignore_term })
    }

    /// The descriptor to poll for readability.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads every pending signal; a quick stop outranks a graceful one.
    pub fn drain(&self) -> Result<Stop, WorkerError> {
        let mut stop = Stop::None;
        while let Some(info) = self.fd.read_signal().map_err(|errno| WorkerError::Io {
            what: "signalfd read",
            source: errno.into(),
        })? {
            let signal = i32::try_from(info.ssi_signo).ok();
            match signal.and_then(|number| Signal::try_from(number).ok()) {
                Some(Signal::SIGINT | Signal::SIGQUIT) => stop = Stop::Quick,
                Some(Signal::SIGTERM) if !self.ignore_term && stop == Stop::None => {
                    stop = Stop::Graceful;
                }
                // USR1 (no log files to reopen) and an ignored TERM.
                _ => {}
            }
        }
        Ok(stop)
    }

    /// Lets TERM (unless ignored), INT and QUIT take their default action again, for a worker
    /// that hangs: it no longer serves, but it still dies of those signals as a hung program
    /// would.
    pub fn unblock_for_hang(&self) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGQUIT);
        if !self.ignore_term {
            set.add(Signal::SIGTERM);
        }
        // A failure leaves them blocked: the master's KILL still ends the worker.
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    }
}
