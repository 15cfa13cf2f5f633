//! Content hashes of open files, for --checksum and --verify: BLAKE3 over the BLAKE3 of each
//! 1 MiB block, read with positioned reads through a per-worker buffer. Blocks that lie in a
//! hole of a sparse file are never read: they hash as zeros, so the hash depends on the bytes
//! only, not on where a filesystem keeps holes, and a 10 TiB file of 8 blocks hashes at once.

use crate::sys;
use nix::errno::Errno;
use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;

const BUFFER: usize = 1 << 20;

thread_local! {
    static HASH_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The hash of `len` zero bytes; a whole block's is computed once.
fn zeros_hash(len: usize) -> blake3::Hash {
    static ZERO_BLOCK: OnceLock<blake3::Hash> = OnceLock::new();
    if len == BUFFER {
        *ZERO_BLOCK.get_or_init(|| blake3::hash(&vec![0u8; BUFFER]))
    } else {
        blake3::hash(&vec![0u8; len])
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Reads the block at `offset` into `buf` (up to its length); fewer bytes only at the end of
/// the file.
fn read_block(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut filled = 0;
    while filled < buf.len() {
        if crate::signal::received().is_some() {
            return Err(Errno::EINTR);
        }
        match sys::pread(fd, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn finish(mut outer: blake3::Hasher, len: u64) -> blake3::Hash {
    outer.update(&len.to_le_bytes());
    outer.finalize()
}

/// The hash of all of `fd` from offset 0 to its end, and the number of bytes it covers. Holes
/// are looked for only when the file has fewer blocks allocated than its size needs: other
/// files are read straight through, with no seek requests (which a network filesystem would
/// each answer with a round trip). The descriptor's offset may move.
pub fn hash_fd(fd: BorrowedFd<'_>) -> Result<(blake3::Hash, u64), Errno> {
    let st = sys::fstat(fd).map_err(errno)?;
    let sparse = st.size > BUFFER as u64 && st.blocks.saturating_mul(512) < st.size;
    HASH_BUFFER.with_borrow_mut(|buf| {
        if buf.len() < BUFFER {
            buf.resize(BUFFER, 0);
        }
        let mut outer = blake3::Hasher::new();
        let mut offset = 0u64;
        if sparse {
            let size = st.size;
            let mut data = sys::next_data(fd, 0, size).map_err(errno)?;
            while offset < size {
                let end = (offset + BUFFER as u64).min(size);
                let want = (end - offset) as usize;
                if data.is_none_or(|(start, _)| start >= end) {
                    outer.update(zeros_hash(want).as_bytes());
                } else {
                    let n = read_block(fd, &mut buf[..want], offset)?;
                    outer.update(blake3::hash(&buf[..n]).as_bytes());
                    if n < want {
                        // Shrunk while hashed: the end is where the reads ended.
                        offset += n as u64;
                        return Ok((finish(outer, offset), offset));
                    }
                }
                offset = end;
                if data.is_some_and(|(_, data_end)| data_end <= offset) {
                    data = sys::next_data(fd, offset, size).map_err(errno)?;
                }
            }
        }
        // Straight through; for a sparse file, whatever follows its size (it grew, or it is
        // a procfs file that reports size 0).
        loop {
            let n = read_block(fd, buf, offset)?;
            if n == 0 {
                return Ok((finish(outer, offset), offset));
            }
            outer.update(blake3::hash(&buf[..n]).as_bytes());
            offset += n as u64;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsFd;

    #[test]
    fn equal_content_equal_hash() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8]| {
            let path = dir.path().join(name);
            std::fs::File::create(&path)
                .unwrap()
                .write_all(data)
                .unwrap();
            std::fs::File::open(path).unwrap()
        };
        let big: Vec<u8> = (0..3 * BUFFER + 17).map(|i| (i % 251) as u8).collect();
        let a = write("a", &big);
        let b = write("b", &big);
        let mut changed = big.clone();
        changed[2 * BUFFER + 3] ^= 1;
        let c = write("c", &changed);
        let (ha, na) = hash_fd(a.as_fd()).unwrap();
        assert_eq!(na, big.len() as u64);
        assert_eq!(ha, hash_fd(b.as_fd()).unwrap().0);
        assert_ne!(ha, hash_fd(c.as_fd()).unwrap().0);
        // One byte fewer is another hash.
        let d = write("d", &big[..big.len() - 1]);
        assert_ne!(ha, hash_fd(d.as_fd()).unwrap().0);
    }

    /// The bytes this process's reads have returned (/proc/self/io rchar).
    fn bytes_read() -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A sparse file and a dense file of the same bytes hash alike, and a sparse file's holes
    /// are not read.
    #[test]
    fn holes_hash_as_zeros_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let len = 5 * BUFFER as u64 + 100;
        let mut sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse
            .seek(SeekFrom::Start(2 * BUFFER as u64 + 10))
            .unwrap();
        sparse.write_all(b"data in the middle").unwrap();
        sparse.set_len(len).unwrap();
        let mut dense = vec![0u8; len as usize];
        dense[2 * BUFFER + 10..2 * BUFFER + 28].copy_from_slice(b"data in the middle");
        std::fs::write(dir.path().join("dense"), &dense).unwrap();
        let open = |n: &str| std::fs::File::open(dir.path().join(n)).unwrap();
        let sparse_hash = hash_fd(open("sparse").as_fd()).unwrap();
        assert_eq!(sparse_hash, hash_fd(open("dense").as_fd()).unwrap());

        let huge = std::fs::File::create(dir.path().join("huge")).unwrap();
        huge.set_len(64 << 30).unwrap();
        let before = bytes_read();
        let (_, n) = hash_fd(open("huge").as_fd()).unwrap();
        assert_eq!(n, 64 << 30);
        // Other test threads read too, hence the margin.
        let read = bytes_read() - before;
        assert!(read < 1 << 30, "read {read} bytes of a 64 GiB hole");
    }
}
