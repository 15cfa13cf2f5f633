//! latencyfs entry point: parses flags, detaches, mounts, and unmounts on signals.

mod cli;
mod faults;
mod fs;
mod inodes;
mod pacing;
mod replies;
mod stats;
mod sys;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fuser::{Errno, MountOption, Session, SessionACL};

use crate::cli::Args;
use crate::faults::Faults;
use crate::fs::{LatencyFs, Settings};
use crate::stats::Stats;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latencyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let backing = canonical_dir(&args.backing_dir, "backing directory")?;
    let mountpoint = canonical_dir(&args.mountpoint, "mountpoint")?;
    if !args.attr_timeout.is_finite() || args.attr_timeout < 0.0 {
        return Err(io::Error::other(
            "--attr-timeout must be a non-negative number",
        ));
    }
    let blksize = args
        .blksize
        .map(|b| u32::try_from(b).map_err(|_| io::Error::other("--blksize too large")))
        .transpose()?;

    // Forking is only safe while the process has a single thread, so detach first and
    // let the parent wait until the child reports that the mount is up.
    let ready_pipe = if args.foreground {
        None
    } else {
        Some(detach()?)
    };

    // Created files must get exactly the mode the kernel passed (it already applied the
    // caller's umask).
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0) };
    // Timer slack (inherited by every thread started later) is 50 us by default, which
    // would blur sub-millisecond latencies in any slack-aware wait. The reply timer is a
    // timerfd, which fires without slack anyway; this keeps every other timed wait exact.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    raise_fd_limit();
    // Block the control signals in every thread (workers inherit the mask) so that only
    // the signal thread receives them, via sigwait.
    let sigset = control_signals();
    // SAFETY: valid sigset pointer.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &sigset, std::ptr::null_mut()) };

    let stats = Arc::new(Stats::default());
    let settings = Settings {
        latency: Duration::from_micros(args.latency_us),
        stream_bandwidth: args.stream_bandwidth,
        copy_file_range: !args.no_copy_file_range,
        ttl: Duration::from_secs_f64(args.attr_timeout),
        blksize,
        readdirplus: args.readdirplus,
        stale_handles: args.stale_handles,
        faults: Faults::new(
            args.fail_eio_after,
            args.fail_enospc_after,
            &args.fail_path,
            Errno::from_i32(args.fail_errno),
            args.fail_ops.clone(),
        ),
        verbose: args.verbose,
    };
    let fs = LatencyFs::new(&backing, settings, stats.clone())?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("latencyfs:{}", backing.display()).replace(',', "_")),
        MountOption::Subtype("latencyfs".into()),
        // The kernel checks permissions against the attributes we report, for every user.
        MountOption::DefaultPermissions,
        // Root mounting for tests: device nodes and set-ID files behave as on NFS
        // defaults instead of fuser's nodev,nosuid.
        MountOption::Dev,
        MountOption::Suid,
        MountOption::RW,
    ];
    config.acl = SessionACL::All; // allow_other
    // Session threads only read, handle and queue; the reply queue's timer thread sends
    // the answers, so a few of them serve any number of requests in flight.
    config.n_threads = Some(args.threads as usize);
    // One /dev/fuse fd per session thread. A reply must be written to the fd its request
    // was read from; each queued reply carries its own.
    config.clone_fd = true;

    let session = match Session::new(fs, &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("mounting {} failed: {e}", mountpoint.display()),
            ));
        }
    };

    if let Some(kb) = args.read_ahead_kb {
        set_read_ahead(&mountpoint, kb)?;
    }
    if let Some(pipe) = ready_pipe {
        finish_detach(pipe, args.log_file.as_deref())?;
    }
    if args.verbose {
        eprintln!(
            "latencyfs: serving {} at {} (latency {} us, {} threads)",
            backing.display(),
            mountpoint.display(),
            args.latency_us,
            args.threads
        );
    }

    let mp = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("mountpoint contains NUL"))?;
    {
        let stats = stats.clone();
        let stats_file = args.stats_file.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || signal_loop(sigset, mp, stats, stats_file))?;
    }

    // Returns once the filesystem is unmounted (by us on a signal, or by anyone else).
    let result = session.run();
    report_stats(&stats, args.stats, args.stats_file.as_deref());
    result
}

fn canonical_dir(p: &Path, what: &str) -> io::Result<PathBuf> {
    let c = p
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display())))?;
    if !c.is_dir() {
        return Err(io::Error::other(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    Ok(c)
}

/// Writes the mount's bdi read_ahead_kb. The bdi is named after the FUSE connection's
/// device number, taken from mountinfo: stat()ing the mountpoint here would send a
/// request to this very process before its workers run, and hang.
fn set_read_ahead(mountpoint: &Path, kb: u64) -> io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = mountpoint.to_string_lossy();
    let dev = info
        .lines()
        .rev()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == want)
        .map(|f| f[2].to_string())
        .ok_or_else(|| io::Error::other("mount not found in /proc/self/mountinfo"))?;
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    std::fs::write(&path, kb.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("setting {path}: {e}")))
}

fn control_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Benchmarks open many files at once; the default soft limit of 1024 is easy to hit.
fn raise_fd_limit() {
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn signal_loop(set: libc::sigset_t, mountpoint: CString, stats: Arc<Stats>, file: Option<PathBuf>) {
    let mut unmounting = false;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: valid sigset and out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGUSR1 {
            report_stats(&stats, true, file.as_deref());
        } else if !unmounting {
            unmounting = true;
            unmount(&mountpoint);
        } else {
            // A second Ctrl-C: the lazy unmount is still waiting for users to go away.
            eprintln!("latencyfs: exiting without waiting for the mount to be released");
            std::process::exit(1);
        }
    }
}

/// Unmounts like `umount`, falling back to a lazy detach if the mount is busy (the
/// session then ends when the last user lets go) and to fusermount3 when not root.
fn unmount(mountpoint: &CString) {
    // SAFETY: valid path.
    if unsafe { libc::umount2(mountpoint.as_ptr(), 0) } == 0 {
        return;
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            eprintln!("latencyfs: mount busy, detaching lazily");
            // SAFETY: valid path.
            unsafe { libc::umount2(mountpoint.as_ptr(), libc::MNT_DETACH) };
        }
        Some(libc::EPERM) => {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(std::ffi::OsStr::from_bytes(mountpoint.as_bytes()))
                .status();
        }
        _ => eprintln!("latencyfs: unmount failed: {err}"),
    }
}

fn report_stats(stats: &Stats, to_stderr: bool, file: Option<&Path>) {
    let text = stats.render();
    if to_stderr {
        eprint!("latencyfs request counts:\n{text}");
    }
    if let Some(path) = file {
        // Write-then-rename so a reader never sees a half-written file.
        let tmp = path.with_extension("tmp");
        let r = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            eprintln!("latencyfs: writing {}: {e}", path.display());
        }
    }
}

/// Forks; the parent waits for the child's "mounted" byte and exits with its verdict.
/// Returns (in the child) the pipe to report readiness on.
fn detach() -> io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: valid array for two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded here (no thread was spawned yet).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: plain syscall; detaches from the controlling terminal's session.
            unsafe { libc::setsid() };
            Ok(wr)
        }
        _child => {
            drop(wr);
            let mut f = std::fs::File::from(rd);
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            // The child printed its own error if it did not make it.
            std::process::exit(if buf.first() == Some(&b'1') { 0 } else { 1 });
        }
    }
}

/// In the detached child, once mounted: tell the parent, then drop the terminal.
fn finish_detach(pipe: OwnedFd, log: Option<&Path>) -> io::Result<()> {
    let out = match log {
        Some(p) => OpenOptions::new().create(true).append(true).open(p)?,
        None => OpenOptions::new().write(true).open("/dev/null")?,
    };
    let null_in = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors with fds we own.
    unsafe {
        libc::dup2(null_in.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
    }
    // Do not keep the directory we were started in busy.
    std::env::set_current_dir("/")?;
    let mut f = std::fs::File::from(pipe);
    f.write_all(b"1")?;
    Ok(())
}
