//! The one voice of a run: the counters every worker updates, and every line written to
//! stderr, routed through the progress display so that no line garbles the bar.

use crate::delta::{Change, escape_path, itemize_code};
use crate::error::{EntryError, Severity};
use crate::progress::Progress;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Source entries deleted after they were listed (not failures: see EntryError::vanished).
    pub vanished: AtomicU64,
    /// Source files written to while they were copied, so not committed.
    pub changed: AtomicU64,
    /// Entries whose metadata only was fixed in place.
    pub updated: AtomicU64,
    /// Entries already up to date, or left alone by --ignore-existing / --update.
    pub skipped: AtomicU64,
    /// Bytes of the regular files found up to date.
    pub skipped_bytes: AtomicU64,
    pub dirs_created: AtomicU64,
    /// Entries removed from the destination (each entry of a removed tree counts).
    pub deleted: AtomicU64,
    /// Source entries left out by the filters or by -x (a directory counts once).
    pub excluded: AtomicU64,
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
            &self.vanished,
            &self.changed,
            &self.skipped,
            &self.updated,
        ]
        .iter()
        .map(|c| Self::get(c))
        .sum()
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A failed entry as the JSON report lists it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub op: &'static str,
    pub path: PathBuf,
    pub to: Option<PathBuf>,
    pub error: String,
    pub errno: Option<i32>,
    /// Failed, or vanished or changed (warnings, listed apart in the report).
    pub severity: Severity,
}

/// The JSON report lists at most this many failures (all are counted): a run that fails on
/// every one of ten million files must not hold them all in memory.
pub const MAX_FAILURES_KEPT: usize = 10_000;

pub struct Reporter {
    counters: Arc<Counters>,
    progress: Box<dyn Progress>,
    verbose: bool,
    itemize: bool,
    /// Failures kept for the JSON report; None when no report was asked for.
    failures: Option<Mutex<Vec<Failure>>>,
}

impl Reporter {
    pub fn new(counters: Arc<Counters>, progress: Box<dyn Progress>, verbose: bool) -> Self {
        Reporter {
            counters,
            progress,
            verbose,
            itemize: false,
            failures: None,
        }
    }

    /// Itemized lines on stdout, and failures kept for a report.
    pub fn with_outputs(mut self, itemize: bool, keep_failures: bool) -> Self {
        self.itemize = itemize;
        self.failures = keep_failures.then(|| Mutex::new(Vec::new()));
        self
    }

    pub fn take_failures(&self) -> Vec<Failure> {
        self.failures
            .as_ref()
            .map(|f| std::mem::take(&mut *f.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    pub fn is_itemizing(&self) -> bool {
        self.itemize
    }

    /// One --itemize line: the change code, the path relative to SRC (directories with a
    /// trailing slash), and for symlinks ` -> target`, for hard links ` => first name`.
    pub fn itemize(&self, change: Change, st_mode: u32, rel: &Path, extra: Option<(&str, &[u8])>) {
        if !self.itemize {
            return;
        }
        let mut line = itemize_code(change, st_mode).into_bytes();
        line.push(b' ');
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        line.extend(escape_path(rel.as_os_str().as_bytes()));
        if st_mode & libc::S_IFMT == libc::S_IFDIR {
            line.push(b'/');
        }
        if let Some((arrow, what)) = extra {
            line.extend_from_slice(arrow.as_bytes());
            line.extend(escape_path(what));
        }
        line.push(b'\n');
        self.progress.print_out(&line);
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
    /// must be able to tell what failed. A source entry that vanished since it was listed, or
    /// changed while it was copied, is a warning, counted apart.
    pub fn failed(&self, err: &EntryError) {
        let severity = err.severity();
        let (counter, line) = match severity {
            Severity::Failed => (&self.counters.failed, format!("error: {err}")),
            Severity::Vanished => (&self.counters.vanished, format!("warning: vanished: {err}")),
            Severity::Changed => (&self.counters.changed, format!("warning: changed: {err}")),
        };
        Counters::add(counter, 1);
        self.line(&line);
        if let Some(failures) = &self.failures {
            let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
            if failures.len() < MAX_FAILURES_KEPT {
                failures.push(Failure {
                    op: err.op,
                    path: err.path.clone(),
                    to: err.to.clone(),
                    error: err.source.to_string(),
                    errno: err.source.raw_os_error(),
                    severity,
                });
            }
        }
    }

    /// A fatal condition of the run that is not one entry's failure (a refused deletion).
    pub fn error(&self, msg: &str) {
        self.line(&format!("error: {msg}"));
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

    /// A directory reached (created, or found in place).
    pub fn done_dir(&self) {
        Counters::add(&self.counters.dirs, 1);
    }

    pub fn created_dir(&self) {
        Counters::add(&self.counters.dirs_created, 1);
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

    /// An entry found up to date (`bytes`: its size, for regular files), or kept by policy.
    pub fn skipped(&self, bytes: u64) {
        Counters::add(&self.counters.skipped, 1);
        Counters::add(&self.counters.skipped_bytes, bytes);
    }

    /// An existing entry whose metadata was fixed in place (directories too).
    pub fn updated(&self) {
        Counters::add(&self.counters.updated, 1);
    }

    pub fn deleted(&self) {
        Counters::add(&self.counters.deleted, 1);
    }

    pub fn excluded(&self) {
        Counters::add(&self.counters.excluded, 1);
    }

    /// Stops the display; lines printed afterwards go straight to stderr.
    pub fn finish(&self) {
        self.progress.finish();
    }
}
