//! The treecopy binary: parse the command line, run, print the summary and the reports, map
//! the outcome to an exit code.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};
use treecopy::Refusal;
use treecopy::config::Config;
use treecopy::summary::{self, EXIT_FATAL, EXIT_VANISHED, Ending};

fn main() -> ExitCode {
    let cfg = match treecopy::cli::config_from_env() {
        Ok(cfg) => cfg,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "treecopy: error: {err:#}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    if let Some(path) = &cfg.report
        && let Err(e) = check_report_target(path)
    {
        // Found now, not after a night's copy whose outcome would then go unrecorded.
        let _ = writeln!(
            std::io::stderr(),
            "treecopy: error: report {}: {e}",
            treecopy::error::shown(path)
        );
        return ExitCode::from(EXIT_FATAL);
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let code = match treecopy::run(&cfg) {
        Ok(summary) => {
            if !cfg.quiet {
                let _ = writeln!(std::io::stderr(), "treecopy: {}", summary.line());
            }
            let mut written = emit_report(&cfg, &Ending::Ran(&summary), started);
            if let Some(e) = treecopy::progress::stdout_error() {
                let _ = writeln!(std::io::stderr(), "treecopy: error: write stdout: {e}");
                written = false;
            }
            // A cron wrapper that reads the report (or the itemized list) must not take a
            // missing or cut one for success.
            match summary.exit_code() {
                0 | EXIT_VANISHED if !written => 1,
                code => code,
            }
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "treecopy: error: {err:#}");
            let code = err
                .downcast_ref::<Refusal>()
                .map(|r| r.exit_code)
                .unwrap_or(EXIT_FATAL);
            emit_report(&cfg, &Ending::Refused(format!("{err:#}"), code), started);
            code
        }
    };
    ExitCode::from(code)
}

/// --json on stdout, --report to a file. Returns false if the report file could not be
/// written (a --json line that cannot be written is recorded as a stdout error).
fn emit_report(cfg: &Config, ending: &Ending<'_>, started: f64) -> bool {
    if !cfg.json && cfg.report.is_none() {
        return true;
    }
    let doc = summary::report(&cfg.src, &cfg.dst, ending, started);
    if cfg.json
        && let Err(e) = writeln!(std::io::stdout().lock(), "{doc}")
    {
        treecopy::progress::note_stdout_error(&e);
    }
    if let Some(path) = &cfg.report {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        if let Err(e) = write_report(path, text.as_bytes()) {
            let _ = writeln!(
                std::io::stderr(),
                "treecopy: error: write report {}: {e}",
                treecopy::error::shown(path)
            );
            return false;
        }
    }
    true
}

/// Where --report FILE puts the report.
enum ReportTarget {
    /// Written whole under a temp name beside this path (FILE, or where its symlink points)
    /// and renamed over it; the metadata of the file it replaces, if any.
    Replace(PathBuf, Option<fs::Metadata>),
    /// Written into as it is: a FIFO, a device, or a dangling symlink (written through, as a
    /// shell redirection would).
    Into,
}

fn report_target(path: &Path) -> io::Result<ReportTarget> {
    match fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Ok(ReportTarget::Into),
        Ok(meta) => Ok(ReportTarget::Replace(fs::canonicalize(path)?, Some(meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound && path.is_symlink() => {
            Ok(ReportTarget::Into)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(ReportTarget::Replace(path.to_path_buf(), None))
        }
        Err(e) => Err(e),
    }
}

/// Whether the report can be written where --report says: a file is replaced by way of a
/// temp file in its directory, which is made and removed here; a directory is refused; what
/// else is there (a FIFO, a device) is left to the write.
fn check_report_target(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if path.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let ReportTarget::Replace(target, old) = report_target(path)? else {
        return Ok(());
    };
    if old.is_some() {
        // Opened to append, which changes nothing: a file nobody may write (procfs).
        fs::OpenOptions::new().append(true).open(path)?;
    }
    // A directory that takes no new files (procfs, a read-only mount) says so now.
    let (file, temp) = create_temp_beside(&target)?;
    drop(file);
    let _ = fs::remove_file(&temp);
    // In a sticky directory (/tmp) only the file's or the directory's owner may rename over
    // the file.
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let euid = nix::unistd::geteuid().as_raw();
    let dir_meta = fs::metadata(dir)?;
    if let Some(old) = old
        && dir_meta.mode() & libc::S_ISVTX != 0
        && euid != 0
        && old.uid() != euid
        && dir_meta.uid() != euid
    {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Writes the report file. A regular file (or a new one) is written whole under a fresh temp
/// name beside it and renamed over it, so a reader never sees half a report; a symlink is
/// followed, so the link stays and its target is replaced. Anything else (a FIFO, /dev/stdout,
/// a device) is written into as it is: replacing it would break the reader or the system.
fn write_report(path: &Path, text: &[u8]) -> io::Result<()> {
    let (target, old) = match report_target(path)? {
        ReportTarget::Replace(target, old) => (target, old),
        // A directory or a socket refuses the open with the OS's own error.
        ReportTarget::Into => {
            return fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?
                .write_all(text);
        }
    };
    let (mut file, temp) = create_temp_beside(&target)?;
    // A report replacing an older one keeps its mode and owner: a private log stays private.
    if let Some(old) = old {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
        let _ = file.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777));
    }
    let written = file
        .write_all(text)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temp, &target));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// A new file beside `target` under a name nobody else holds (O_EXCL; never a link).
fn create_temp_beside(target: &Path) -> io::Result<(fs::File, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    // The copy's own temp names: unique in this run, and a leftover of a dead run (the only
    // possible clash) just means the next name.
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let name = treecopy::commit::next_temp_name();
        let temp = target.with_file_name(std::ffi::OsStr::from_bytes(name.to_bytes()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
        {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
