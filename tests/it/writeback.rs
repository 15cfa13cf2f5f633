//! Write-behind of large files on a real block-backed filesystem (an XFS loop mount): the
//! ranges handed over leave the page cache once written, and a copy that uses it is exact.

use crate::util::{
    Mount, assert_no_temp_files, compare_trees, first_difference, tempdir, treecopy,
    write_big_file, write_random_file,
};
use crate::{args, require_root, skip_unless};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::path::Path;
use treecopy::writeback::WriteBehind;

const MIB: u64 = 1 << 20;

/// Pages of the file in the page cache, and pages it has.
fn resident_pages(path: &Path) -> (usize, usize) {
    let file = File::open(path).expect("open for mincore");
    let len = file.metadata().expect("stat").len() as usize;
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = len.div_ceil(page);
    // SAFETY: a fresh shared read-only mapping of `len` bytes of an open file; it is only
    // asked about with mincore (never read) and unmapped before return.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping, as mincore wants.
    let ret = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    // SAFETY: the mapping made above, of `len` bytes.
    unsafe { libc::munmap(map, len) };
    assert_eq!(ret, 0, "mincore {}", path.display());
    (vec.iter().filter(|&&b| b & 1 == 1).count(), pages)
}

/// Writes `len` bytes of dirty pages (not yet on disk) into a new file.
fn write_dirty(path: &Path, len: u64) -> File {
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .expect("create");
    let block = vec![0x5au8; MIB as usize];
    for _ in 0..len / MIB {
        file.write_all(&block).expect("write");
    }
    file
}

#[test]
fn written_ranges_leave_the_page_cache_once_on_disk() {
    require_root!();
    let tmp = tempdir();
    let mnt = tmp.path().join("mnt");
    let disk = skip_unless!(Mount::xfs_loop(&tmp.path().join("x.img"), &mnt, "300M"));
    let len = 96 * MIB;

    // Without write-behind the file's pages stay cached (dirty, then clean): what the check
    // below tells apart.
    let kept = disk.dir.join("kept");
    drop(write_dirty(&kept, len));
    let (cached, pages) = resident_pages(&kept);
    assert!(
        cached * 10 >= pages * 9,
        "only {cached} of {pages} pages cached without write-behind: the check cannot tell"
    );

    let behind_path = disk.dir.join("behind");
    let file = write_dirty(&behind_path, len);
    let wb = WriteBehind::default();
    let mut behind = wb
        .file(file.as_fd())
        .expect("write-behind for a file on XFS");
    // In steps, as a copy reports its progress: what is less than a step waits for more.
    for end in (1..=11).map(|i| i * 8 * MIB) {
        behind.written(end);
    }
    wb.flush();
    let (cached, pages) = resident_pages(&behind_path);
    assert!(
        cached * 4 <= pages,
        "{cached} of {pages} pages still cached after write-behind"
    );
    // Handed over: 0-80 MiB, in steps of 16; the 16 MiB after that stay cached.
    assert!(
        cached * 8 >= pages,
        "{cached} of {pages} pages cached: more than what was handed over was dropped"
    );
    // The end of the copy hands over the rest.
    behind.finish(len);
    wb.flush();
    let (cached, pages) = resident_pages(&behind_path);
    assert!(
        cached * 32 <= pages,
        "{cached} of {pages} pages still cached after the rest was handed over"
    );
}

#[test]
fn a_large_file_written_behind_is_copied_exactly() {
    require_root!();
    let tmp = tempdir();
    let mnt = tmp.path().join("mnt");
    let disk = skip_unless!(Mount::xfs_loop(&tmp.path().join("x.img"), &mnt, "600M"));
    // The source on the test's own disk, the destination on XFS: sendfile between them, one
    // stream, written behind in steps.
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    write_big_file(&src.join("field.grib"), 200 * MIB + 12345, 0x3B_0001);
    write_random_file(&src.join("small"), 5000, 0x3B_0002);
    let dst = disk.dir.join("copy");
    let run = treecopy(args!["-v", &src, &dst]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("by sendfile"),
        "expected a sendfile copy:\n{}",
        run.stderr
    );
    compare_trees(&src, &dst);
    assert_eq!(
        first_difference(&src.join("field.grib"), &dst.join("field.grib")).unwrap(),
        None
    );
    assert_no_temp_files(&dst);
}
