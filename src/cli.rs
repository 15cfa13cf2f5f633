//! The command line: the clap definition and its conversion into a Config. The only file that
//! knows clap.

use crate::config::{Config, ProgressMode, Reflink};
use crate::delta::Policy;
use crate::filter::{Effect, RuleSpec, read_rules_file};
use anyhow::{Context, bail};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
What is copied where:
  treecopy SRCDIR DST      DST becomes a copy of SRCDIR's contents. DST is created if missing;
                           if it exists, SRCDIR's entries are copied into it and replace
                           same-named entries atomically. Nothing in DST is deleted
                           unless --delete is given.
  treecopy SRCFILE DST     DST is the target file; if DST is an existing directory, the copy
                           is DST/SRCFILE's name.
  SRC itself is followed if it is a symlink; nothing below it is ever followed.

Every file is written under a temporary name (.treecopy-tmp.<pid>.<n>) in its destination
directory and renamed over its final name only when complete, with its mode, owner (as root)
and nanosecond times set; a new directory is filled under such a name and renamed into place
once the files in it are complete. Readers never see a half-written file. Entries of SRC
with such names (another run's unfinished work, if SRC is itself being written by treecopy)
and .treecopy.lock files (another run's lock) are not copied; they are counted as excluded.
--delete leaves lock files in DST alone.

Runs are incremental: an entry of DST with the same type, size and modification time as
its source is not copied again (only differing owner, mode, times or xattrs are fixed in
place). --checksum compares content instead. xattrs and ACLs of such an entry are read
only if the source's inode changed (its ctime) since the copy's did, which saves two
requests per file on NFS; one changed on the copy alone is found only with --checksum.

Filters (--include, --exclude, --exclude-from) are matched on the path relative to SRC; the
first matching rule wins. A pattern without '/' matches a name at any depth, a leading '/'
anchors it at SRC, a trailing '/' matches directories only; '*' stays within one name, '**'
crosses '/'. An excluded directory is not entered; excluded entries of DST are not deleted
unless --delete-excluded.

Examples:
  treecopy -j16 /data/green-000/fields /data/green-001/fields
  treecopy -q --delete --max-delete 1000 --report /var/log/treecopy.json \\
      /data/green-000/fields /data/green-001/fields >>/var/log/treecopy.log 2>&1
  treecopy -n -i --delete /data/green-000/fields /data/green-001/fields

Exit status:
  0    everything was copied
  1    some entries failed (each is reported on stderr)
  2    fatal: usage error, SRC missing, DST equal to or inside SRC, DST unusable,
       --report FILE not writable
  3    DST is locked by another treecopy run (without --wait)
  4    refused to delete: more than --max-delete entries, or an empty SRC
  24   nothing failed, but source entries vanished or changed during the copy
  130  interrupted by SIGINT; 143 by SIGTERM, 129 by SIGHUP (128 + the signal number)";

/// Copies a directory tree in parallel, fast and safely: files appear under their final names
/// only when complete.
#[derive(Debug, Parser)]
#[command(name = "treecopy", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Source directory (or a single regular file)
    pub src: PathBuf,

    /// Destination directory (or file, when SRC is a file)
    pub dst: PathBuf,

    /// Number of concurrent copy workers [default: 64 when SRC or DST is on a network or
    /// FUSE filesystem, else two per CPU, at least 4]
    #[arg(short = 'j', long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub jobs: Option<usize>,

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

    /// Decide by content (BLAKE3) instead of size and modification time
    #[arg(short = 'c', long, help_heading = "Deciding what to copy")]
    pub checksum: bool,

    /// Modification times at most SECS apart count as equal (for coarse clocks, e.g. FAT: 2)
    #[arg(long, value_name = "SECS", default_value_t = 0.0,
          value_parser = parse_window, help_heading = "Deciding what to copy")]
    pub modify_window: f64,

    /// Leave every entry that already exists in DST alone
    #[arg(long, help_heading = "Deciding what to copy")]
    pub ignore_existing: bool,

    /// Leave files whose copy in DST is newer than the source
    #[arg(short = 'u', long, help_heading = "Deciding what to copy")]
    pub update: bool,

    /// Exclude entries matching PATTERN (repeatable; see below)
    #[arg(long, value_name = "PATTERN", help_heading = "Deciding what to copy")]
    pub exclude: Vec<String>,

    /// Include entries matching PATTERN, overriding later excludes (repeatable)
    #[arg(long, value_name = "PATTERN", help_heading = "Deciding what to copy")]
    pub include: Vec<String>,

    /// Read exclude patterns from FILE, one per line ('+ PATTERN' includes; '#' comments)
    #[arg(long, value_name = "FILE", help_heading = "Deciding what to copy")]
    pub exclude_from: Vec<PathBuf>,

    /// Do not enter directories on other filesystems than SRC's (mount points are created empty)
    #[arg(short = 'x', long, help_heading = "Deciding what to copy")]
    pub one_file_system: bool,

    /// Remove entries of DST that SRC does not have (never following symlinks)
    #[arg(long, help_heading = "Mirroring")]
    pub delete: bool,

    /// With --delete, also remove entries of DST that the filters exclude
    #[arg(long, requires = "delete", help_heading = "Mirroring")]
    pub delete_excluded: bool,

    /// Refuse the whole run (exit 4, nothing changed) if it would delete more than N entries
    #[arg(
        long,
        value_name = "N",
        requires = "delete",
        help_heading = "Mirroring"
    )]
    pub max_delete: Option<u64>,

    /// Let --delete proceed when SRC is empty (refused by default: an unmounted SRC looks empty)
    #[arg(long, requires = "delete", help_heading = "Mirroring")]
    pub allow_empty_source: bool,

    /// Report what would be copied, updated and deleted (as --itemize); change nothing
    #[arg(short = 'n', long, help_heading = "Reporting")]
    pub dry_run: bool,

    /// Print one line per changed entry on stdout, in rsync's --itemize-changes notation
    #[arg(short = 'i', long, help_heading = "Reporting")]
    pub itemize: bool,

    /// Print the JSON report (docs/report.md) on stdout at the end
    #[arg(long, help_heading = "Reporting")]
    pub json: bool,

    /// Write the JSON report (docs/report.md) to FILE at the end
    #[arg(long, value_name = "FILE", help_heading = "Reporting")]
    pub report: Option<PathBuf>,

    /// Wait for another run's lock on DST instead of exiting with status 3
    #[arg(long, help_heading = "Safety")]
    pub wait: bool,

    /// fsync each file before its rename and each directory after its entries: committed
    /// files survive a crash of the machine
    #[arg(long, help_heading = "Safety")]
    pub fsync: bool,

    /// Read each copied file back and compare its hash with the source's before committing it
    #[arg(long, help_heading = "Safety")]
    pub verify: bool,
}

fn parse_window(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=1e9).contains(&secs) => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds")),
    }
}

/// Parses the process's arguments into a Config; usage errors exit with status 2 (clap's
/// own); a rules file that cannot be read is an error for the caller to report.
pub fn config_from_env() -> anyhow::Result<Config> {
    let matches = Cli::command().get_matches();
    config_from_matches(&matches)
}

/// The Config of parsed arguments, with --include/--exclude/--exclude-from in the order given.
pub fn config_from_matches(matches: &ArgMatches) -> anyhow::Result<Config> {
    let cli = Cli::from_arg_matches(matches)?;
    let rules = ordered_rules(matches)?;
    cli.into_config_with(rules)
}

/// First match wins, so the rules must keep their command-line order across the three
/// options; clap keeps each option's values apart, with their positions.
fn ordered_rules(matches: &ArgMatches) -> anyhow::Result<Vec<RuleSpec>> {
    let mut placed: Vec<(usize, Vec<RuleSpec>)> = Vec::new();
    for (id, effect) in [("exclude", Effect::Exclude), ("include", Effect::Include)] {
        if let (Some(values), Some(indices)) =
            (matches.get_many::<String>(id), matches.indices_of(id))
        {
            for (pattern, index) in values.zip(indices) {
                placed.push((
                    index,
                    vec![RuleSpec {
                        effect,
                        pattern: pattern.clone(),
                    }],
                ));
            }
        }
    }
    if let (Some(files), Some(indices)) = (
        matches.get_many::<PathBuf>("exclude_from"),
        matches.indices_of("exclude_from"),
    ) {
        for (file, index) in files.zip(indices) {
            placed.push((index, read_rules_file(file)?));
        }
    }
    placed.sort_by_key(|(index, _)| *index);
    Ok(placed.into_iter().flat_map(|(_, rules)| rules).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReflinkArg {
    Auto,
    Always,
    Never,
}

impl Cli {
    /// The Config of these arguments with --include/--exclude in an assumed order (all
    /// excludes, then includes); the binary uses `config_from_matches`, which keeps the order.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut rules: Vec<RuleSpec> = Vec::new();
        for pattern in &self.exclude {
            rules.push(RuleSpec {
                effect: Effect::Exclude,
                pattern: pattern.clone(),
            });
        }
        for pattern in &self.include {
            rules.push(RuleSpec {
                effect: Effect::Include,
                pattern: pattern.clone(),
            });
        }
        for file in &self.exclude_from {
            rules.extend(read_rules_file(file)?);
        }
        self.into_config_with(rules)
    }

    fn into_config_with(self, rules: Vec<RuleSpec>) -> anyhow::Result<Config> {
        if self
            .report
            .as_deref()
            .is_some_and(|r| r.as_os_str().is_empty())
        {
            bail!("--report needs a file name");
        }
        crate::filter::Filter::new(&rules).context("filter")?;
        let progress = if self.quiet || self.no_progress {
            ProgressMode::Off
        } else if self.progress {
            ProgressMode::On
        } else {
            ProgressMode::Auto
        };
        Ok(Config {
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
            policy: Policy {
                checksum: self.checksum,
                ignore_existing: self.ignore_existing,
                update: self.update,
                modify_window_ns: (self.modify_window * 1e9).round() as u64,
            },
            delete: self.delete,
            delete_excluded: self.delete_excluded,
            max_delete: self.max_delete,
            allow_empty_source: self.allow_empty_source,
            dry_run: self.dry_run,
            itemize: self.itemize || self.dry_run,
            json: self.json,
            report: self.report,
            wait: self.wait,
            fsync: self.fsync,
            verify: self.verify,
            rules,
            one_file_system: self.one_file_system,
        })
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
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().into_config().unwrap();
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
        assert_eq!(parse(&["treecopy", "-j", "3", "a", "b"]).jobs, Some(3));
        assert_eq!(parse(&["treecopy", "a", "b"]).jobs, None);
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
        let n = parse(&["treecopy", "-n", "--modify-window", "1.5", "a", "b"]);
        assert!(n.dry_run && n.itemize);
        assert_eq!(n.policy.modify_window_ns, 1_500_000_000);
        assert!(Cli::try_parse_from(["treecopy", "--max-delete", "3", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["treecopy", "--modify-window", "-1", "a", "b"]).is_err());
    }

    #[test]
    fn filter_rules_keep_their_command_line_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules");
        std::fs::write(&file, "+ keep.tmp\n*.log\n").unwrap();
        let args = [
            "treecopy".as_ref(),
            "--include".as_ref(),
            "*.grib".as_ref(),
            "--exclude-from".as_ref(),
            file.as_os_str(),
            "--exclude".as_ref(),
            "*".as_ref(),
            "a".as_ref(),
            "b".as_ref(),
        ];
        let args: Vec<&std::ffi::OsStr> = args.to_vec();
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cfg = config_from_matches(&matches).unwrap();
        let got: Vec<(Effect, &str)> = cfg
            .rules
            .iter()
            .map(|r| (r.effect, r.pattern.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Effect::Include, "*.grib"),
                (Effect::Include, "keep.tmp"),
                (Effect::Exclude, "*.log"),
                (Effect::Exclude, "*"),
            ]
        );
        let bad = Cli::command()
            .try_get_matches_from(["treecopy", "--exclude", "[x", "a", "b"])
            .unwrap();
        assert!(config_from_matches(&bad).is_err());
    }
}
