//! The command line: the clap definition and its conversion into a Config. The only file that
//! knows clap.

use crate::config::{Config, DEFAULT_JOBS, ProgressMode, Reflink};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
What is copied where:
  treecopy SRCDIR DST      DST becomes a copy of SRCDIR's contents. DST is created if missing;
                           if it exists, SRCDIR's entries are copied into it and replace
                           same-named files atomically. Nothing in DST is deleted.
  treecopy SRCFILE DST     DST is the target file; if DST is an existing directory, the copy
                           is DST/SRCFILE's name.
  SRC itself is followed if it is a symlink; nothing below it is ever followed.

Every file is written under a temporary name (.treecopy-tmp.<pid>.<n>) in its destination
directory and renamed over its final name only when complete, with its mode, owner (as root)
and nanosecond times set. Readers never see a half-written file.

Examples:
  treecopy -j16 /data/green-000/fields /data/green-001/fields
  treecopy -q /data/green-000/fields /data/green-001/fields >>/var/log/treecopy.log 2>&1

Exit status:
  0    everything was copied
  1    some entries failed (each is reported on stderr)
  2    fatal: usage error, SRC missing, DST equal to or inside SRC, DST unusable
  130  interrupted by SIGINT; 143 by SIGTERM (128 + the signal number)";

/// Copies a directory tree in parallel, fast and safely: files appear under their final names
/// only when complete.
#[derive(Debug, Parser)]
#[command(name = "treecopy", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Source directory (or a single regular file)
    pub src: PathBuf,

    /// Destination directory (or file, when SRC is a file)
    pub dst: PathBuf,

    /// Number of concurrent copy workers
    #[arg(short = 'j', long, value_name = "N", default_value_t = DEFAULT_JOBS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub jobs: usize,

    /// Print one line per action: temp file, bytes and method, rename, fallback decisions
    #[arg(short, long)]
    pub verbose: bool,

    /// Print only errors: no summary, no progress
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Show progress even when stderr is not a terminal (then as a plain line every 5 s)
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,

    /// Never show progress
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,

    /// Do not copy extended attributes and POSIX ACLs
    #[arg(long)]
    pub no_xattrs: bool,

    /// Copy every name of a hard-linked file as a separate file
    #[arg(long)]
    pub no_hard_links: bool,

    /// Clone file data (shared extents on XFS, btrfs): auto where possible, always or fail,
    /// never. --reflink alone means always, as in cp
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ReflinkArg::Auto,
          num_args = 0..=1, require_equals = true, default_missing_value = "always")]
    pub reflink: ReflinkArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReflinkArg {
    Auto,
    Always,
    Never,
}

impl Cli {
    pub fn into_config(self) -> Config {
        let progress = if self.quiet || self.no_progress {
            ProgressMode::Off
        } else if self.progress {
            ProgressMode::On
        } else {
            ProgressMode::Auto
        };
        Config {
            src: self.src,
            dst: self.dst,
            jobs: self.jobs,
            verbose: self.verbose,
            quiet: self.quiet,
            progress,
            xattrs: !self.no_xattrs,
            hard_links: !self.no_hard_links,
            reflink: match self.reflink {
                ReflinkArg::Auto => Reflink::Auto,
                ReflinkArg::Always => Reflink::Always,
                ReflinkArg::Never => Reflink::Never,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn progress_flags_resolve() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().into_config();
        assert_eq!(parse(&["treecopy", "a", "b"]).progress, ProgressMode::Auto);
        assert_eq!(
            parse(&["treecopy", "--progress", "a", "b"]).progress,
            ProgressMode::On
        );
        assert_eq!(
            parse(&["treecopy", "--progress", "--no-progress", "a", "b"]).progress,
            ProgressMode::Off
        );
        assert_eq!(
            parse(&["treecopy", "-q", "--progress", "a", "b"]).progress,
            ProgressMode::Off
        );
        assert_eq!(parse(&["treecopy", "-j", "3", "a", "b"]).jobs, 3);
        assert!(Cli::try_parse_from(["treecopy", "-j", "0", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["treecopy", "-q", "-v", "a", "b"]).is_err());
        assert_eq!(parse(&["treecopy", "a", "b"]).reflink, Reflink::Auto);
        assert_eq!(
            parse(&["treecopy", "--reflink", "a", "b"]).reflink,
            Reflink::Always
        );
        assert_eq!(
            parse(&["treecopy", "--reflink=never", "a", "b"]).reflink,
            Reflink::Never
        );
        let defaults = parse(&["treecopy", "a", "b"]);
        assert!(defaults.xattrs && defaults.hard_links);
        let off = parse(&["treecopy", "--no-xattrs", "--no-hard-links", "a", "b"]);
        assert!(!off.xattrs && !off.hard_links);
    }
}
