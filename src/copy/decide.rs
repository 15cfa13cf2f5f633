//! The fallback rule for copy_file_range and sendfile as one pure function, so the whole policy
//! is a table that a unit test checks row by row (docs/design.md shows the same table).

use nix::errno::Errno;

/// What one data-copy syscall reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The call failed with this errno.
    Error(Errno),
    /// The call returned 0: end of file, or, before any byte was copied from a file that
    /// should have data, a filesystem that cannot serve this call (procfs, sysfs, some FUSE).
    Zero,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Call again (EINTR, EAGAIN).
    Retry,
    /// The copy is complete.
    Done,
    /// This syscall cannot work between these two filesystems: use the next method, and
    /// remember that for every later file on the same (source, destination) device pair.
    FallBackForPair,
    /// This file cannot use this syscall; others on the same pair may: next method, no memory.
    FallBackForFile,
    /// A real error: the file fails.
    Fail,
}

/// Decides after a data-copy call. `copied` is how many bytes of this file are already in the
/// destination. Once any byte is copied there is no falling back: another method would have
/// to start again from an offset we could not trust, so errors fail the file and a 0 return
/// is end of file. A 0 return at offset 0 falls back even when st_size is 0: procfs and sysfs
/// report sizes of 0 or 4096 whatever they hold, and only a read tells.
pub fn decide(event: Event, copied: u64) -> Decision {
    match event {
        Event::Error(Errno::EINTR | Errno::EAGAIN) => Decision::Retry,
        Event::Zero if copied > 0 => Decision::Done,
        Event::Zero => Decision::FallBackForFile,
        Event::Error(_) if copied > 0 => Decision::Fail,
        Event::Error(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS) => Decision::FallBackForPair,
        Event::Error(Errno::EINVAL | Errno::EPERM | Errno::EBADF | Errno::ETXTBSY) => {
            Decision::FallBackForFile
        }
        Event::Error(_) => Decision::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use Event::*;

    #[test]
    fn fallback_table() {
        // (event, bytes already copied, expected decision)
        let table = [
            (Error(Errno::EXDEV), 0, FallBackForPair),
            (Error(Errno::EOPNOTSUPP), 0, FallBackForPair),
            (Error(Errno::ENOSYS), 0, FallBackForPair),
            (Error(Errno::EINVAL), 0, FallBackForFile),
            (Error(Errno::EPERM), 0, FallBackForFile),
            (Error(Errno::EBADF), 0, FallBackForFile),
            (Error(Errno::ETXTBSY), 0, FallBackForFile),
            (Zero, 0, FallBackForFile),
            (Zero, 4096, Done),
            (Zero, 1, Done),
            (Error(Errno::EINTR), 0, Retry),
            (Error(Errno::EINTR), 10, Retry),
            (Error(Errno::EAGAIN), 0, Retry),
            (Error(Errno::EIO), 0, Fail),
            (Error(Errno::ENOSPC), 0, Fail),
            (Error(Errno::EDQUOT), 0, Fail),
            (Error(Errno::EFBIG), 0, Fail),
            // After bytes were copied nothing falls back: restarting would mean trusting offsets.
            (Error(Errno::EXDEV), 1, Fail),
            (Error(Errno::EINVAL), 65536, Fail),
            (Error(Errno::EOPNOTSUPP), 4096, Fail),
            (Error(Errno::ENOSPC), 4096, Fail),
        ];
        for (event, copied, want) in table {
            assert_eq!(
                decide(event, copied),
                want,
                "decide({event:?}, copied={copied})"
            );
        }
    }
}
