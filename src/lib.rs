//! treecopy: copies large directory trees in parallel, fast and safely. `run` takes a resolved
//! Config and returns what happened; the binary maps that to an exit code and the reports.

pub mod aside;
pub mod cli;
pub mod commit;
pub mod config;
pub mod copy;
pub mod delete;
pub mod delta;
pub mod driver;
pub mod error;
pub mod filter;
pub mod hash;
pub mod links;
pub mod lock;
pub mod meta;
pub mod progress;
pub mod report;
pub mod signal;
pub mod summary;
pub mod sys;
pub mod walk;
pub mod writeback;

use crate::error::shown;
use config::{Config, ProgressMode};
use filter::Filter;
use lock::{DstLock, LockError};
use progress::Display;
use report::{Counters, Reporter};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;
pub use summary::Summary;
use summary::{EXIT_DELETE_REFUSED, EXIT_LOCKED};
use walk::Plan;

/// A run refused before it changed anything, with its own exit status: DST locked by
/// another run (3), or a deletion refused by --max-delete or an empty SRC (4).
#[derive(Debug)]
pub struct Refusal {
    pub message: String,
    pub exit_code: u8,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

fn refuse(exit_code: u8, message: String) -> anyhow::Error {
    Refusal { message, exit_code }.into()
}

/// Open files one worker may need at once, for the -j the open-file limit allows.
const FDS_PER_WORKER: u64 = 8;

/// Copies as `cfg` says. An `Err` means the run could not start (exit status 2, or a
/// `Refusal`'s); failures of single entries are reported on stderr and counted in the Summary.
pub fn run(cfg: &Config) -> anyhow::Result<Summary> {
    let started = Instant::now();
    signal::install()?;
    sys::raise_fd_limit();
    let operands = walk::inspect(&cfg.src, &cfg.dst)?;
    let plan = walk::plan(&cfg.src, &cfg.dst, &operands)?;
    let filter = Filter::new(&cfg.rules)?;
    if cfg.delete
        && let Plan::Tree { src, dst, .. } = &plan
        && src.starts_with(dst)
    {
        anyhow::bail!(
            "source {} is inside the destination {}: --delete could remove it",
            shown(src),
            shown(dst)
        );
    }
    let jobs = cfg.jobs.unwrap_or_else(|| {
        config::default_jobs(
            sys::is_remote_path(&operands.src_real) || sys::is_remote_path(&operands.dst_real),
        )
    });
    // Each worker holds a file on each side, chunk runners two more, and every directory in
    // flight two: workers beyond what the open-file limit allows would fail files with EMFILE.
    let fd_jobs = (sys::fd_limit().saturating_sub(64) / FDS_PER_WORKER).max(1) as usize;
    let jobs = if jobs > fd_jobs {
        eprintln!(
            "treecopy: warning: -j {jobs} lowered to {fd_jobs}: the open-file limit is {}",
            sys::fd_limit()
        );
        fd_jobs
    } else {
        jobs
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("treecopy-{i}"))
        .build()?;

    // One run per destination tree: the lock is taken before anything in DST changes.
    let dst_dir =
        match &plan {
            Plan::Tree { dst, .. } if !cfg.dry_run => {
                walk::create_destination(dst)?;
                Some(sys::open_dir_path(dst).map_err(|e| {
                    anyhow::anyhow!("open destination directory {}: {e}", shown(dst))
                })?)
            }
            _ => None,
        };
    let mut dst_lock = None;
    if let (Some(dir), Plan::Tree { dst, .. }) = (&dst_dir, &plan) {
        let waiting = |holder: Option<i32>| {
            if !cfg.quiet {
                eprintln!(
                    "treecopy: waiting for the lock on {} held by another run{}",
                    shown(dst),
                    holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
                );
            }
        };
        match DstLock::acquire(dir.as_fd(), cfg.wait, waiting) {
            Ok(lock) => dst_lock = Some(lock),
            Err(LockError::Held(holder)) => {
                return Err(refuse(EXIT_LOCKED, lock::held_message(dst, holder)));
            }
            // A read-only DST cannot be written by another run either: the lock guards
            // nothing, and an up-to-date copy is still checked (a write it needs fails by
            // name).
            Err(LockError::Io(e)) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(LockError::Io(_)) if signal::received().is_some() => {
                let sig = signal::received().unwrap_or_default();
                return Err(refuse(
                    (128 + sig).clamp(0, 255) as u8,
                    format!("interrupted by signal {sig} while waiting for the lock"),
                ));
            }
            Err(LockError::Io(e)) => {
                anyhow::bail!("lock {}: {e}", shown(&dst.join(".treecopy.lock")))
            }
        }
    }
    if cfg.delete
        && let Plan::Tree { src, dst, .. } = &plan
    {
        check_deletions(cfg, src, dst, &pool, &plan)?;
    }

    let counters = Arc::new(Counters::default());
    let terminal = std::io::stderr().is_terminal();
    let display = match cfg.progress {
        ProgressMode::Off => Display::None,
        ProgressMode::Auto if !terminal => Display::None,
        ProgressMode::On if !terminal => Display::Lines,
        ProgressMode::Auto | ProgressMode::On => Display::Bar,
    };
    let rep = Reporter::new(
        Arc::clone(&counters),
        progress::start(display, Arc::clone(&counters)),
        cfg.verbose,
    )
    .with_outputs(cfg.itemize, cfg.json || cfg.report.is_some());
    let engine = driver::Engine::new(rep, driver::Options::of(cfg), filter);
    let outcome = engine.run(&plan, &pool);
    engine.reporter().finish();
    let failures = engine.reporter().take_failures();
    drop(engine);
    if let Some(lock) = dst_lock {
        // The root's times were set when its subtree was done, unless the run was cut short.
        let times = match (&plan, signal::received()) {
            (Plan::Tree { src, .. }, None) => {
                sys::lstat_path(src).ok().map(|st| (st.atime, st.mtime))
            }
            _ => None,
        };
        lock.release(times);
    }
    outcome?;

    Ok(Summary {
        elapsed: started.elapsed(),
        interrupted: signal::received(),
        dry_run: cfg.dry_run,
        failures,
        ..Summary::from_counters(&counters)
    })
}

/// The safety checks of --delete, before anything is copied or deleted: an empty SRC (an
/// unmounted filesystem looks empty) is refused unless --allow-empty-source; with
/// --max-delete, a listing-only pass counts what would be deleted and refuses the run if it is
/// more.
fn check_deletions(
    cfg: &Config,
    src: &std::path::Path,
    dst: &std::path::Path,
    pool: &rayon::ThreadPool,
    plan: &Plan,
) -> anyhow::Result<()> {
    let visible = |dir: &std::path::Path| -> anyhow::Result<usize> {
        let Ok(fd) = sys::open_dir_path(dir) else {
            return Ok(0);
        };
        let listing = sys::list_dir(fd.as_fd())
            .map_err(|e| anyhow::anyhow!("read directory {}: {e}", shown(dir)))?;
        Ok(listing
            .iter()
            .filter(|(n, _)| {
                commit::temp_owner(n.to_bytes()).is_none() && n.as_c_str() != lock::LOCK_NAME
            })
            .count())
    };
    if !cfg.allow_empty_source && visible(src)? == 0 && visible(dst)? > 0 {
        return Err(refuse(
            EXIT_DELETE_REFUSED,
            format!(
                "source {} is empty: --delete would empty {} (is SRC mounted?); use --allow-empty-source if that is meant",
                shown(src),
                shown(dst)
            ),
        ));
    }
    let Some(max) = cfg.max_delete else {
        return Ok(());
    };
    let counters = Arc::new(Counters::default());
    let rep = Reporter::new(
        Arc::clone(&counters),
        progress::start(Display::None, Arc::clone(&counters)),
        false,
    );
    let opts = driver::Options::of(cfg).counting_deletions();
    let filter = Filter::new(&cfg.rules)?;
    let engine = driver::Engine::new(rep, opts, filter);
    engine.run(plan, pool)?;
    drop(engine);
    if let Some(sig) = signal::received() {
        anyhow::bail!("interrupted by signal {sig} while counting deletions");
    }
    let would = Counters::get(&counters.deleted);
    if would > max {
        return Err(refuse(
            EXIT_DELETE_REFUSED,
            format!(
                "--delete would remove {would} entries of {}, more than --max-delete {max}; nothing was changed",
                shown(dst)
            ),
        ));
    }
    Ok(())
}
