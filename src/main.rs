//! The treecopy binary: parse the command line, run, print the summary, map it to an exit code.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use treecopy::cli::Cli;

fn main() -> ExitCode {
    let cfg = Cli::parse().into_config();
    match treecopy::run(&cfg) {
        Ok(summary) => {
            if !cfg.quiet {
                let _ = writeln!(std::io::stderr(), "treecopy: {}", summary.line());
            }
            ExitCode::from(summary.exit_code())
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "treecopy: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
