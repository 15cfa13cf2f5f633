//! Command-line interface: flags, their documentation, and value parsers.

use std::path::PathBuf;

use clap::Parser;

use crate::fs::ReaddirPlus;
use crate::stats::Op;

#[derive(Debug, Parser)]
#[command(
    name = "latencyfs",
    version,
    about = "FUSE passthrough filesystem that behaves like an NFS mount (per-request \
             latency, concurrent server, server-side copy, bandwidth cap, fault injection)",
    long_about = "Serves BACKING_DIR at MOUNTPOINT. Every request the kernel sends is \
        carried out on BACKING_DIR at once and answered --latency-us after it arrived, like \
        an RPC to an NFS server on a LAN. Replies wait in a queue, not in a sleeping \
        thread, so any number of requests can be in flight and concurrent callers overlap \
        their round trips; the emulated latency costs almost no CPU. Must run as root \
        (mounts with allow_other,default_permissions so the kernel checks permissions \
        from the backing files' modes for every user).\n\n\
        Unmount with Ctrl-C/SIGTERM to the daemon, `fusermount3 -u MOUNTPOINT` or \
        `umount MOUNTPOINT`. SIGUSR1 prints request counters to the log.",
    after_help = "SIZES accept a plain byte count or a suffix: k/M/G (powers of 1000) or \
        KiB/MiB/GiB (powers of 1024), e.g. 100M or 64KiB."
)]
pub struct Args {
    /// Directory to serve (the "export"). Its files are read and written in place.
    pub backing_dir: PathBuf,

    /// Existing empty directory to mount on.
    pub mountpoint: PathBuf,

    /// Time from a request's arrival to its answer, in microseconds: one LAN round
    /// trip. 0 measures the FUSE layer alone.
    #[arg(long, value_name = "US", default_value_t = 500)]
    pub latency_us: u64,

    /// Session threads reading requests from /dev/fuse and doing their backing syscalls.
    /// They never wait for the latency, so this does not limit the requests in flight
    /// (the kernel may have any number waiting for their replies, and up to 64
    /// background ones such as readahead); more threads only help when backing syscalls
    /// are slow, and cost CPU on a small machine.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: u32,

    /// Cap the data rate of each open file, in bytes per second, like one TCP stream:
    /// reads and writes on the same open file queue behind each other for the "wire".
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_size)]
    pub stream_bandwidth: Option<u64>,

    /// Refuse server-side copy (copy_file_range): like NFSv3 or a pre-4.2 server. The
    /// kernel then copies through READ/WRITE requests itself.
    #[arg(long)]
    pub no_copy_file_range: bool,

    /// Fail writes with EIO once an open file has received this many bytes (counted
    /// per open file handle; the write that crosses the limit is cut short).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub fail_eio_after: Option<u64>,

    /// Fail writes with ENOSPC once an open file has received this many bytes (counted
    /// per open file handle; the write that crosses the limit is cut short).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub fail_enospc_after: Option<u64>,

    /// Fail the --fail-ops operations on matching paths with --fail-errno. A pattern
    /// with * ? or [ is a glob: without '/' it is matched against the file name, with '/'
    /// against the whole path below the mount root (* and ? do not cross '/', ** does).
    /// Otherwise it is a substring of the path written as "/dir/file". Repeatable.
    #[arg(long, value_name = "GLOB_OR_SUBSTRING")]
    pub fail_path: Vec<String>,

    /// Error returned for --fail-path matches: EIO, ENOSPC, EACCES, EPERM, EROFS,
    /// EDQUOT, ENOENT, EFBIG, ESTALE, or a number.
    #[arg(long, value_name = "ERRNO", default_value = "EIO", value_parser = parse_errno)]
    pub fail_errno: i32,

    /// Comma-separated operations --fail-path applies to (FUSE request names, e.g.
    /// lookup,getattr,open,create,read,write,mkdir,rename,unlink,setattr,setxattr,
    /// copy_file_range).
    #[arg(long, value_name = "OPS", value_delimiter = ',', default_value = "open,create,write,copy_file_range", value_parser = parse_op)]
    pub fail_ops: Vec<Op>,

    /// Answer ESTALE, as an NFS server does for a file handle, when a request names a file
    /// or directory (or the directory of a lookup) that was deleted from the backing store
    /// since the kernel learned of it; without it a passthrough answers ENOENT, as a local
    /// filesystem does.
    #[arg(long)]
    pub stale_handles: bool,

    /// Seconds the kernel may cache attributes and names before asking again
    /// (like NFS acregmin; fractional values allowed; 0 disables caching).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub attr_timeout: f64,

    /// Whether directory listings return attributes too (the Linux NFS client adapts,
    /// which is "auto").
    #[arg(long, value_enum, default_value_t = ReaddirPlus::Auto)]
    pub readdirplus: ReaddirPlus,

    /// Report this st_blksize instead of the backing file's (NFS reports its wsize,
    /// e.g. 1048576), which changes the buffer size many tools pick.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub blksize: Option<u64>,

    /// Set the kernel readahead window for this mount, in KiB (the kernel default is
    /// 128, which is also the Linux NFS client's default since 5.4). Larger values keep
    /// more 1 MiB READs in flight for sequential readers.
    #[arg(long, value_name = "KIB")]
    pub read_ahead_kb: Option<u64>,

    /// Stay in the foreground (default: detach once the mount is ready).
    #[arg(short, long)]
    pub foreground: bool,

    /// Print request counters to stderr (or the --log-file) when unmounted.
    #[arg(long)]
    pub stats: bool,

    /// Write request counters (name=value lines) to this file when unmounted and on
    /// SIGUSR1.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    /// Where a detached daemon writes its messages (default: discarded).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Print the negotiated FUSE capabilities at mount time.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Parses "4096", "100M" (10^6), "64KiB" (2^10), ...
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "kB" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KiB" | "Ki" => 1024.0,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "Ti" => 1024.0f64.powi(4),
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((value * mult).round() as u64)
}

pub fn parse_errno(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if n > 0 {
            Ok(n)
        } else {
            Err("errno must be positive".into())
        };
    }
    Ok(match s.to_ascii_uppercase().as_str() {
        "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EACCES" => libc::EACCES,
        "EPERM" => libc::EPERM,
        "EROFS" => libc::EROFS,
        "EDQUOT" => libc::EDQUOT,
        "ENOENT" => libc::ENOENT,
        "EFBIG" => libc::EFBIG,
        "ESTALE" => libc::ESTALE,
        "EEXIST" => libc::EEXIST,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        other => return Err(format!("unknown errno name {other:?}")),
    })
}

fn parse_op(s: &str) -> Result<Op, String> {
    Op::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
        format!("unknown operation {s:?}; known: {}", names.join(","))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100M"), Ok(100_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1.5GiB"), Ok(1610612736));
        assert!(parse_size("12X").is_err());
    }

    #[test]
    fn errnos() {
        assert_eq!(parse_errno("enospc"), Ok(libc::ENOSPC));
        assert_eq!(parse_errno("13"), Ok(13));
        assert!(parse_errno("EWHAT").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "latencyfs",
            "/b",
            "/m",
            "--fail-path",
            "*.iso",
            "--fail-ops",
            "open,read",
        ])
        .unwrap();
        assert_eq!(a.fail_ops, vec![Op::Open, Op::Read]);
        assert_eq!(a.latency_us, 500);
        assert_eq!(a.threads, 2);
    }
}
