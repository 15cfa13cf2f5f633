//! What a run did, for people and for scripts: the one-line `key=value` summary on stderr and
//! the JSON report (schema in docs/report.md), and the exit status that goes with them.

use crate::error::Severity;
use crate::report::{Counters, Failure, MAX_FAILURES_KEPT};
use serde_json::{Value, json};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// The JSON report's schema name; a change that could break a reader gets a new number.
pub const SCHEMA: &str = "treecopy-report/1";

/// Exit statuses besides 0, 1 and 128+signal.
pub const EXIT_FATAL: u8 = 2;
pub const EXIT_LOCKED: u8 = 3;
pub const EXIT_DELETE_REFUSED: u8 = 4;
/// Only source entries that vanished or changed during the run kept the copy from being
/// complete: rsync's number for vanished files.
pub const EXIT_VANISHED: u8 = 24;

/// The outcome of a run that started.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Regular files whose data was copied.
    pub files: u64,
    /// Directories reached (created or already there).
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Names linked to an already copied file (hard links).
    pub hardlinks: u64,
    /// Bytes of file data copied.
    pub bytes: u64,
    pub failed: u64,
    /// Source entries deleted after they were listed.
    pub vanished: u64,
    /// Source files written to while they were copied (not committed).
    pub changed: u64,
    /// Entries written anew (any type, directories created included).
    pub copied: u64,
    pub dirs_created: u64,
    /// Entries whose metadata only was fixed.
    pub updated: u64,
    /// Entries found up to date or left alone by --ignore-existing/--update.
    pub skipped: u64,
    pub skipped_bytes: u64,
    pub deleted: u64,
    pub excluded: u64,
    pub elapsed: Duration,
    /// The signal that stopped the run early.
    pub interrupted: Option<i32>,
    pub dry_run: bool,
    /// Failures kept for the report (at most MAX_FAILURES_KEPT).
    pub failures: Vec<Failure>,
}

impl Summary {
    pub fn from_counters(c: &Counters) -> Self {
        let get = Counters::get;
        Summary {
            files: get(&c.files),
            dirs: get(&c.dirs),
            symlinks: get(&c.symlinks),
            specials: get(&c.specials),
            hardlinks: get(&c.hardlinks),
            bytes: get(&c.committed_bytes),
            failed: get(&c.failed),
            vanished: get(&c.vanished),
            changed: get(&c.changed),
            // Everything written anew, whatever its type.
            copied: [
                &c.files,
                &c.symlinks,
                &c.specials,
                &c.hardlinks,
                &c.dirs_created,
            ]
            .iter()
            .map(|n| get(n))
            .sum(),
            dirs_created: get(&c.dirs_created),
            updated: get(&c.updated),
            skipped: get(&c.skipped),
            skipped_bytes: get(&c.skipped_bytes),
            deleted: get(&c.deleted),
            excluded: get(&c.excluded),
            ..Summary::default()
        }
    }

    /// The process exit status: 128+signal when interrupted, 1 when anything failed, 24
    /// when the only trouble was source entries that vanished or changed during the run.
    pub fn exit_code(&self) -> u8 {
        match self.interrupted {
            Some(sig) => (128 + sig).clamp(0, 255) as u8,
            None if self.failed > 0 => 1,
            None if self.vanished + self.changed > 0 => EXIT_VANISHED,
            None => 0,
        }
    }

    /// One key=value line a script can parse.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        // A dry run moves nothing: its bytes are what a run would copy.
        let rate = match self.dry_run {
            true => 0.0,
            false => self.bytes as f64 / secs.max(1e-6) / (1024.0 * 1024.0),
        };
        let mut line = format!(
            "summary files={} dirs={} symlinks={} specials={} hardlinks={} bytes={} failed={} \
             copied={} updated={} skipped={} deleted={} excluded={} vanished={} changed={} \
             elapsed={secs:.3}s rate={rate:.1}MiB/s",
            self.files,
            self.dirs,
            self.symlinks,
            self.specials,
            self.hardlinks,
            self.bytes,
            self.failed,
            self.copied,
            self.updated,
            self.skipped,
            self.deleted,
            self.excluded,
            self.vanished,
            self.changed,
        );
        if self.dry_run {
            line.push_str(" dry_run=1");
        }
        if let Some(sig) = self.interrupted {
            line.push_str(&format!(" interrupted=signal{sig}"));
        }
        line
    }
}

/// How a run ended, for the report.
pub enum Ending<'a> {
    Ran(&'a Summary),
    /// Refused before copying: the message and the exit status (2, 3 or 4).
    Refused(String, u8),
}

/// A path as JSON: a string, and for a name that is not UTF-8 also its bytes in hex, so a
/// script can still find the entry.
fn path_fields(key: &str, path: &Path) -> Vec<(String, Value)> {
    let bytes = path.as_os_str().as_bytes();
    let mut out = vec![(key.to_string(), json!(path.to_string_lossy()))];
    if std::str::from_utf8(bytes).is_err() {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        out.push((format!("{key}_hex"), json!(hex)));
    }
    out
}

/// The JSON report of a run (docs/report.md).
pub fn report(src: &Path, dst: &Path, ending: &Ending<'_>, started_unix: f64) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("schema".into(), json!(SCHEMA));
    doc.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    for (k, v) in path_fields("src", src)
        .into_iter()
        .chain(path_fields("dst", dst))
    {
        doc.insert(k, v);
    }
    doc.insert("started_unix".into(), json!(started_unix));
    match ending {
        Ending::Refused(message, code) => {
            let outcome = match *code {
                EXIT_LOCKED => "locked",
                EXIT_DELETE_REFUSED => "delete_refused",
                // A signal before the copy began (while waiting for the lock).
                129.. => "interrupted",
                _ => "fatal",
            };
            doc.insert("outcome".into(), json!(outcome));
            doc.insert("exit_code".into(), json!(code));
            doc.insert("error".into(), json!(message));
            if *code > 128 {
                doc.insert("interrupted_by_signal".into(), json!(code - 128));
            }
        }
        Ending::Ran(s) => {
            let outcome = match (s.interrupted, s.failed, s.vanished + s.changed) {
                (Some(_), _, _) => "interrupted",
                (None, 0, 0) => "ok",
                (None, 0, _) => "vanished",
                (None, _, _) => "failures",
            };
            doc.insert("outcome".into(), json!(outcome));
            doc.insert("exit_code".into(), json!(s.exit_code()));
            doc.insert("error".into(), Value::Null);
            doc.insert("dry_run".into(), json!(s.dry_run));
            doc.insert("interrupted_by_signal".into(), json!(s.interrupted));
            doc.insert("elapsed_seconds".into(), json!(s.elapsed.as_secs_f64()));
            doc.insert(
                "counts".into(),
                json!({
                    "copied": s.copied,
                    "updated": s.updated,
                    "skipped": s.skipped,
                    "deleted": s.deleted,
                    "failed": s.failed,
                    "excluded": s.excluded,
                    "vanished": s.vanished,
                    "changed": s.changed,
                }),
            );
            doc.insert(
                "copied_by_type".into(),
                json!({
                    "files": s.files,
                    "dirs": s.dirs_created,
                    "symlinks": s.symlinks,
                    "specials": s.specials,
                    "hardlinks": s.hardlinks,
                }),
            );
            doc.insert("dirs_seen".into(), json!(s.dirs));
            doc.insert(
                "bytes".into(),
                json!({ "copied": s.bytes, "skipped": s.skipped_bytes }),
            );
            let entry = |f: &Failure| {
                let mut entry = serde_json::Map::new();
                for (k, v) in path_fields("path", &f.path) {
                    entry.insert(k, v);
                }
                if let Some(to) = &f.to {
                    for (k, v) in path_fields("to", to) {
                        entry.insert(k, v);
                    }
                }
                entry.insert("op".into(), json!(f.op));
                entry.insert("error".into(), json!(f.error));
                entry.insert("errno".into(), json!(f.errno));
                Value::Object(entry)
            };
            // The lists share one cap, so any of them may be the one cut short.
            let truncated = s.failures.len() >= MAX_FAILURES_KEPT;
            for (key, severity, count) in [
                ("failures", Severity::Failed, s.failed),
                ("vanished", Severity::Vanished, s.vanished),
                ("changed", Severity::Changed, s.changed),
            ] {
                let listed: Vec<Value> = s
                    .failures
                    .iter()
                    .filter(|f| f.severity == severity)
                    .map(entry)
                    .collect();
                doc.insert(
                    format!("{key}_truncated"),
                    json!(truncated && count as usize > listed.len()),
                );
                doc.insert(key.into(), Value::Array(listed));
            }
        }
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    #[test]
    fn report_carries_counts_and_failures() {
        let summary = Summary {
            copied: 3,
            skipped: 2,
            failed: 1,
            bytes: 10,
            failures: vec![Failure {
                op: "open",
                path: PathBuf::from(OsStr::from_bytes(b"/s/bad\xff")),
                to: None,
                error: "Permission denied (os error 13)".into(),
                errno: Some(13),
                severity: Severity::Failed,
            }],
            ..Summary::default()
        };
        let doc = report(
            Path::new("/s"),
            Path::new("/d"),
            &Ending::Ran(&summary),
            1.0,
        );
        assert_eq!(doc["schema"], SCHEMA);
        assert_eq!(doc["exit_code"], 1);
        assert_eq!(doc["outcome"], "failures");
        assert_eq!(doc["counts"]["copied"], 3);
        assert_eq!(doc["counts"]["skipped"], 2);
        assert_eq!(doc["bytes"]["copied"], 10);
        let failure = &doc["failures"][0];
        assert_eq!(failure["op"], "open");
        assert_eq!(failure["errno"], 13);
        assert_eq!(failure["path_hex"], "2f732f626164ff");
        let refused = report(
            Path::new("/s"),
            Path::new("/d"),
            &Ending::Refused("locked".into(), EXIT_LOCKED),
            1.0,
        );
        assert_eq!(refused["outcome"], "locked");
        assert_eq!(refused["exit_code"], 3);
    }

    #[test]
    fn vanished_entries_alone_exit_24_and_are_listed_apart() {
        let gone = Failure {
            op: "open",
            path: PathBuf::from("/s/gone"),
            to: None,
            error: "No such file or directory (os error 2)".into(),
            errno: Some(2),
            severity: Severity::Vanished,
        };
        let summary = Summary {
            vanished: 1,
            failures: vec![gone.clone()],
            ..Summary::default()
        };
        assert_eq!(summary.exit_code(), EXIT_VANISHED);
        assert!(summary.line().contains(" vanished=1 "));
        let doc = report(
            Path::new("/s"),
            Path::new("/d"),
            &Ending::Ran(&summary),
            1.0,
        );
        assert_eq!(doc["outcome"], "vanished");
        assert_eq!(doc["counts"]["vanished"], 1);
        assert_eq!(doc["vanished"][0]["path"], "/s/gone");
        assert_eq!(doc["failures"].as_array().map(Vec::len), Some(0));
        // A real failure outranks a vanished entry; a signal outranks both.
        let mixed = Summary {
            failed: 1,
            ..summary.clone()
        };
        assert_eq!(mixed.exit_code(), 1);
        let stopped = Summary {
            interrupted: Some(2),
            ..mixed
        };
        assert_eq!(stopped.exit_code(), 130);
        let changed = Summary {
            changed: 1,
            ..Summary::default()
        };
        assert_eq!(changed.exit_code(), EXIT_VANISHED);
        assert!(changed.line().contains(" changed=1 "));
        let doc = report(
            Path::new("/s"),
            Path::new("/d"),
            &Ending::Ran(&changed),
            1.0,
        );
        assert_eq!(doc["counts"]["changed"], 1);
    }
}
