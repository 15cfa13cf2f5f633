//! Per-operation request counters, so a benchmark can report how many "RPCs" a tool made.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every FUSE operation latencyfs answers. The names double as the `--fail-ops` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    pub const ALL: [Op; 32] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }

    pub fn from_name(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == s)
    }

    fn index(self) -> usize {
        Op::ALL
            .iter()
            .position(|&o| o == self)
            .expect("every op is in ALL")
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    counts: [AtomicU64; Op::ALL.len()],
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub faults_injected: AtomicU64,
    /// Gauge: inode table size after the latest change.
    pub nodes_tracked: AtomicU64,
    /// READ and WRITE requests in flight right now (from arrival until their deferred reply
    /// is sent), and the most there ever were at once: a single stream shows 1, a client
    /// reading or writing in parallel more.
    pub reads_in_flight: AtomicU64,
    pub max_reads_in_flight: AtomicU64,
    pub writes_in_flight: AtomicU64,
    pub max_writes_in_flight: AtomicU64,
}

impl Stats {
    pub fn count(&self, op: Op) {
        self.counts[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a READ (or, with `write`, a WRITE) as started; the guard marks it done. It
    /// owns a reference so it can travel with the deferred reply to the timer thread.
    pub fn io_started(self: &Arc<Self>, write: bool) -> InFlight {
        let current = self.in_flight(write).fetch_add(1, Ordering::SeqCst) + 1;
        let max = if write {
            &self.max_writes_in_flight
        } else {
            &self.max_reads_in_flight
        };
        max.fetch_max(current, Ordering::SeqCst);
        InFlight {
            stats: self.clone(),
            write,
        }
    }

    fn in_flight(&self, write: bool) -> &AtomicU64 {
        if write {
            &self.writes_in_flight
        } else {
            &self.reads_in_flight
        }
    }

    /// `name=value` lines: ops that were seen, then byte totals. Easy to grep or parse.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for op in Op::ALL {
            let n = self.counts[op.index()].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "{}={n}", op.name());
            }
        }
        for (name, v) in [
            ("bytes_read", &self.bytes_read),
            ("bytes_written", &self.bytes_written),
            ("bytes_copied", &self.bytes_copied),
            ("faults_injected", &self.faults_injected),
            ("nodes_tracked", &self.nodes_tracked),
            ("max_reads_in_flight", &self.max_reads_in_flight),
            ("max_writes_in_flight", &self.max_writes_in_flight),
        ] {
            let _ = writeln!(out, "{name}={}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// A READ or WRITE in progress; dropping it (after its reply was sent) ends it.
pub struct InFlight {
    stats: Arc<Stats>,
    write: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats
            .in_flight(self.write)
            .fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        let s = Arc::new(Stats::default());
        s.count(Op::CopyFileRange);
        assert!(s.render().contains("copy_file_range=1\n"));
        let (a, b) = (s.io_started(false), s.io_started(false));
        drop((a, b));
        let _c = s.io_started(true);
        let text = s.render();
        assert!(text.contains("max_reads_in_flight=2\n"), "{text}");
        assert!(text.contains("max_writes_in_flight=1\n"), "{text}");
    }
}
