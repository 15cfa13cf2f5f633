//! The resolved run configuration: plain values, no knowledge of how they were parsed.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Number of concurrent copy workers.
    pub jobs: usize,
    pub verbose: bool,
    pub quiet: bool,
    pub progress: ProgressMode,
    /// Copy extended attributes and POSIX ACLs.
    pub xattrs: bool,
    /// Names sharing an inode in SRC share one in DST.
    pub hard_links: bool,
    pub reflink: Reflink,
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

/// Copying over NFS is bound by round-trip latency, not by CPU: on the latency filesystem
/// (0.5 ms per call) 16 workers copy small files 10x faster than one, and on the local disk
/// 16 do as well as 2 or 4 or better (docs/benchmarks.md).
pub const DEFAULT_JOBS: usize = 16;
