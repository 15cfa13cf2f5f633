//! The treecopy binary: parse the command line, run, print the summary and the reports, map
//! the outcome to an exit code.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};
use treecopy::Refusal;
use treecopy::config::Config;
use treecopy::summary::{self, EXIT_FATAL, Ending};

fn main() -> ExitCode {
    let cfg = match treecopy::cli::config_from_env() {
        Ok(cfg) => cfg,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "treecopy: error: {err:#}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let code = match treecopy::run(&cfg) {
        Ok(summary) => {
            if !cfg.quiet {
                let _ = writeln!(std::io::stderr(), "treecopy: {}", summary.line());
            }
            let written = emit_report(&cfg, &Ending::Ran(&summary), started);
            // A cron wrapper that reads the report must not take a missing one for success.
            match summary.exit_code() {
                0 if !written => 1,
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

/// --json on stdout, --report to a file (written whole under a temp name, then renamed, so a
/// reader never sees half a report). Returns false if the report file could not be written.
fn emit_report(cfg: &Config, ending: &Ending<'_>, started: f64) -> bool {
    if !cfg.json && cfg.report.is_none() {
        return true;
    }
    let doc = summary::report(&cfg.src, &cfg.dst, ending, started);
    if cfg.json {
        let _ = writeln!(std::io::stdout().lock(), "{doc}");
    }
    if let Some(path) = &cfg.report {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        let temp = path.with_file_name(format!(
            ".{}.tmp{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let written = std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            let _ = writeln!(
                std::io::stderr(),
                "treecopy: error: write report {}: {e}",
                path.display()
            );
            return false;
        }
    }
    true
}
