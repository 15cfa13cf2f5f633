//! The one voice of a run: the counters every worker updates, and every line written to
//! stderr, routed through the progress display so that no line garbles the bar.

use crate::error::EntryError;
use crate::progress::Progress;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the run has found and done so far; read by the progress display and the summary.
#[derive(Debug, Default)]
pub struct Counters {
    /// Entries listed by the walker that are not directories.
    pub found_entries: AtomicU64,
    /// Bytes of regular files opened so far: the progress total grows as files are reached.
    pub found_bytes: AtomicU64,
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub specials: AtomicU64,
    pub hardlinks: AtomicU64,
    /// Bytes written so far, including files still being copied or that will fail.
    pub bytes: AtomicU64,
    /// Bytes of the files committed under their final names: what the summary reports.
    pub committed_bytes: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Entries finished, copied or failed, for "files done of found".
    pub fn entries_done(&self) -> u64 {
        [
            &self.files,
            &self.symlinks,
            &self.specials,
            &self.hardlinks,
            &self.failed,
        ]
        .iter()
        .map(|c| Self::get(c))
        .sum()
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct Reporter {
    counters: Arc<Counters>,
    progress: Box<dyn Progress>,
    verbose: bool,
}

impl Reporter {
    pub fn new(counters: Arc<Counters>, progress: Box<dyn Progress>, verbose: bool) -> Self {
        Reporter {
            counters,
            progress,
            verbose,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Writes one line on stderr, prefixed with the program name, without garbling the bar.
    pub fn line(&self, msg: &str) {
        self.progress.println(&format!("treecopy: {msg}"));
    }

    /// A line only `-v` wants; the message is not even built otherwise.
    pub fn verbose(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            self.line(&msg());
        }
    }

    pub fn is_verbose(&self) -> bool {
        self.verbose
    }

    /// Reports a failed entry once and counts it. Errors are printed even with -q: a cron job
    /// must be able to tell what failed.
    pub fn failed(&self, err: &EntryError) {
        Counters::add(&self.counters.failed, 1);
        self.line(&format!("error: {err}"));
    }

    pub fn warn(&self, msg: &str) {
        self.line(&format!("warning: {msg}"));
    }

    pub fn found_entries(&self, n: u64) {
        Counters::add(&self.counters.found_entries, n);
    }

    pub fn found_bytes(&self, n: u64) {
        Counters::add(&self.counters.found_bytes, n);
    }

    pub fn copied_bytes(&self, n: u64) {
        Counters::add(&self.counters.bytes, n);
    }

    pub fn done_file(&self, bytes: u64) {
        Counters::add(&self.counters.files, 1);
        Counters::add(&self.counters.committed_bytes, bytes);
    }

    pub fn done_dir(&self) {
        Counters::add(&self.counters.dirs, 1);
    }

    pub fn done_symlink(&self) {
        Counters::add(&self.counters.symlinks, 1);
    }

    pub fn done_hardlink(&self) {
        Counters::add(&self.counters.hardlinks, 1);
    }

    pub fn done_special(&self) {
        Counters::add(&self.counters.specials, 1);
    }

    /// Stops the display; lines printed afterwards go straight to stderr.
    pub fn finish(&self) {
        self.progress.finish();
    }
}
