//! Content hashes of open files (BLAKE3), for --checksum and --verify: read with positioned
//! reads through a per-worker buffer, so a descriptor's offset is left alone.

use crate::sys;
use nix::errno::Errno;
use std::cell::RefCell;
use std::os::fd::BorrowedFd;

const BUFFER: usize = 1 << 20;

thread_local! {
    static HASH_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The BLAKE3 hash of all of `fd` from offset 0 to its end, and the number of bytes read.
pub fn hash_fd(fd: BorrowedFd<'_>) -> Result<(blake3::Hash, u64), Errno> {
    HASH_BUFFER.with_borrow_mut(|buf| {
        if buf.len() < BUFFER {
            buf.resize(BUFFER, 0);
        }
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        loop {
            if crate::signal::received().is_some() {
                return Err(Errno::EINTR);
            }
            match sys::pread(fd, buf, offset) {
                Ok(0) => return Ok((hasher.finalize(), offset)),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    offset += n as u64;
                }
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(e),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
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
        assert_eq!(ha, blake3::hash(&big));
    }
}
