//! SIGINT/SIGTERM/SIGHUP handling: the handler only records the signal; workers poll it
//! between files and between chunks, so every temp file is removed by its owner before we exit.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // A second signal means the operator wants out now: leave without cleanup (the next run
    // removes our temp files). _exit is async-signal-safe; everything else here is an atomic.
    if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP (a dropped ssh session during an
/// interactive migration). SA_RESTART keeps syscalls from failing with EINTR in the middle of
/// a copy; the workers check `received()` often enough. A SIGHUP ignored by whoever started
/// us (nohup) stays ignored.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let old = unsafe { sigaction(sig, &action)? };
        if sig == Signal::SIGHUP && matches!(old.handler(), SigHandler::SigIgn) {
            unsafe { sigaction(sig, &old)? };
        }
    }
    Ok(())
}

/// The signal number that asked us to stop, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}
