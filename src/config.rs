//! The resolved run configuration: plain values, no knowledge of how they were parsed.

use crate::delta::Policy;
use crate::filter::RuleSpec;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Number of concurrent copy workers; None: chosen by `default_jobs`.
    pub jobs: Option<usize>,
    pub verbose: bool,
    pub quiet: bool,
    pub progress: ProgressMode,
    /// Copy extended attributes and POSIX ACLs.
    pub xattrs: bool,
    /// Names sharing an inode in SRC share one in DST.
    pub hard_links: bool,
    pub reflink: Reflink,
    /// When a destination entry counts as up to date (--checksum, --update, ...).
    pub policy: Policy,
    /// Remove destination entries the source does not have.
    pub delete: bool,
    /// With `delete`, remove destination entries that the filter excludes, too.
    pub delete_excluded: bool,
    /// Refuse a run that would delete more entries than this.
    pub max_delete: Option<u64>,
    /// Let --delete empty the destination when the source directory is empty.
    pub allow_empty_source: bool,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// One line per changed entry on stdout.
    pub itemize: bool,
    /// The JSON report on stdout at the end.
    pub json: bool,
    /// The JSON report written to this file at the end.
    pub report: Option<PathBuf>,
    /// Wait for another run's lock on DST instead of exiting.
    pub wait: bool,
    /// fsync each file before its rename and each directory after its entries.
    pub fsync: bool,
    /// Read each copied file back and compare hashes before it is committed.
    pub verify: bool,
    /// Include/exclude rules in the order given.
    pub rules: Vec<RuleSpec>,
    /// Do not descend into directories on other filesystems than SRC's.
    pub one_file_system: bool,
}

/// Whether file data may be cloned (shared extents) instead of copied, as cp's --reflink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reflink {
    /// copy_file_range clones where the filesystem can (XFS, btrfs) and copies elsewhere.
    Auto,
    /// Clone or fail the file.
    Always,
    /// Never clone: copy the bytes.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, nothing otherwise.
    Auto,
    /// A bar on a terminal, periodic plain lines otherwise.
    On,
    Off,
}

/// Workers when SRC or DST is on a network or FUSE filesystem. Copying there is bound by
/// round-trip latency, not by CPU: each small file is about 16 round trips, one after the
/// other, so only many files in flight keep a server busy. On the latency filesystem (0.5 ms
/// per call, 10,000 small files) -j16 took 5.6 s, -j32 4.2 s, -j64 3.8 s and -j128 4.3 s
/// (docs/design.md). Large files do not multiply with it: their chunk streams are capped
/// (`copy::MAX_STREAMS`).
pub const REMOTE_JOBS: usize = 64;

/// Workers when both sides are local: two per CPU (at least 4). A local copy with a warm
/// source is CPU work in the kernel, and creates are serialised on a local destination
/// (`Engine::create_lock`): with one worker per CPU both often wait for the lock at once,
/// and a second per CPU keeps data, metadata and renames going meanwhile. On 2 CPUs
/// (bench/pair.sh, fresh ext4, 3 rounds): W1 -j2 2.11-2.53 s, -j4 1.76-1.87 s, -j8
/// 1.67-1.86 s; W2 -j2 1.33-1.50 s, -j4 1.41-1.43 s, -j8 1.62-1.83 s; W3 -j2 1.16 s, -j4
/// 1.23-1.28 s. Beyond two per CPU the larger files lose more than W1 gains.
pub fn local_jobs() -> usize {
    std::thread::available_parallelism().map_or(4, |n| 2 * n.get().max(2))
}

/// The worker count for a run whose sides are (or are not) remote.
pub fn default_jobs(remote: bool) -> usize {
    if remote { REMOTE_JOBS } else { local_jobs() }
}
