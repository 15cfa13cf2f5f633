//! treecopy: copies large directory trees in parallel, fast and safely. `run` takes a resolved
//! Config and returns what happened; the binary maps that to an exit code.

pub mod cli;
pub mod commit;
pub mod config;
pub mod copy;
pub mod driver;
pub mod error;
pub mod links;
pub mod meta;
pub mod progress;
pub mod report;
pub mod signal;
pub mod sys;
pub mod walk;

use config::{Config, ProgressMode};
use progress::Display;
use report::{Counters, Reporter};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of a run that started.
#[derive(Debug, Clone)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Names linked to an already copied file (hard links).
    pub hardlinks: u64,
    pub bytes: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// The signal that stopped the run early.
    pub interrupted: Option<i32>,
}

impl Summary {
    /// The process exit status: 128+signal when interrupted, 1 when anything failed.
    pub fn exit_code(&self) -> u8 {
        match self.interrupted {
            Some(sig) => (128 + sig).clamp(0, 255) as u8,
            None if self.failed > 0 => 1,
            None => 0,
        }
    }

    /// One key=value line a script can parse.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = self.bytes as f64 / secs.max(1e-6) / (1024.0 * 1024.0);
        let mut line = format!(
            "summary files={} dirs={} symlinks={} specials={} hardlinks={} bytes={} failed={} elapsed={secs:.3}s rate={rate:.1}MiB/s",
            self.files,
            self.dirs,
            self.symlinks,
            self.specials,
            self.hardlinks,
            self.bytes,
            self.failed
        );
        if let Some(sig) = self.interrupted {
            line.push_str(&format!(" interrupted=signal{sig}"));
        }
        line
    }
}

/// Copies as `cfg` says. An `Err` means the run could not start (exit status 2); failures of
/// single entries are reported on stderr and counted in the Summary.
pub fn run(cfg: &Config) -> anyhow::Result<Summary> {
    let started = Instant::now();
    signal::install()?;
    sys::raise_fd_limit();
    let operands = walk::inspect(&cfg.src, &cfg.dst)?;
    let plan = walk::plan(&cfg.src, &cfg.dst, &operands)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs)
        .thread_name(|i| format!("treecopy-{i}"))
        .build()?;

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
    );
    let engine = driver::Engine::new(rep, driver::Options::of(cfg));
    let outcome = engine.run(&plan, &pool);
    engine.reporter().finish();
    outcome?;

    let get = Counters::get;
    Ok(Summary {
        files: get(&counters.files),
        dirs: get(&counters.dirs),
        symlinks: get(&counters.symlinks),
        specials: get(&counters.specials),
        hardlinks: get(&counters.hardlinks),
        bytes: get(&counters.committed_bytes),
        failed: get(&counters.failed),
        elapsed: started.elapsed(),
        interrupted: signal::received(),
    })
}
