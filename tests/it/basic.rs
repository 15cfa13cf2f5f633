//! Copy semantics on one filesystem: whole trees (serial and parallel), metadata preservation,
//! single-file sources, merging into an existing directory, and unusual names.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use crate::util::{
    Ts, assert_atimes, assert_no_temp_files, compare_trees, gen_tree, set_mode, set_times, tempdir,
    treecopy, write_random_file,
};
use crate::{args, require_root};

/// Copies the seeded tree with the given job count and checks the result against the source.
fn copy_seeded_tree(jobs: &str, seed: u64) {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, seed);
    let run = treecopy(args!["-j", jobs, &src, &dst]);
    run.assert_code(0);
    run.assert_stderr_prefixed();
    assert_no_temp_files(&dst);
    compare_trees(&src, &dst);
}

#[test]
fn seeded_tree_copies_exactly_with_one_job() {
    require_root!();
    copy_seeded_tree("1", 0x5EED_0001);
}

#[test]
fn seeded_tree_copies_exactly_with_eight_jobs() {
    require_root!();
    copy_seeded_tree("8", 0x5EED_0001);
}

/// A second seed, so the parallel path sees a differently shaped tree too.
#[test]
fn another_seeded_tree_copies_exactly_with_eight_jobs() {
    require_root!();
    copy_seeded_tree("8", 0xC0FF_EE42);
}

/// atimes are checked on their own: the copier's reading bumps the source's atimes (relatime,
/// timestamps older than a day), so the copy must carry the values it saw before reading.
#[test]
fn atimes_preserved_on_files_dirs_and_symlinks() {
    require_root!();
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let manifest = gen_tree(&src, 0xA7_1111);
    let run = treecopy(args!["-j4", &src, &dst]);
    run.assert_code(0);
    // Before anything reads DST (readdir and reads would bump DST's atimes).
    assert_atimes(&dst, &manifest);
}

#[test]
fn summary_line_counts_the_tree() {
    require_root!();
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let m = gen_tree(&src, 0x5_0111);
    let run = treecopy(args!["-j2", &src, &dst]);
    run.assert_code(0);
    let summary: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: summary "))
        .collect();
    assert_eq!(summary.len(), 1, "want one summary line:\n{}", run.stderr);
    let s = summary[0];
    for want in [
        format!(" files={} ", m.files),
        format!(" symlinks={} ", m.symlinks),
        format!(" bytes={} ", m.bytes),
        " failed=0 ".to_string(),
    ] {
        assert!(s.contains(&want), "summary lacks `{want}`: {s}");
    }
    // Whether the root directory counts is not pinned down by the contract: accept both.
    let d = (m.dirs, m.dirs + 1);
    assert!(
        s.contains(&format!(" dirs={} ", d.0)) || s.contains(&format!(" dirs={} ", d.1)),
        "summary dirs= is neither {} nor {}: {s}",
        d.0,
        d.1
    );
    assert!(
        s.contains(" elapsed=") && s.contains(" rate="),
        "summary lacks elapsed/rate: {s}"
    );
}

#[test]
fn quiet_prints_nothing_on_success() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"hello").unwrap();
    let run = treecopy(args!["-q", &src, &dst]);
    run.assert_code(0);
    assert_eq!(run.stderr, "", "-q must print nothing on success");
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"hello");
}

#[test]
fn empty_source_dir_gives_empty_destination() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    assert!(dst.is_dir(), "DST not created as a directory");
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
}

/// Makes a single source file with distinctive metadata.
fn single_source(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("payload.bin");
    write_random_file(&f, 100_000, 7);
    set_mode(&f, 0o640);
    set_times(&f, Ts(1_111_111_111, 111), Ts(1_222_222_222, 987_654_321));
    f
}

#[track_caller]
fn assert_same_file(src: &Path, dst: &Path) {
    assert_eq!(
        fs::read(src).unwrap(),
        fs::read(dst).unwrap(),
        "content of {}",
        dst.display()
    );
    let (s, d) = (fs::metadata(src).unwrap(), fs::metadata(dst).unwrap());
    assert_eq!(
        d.mode() & 0o7777,
        s.mode() & 0o7777,
        "mode of {}",
        dst.display()
    );
    assert_eq!(
        (d.mtime(), d.mtime_nsec()),
        (s.mtime(), s.mtime_nsec()),
        "mtime of {}",
        dst.display()
    );
}

#[test]
fn single_file_to_new_path() {
    let tmp = tempdir();
    let src = single_source(tmp.path());
    let dst = tmp.path().join("copy.bin");
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    assert_same_file(&src, &dst);
    assert_no_temp_files(tmp.path());
}

#[test]
fn single_file_into_existing_directory_uses_basename() {
    let tmp = tempdir();
    let src = single_source(tmp.path());
    let dst = tmp.path().join("into");
    fs::create_dir(&dst).unwrap();
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    assert_same_file(&src, &dst.join("payload.bin"));
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 1);
}

/// DST an existing file: it is the target and gets replaced by a rename, so a hard link to the
/// old file keeps the old bytes (an in-place rewrite would change them).
#[test]
fn single_file_replaces_existing_file_atomically() {
    let tmp = tempdir();
    let src = single_source(tmp.path());
    let dst = tmp.path().join("old.bin");
    fs::write(&dst, b"old content").unwrap();
    let witness = tmp.path().join("witness");
    fs::hard_link(&dst, &witness).unwrap();
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    assert_same_file(&src, &dst);
    assert_eq!(
        fs::read(&witness).unwrap(),
        b"old content",
        "old file was rewritten in place instead of replaced by rename"
    );
}

/// DST an existing directory: SRC's entries are merged in, same-named files replaced (by
/// rename: hard links to the old ones keep old bytes), unrelated files kept.
#[test]
fn existing_destination_dir_is_merged_into() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("same.txt"), b"from src").unwrap();
    fs::write(src.join("sub/new.txt"), b"new in sub").unwrap();
    fs::write(src.join("only_src.txt"), b"only src").unwrap();

    fs::create_dir_all(dst.join("sub")).unwrap();
    fs::write(dst.join("same.txt"), b"old dst version").unwrap();
    fs::write(dst.join("keep.txt"), b"unrelated").unwrap();
    fs::write(dst.join("sub/old.txt"), b"old in sub").unwrap();
    let witness = tmp.path().join("witness");
    fs::hard_link(dst.join("same.txt"), &witness).unwrap();

    let run = treecopy(args!["-j4", &src, &dst]);
    run.assert_code(0);
    assert_eq!(fs::read(dst.join("same.txt")).unwrap(), b"from src");
    assert_eq!(fs::read(dst.join("only_src.txt")).unwrap(), b"only src");
    assert_eq!(fs::read(dst.join("sub/new.txt")).unwrap(), b"new in sub");
    assert_eq!(fs::read(dst.join("keep.txt")).unwrap(), b"unrelated");
    assert_eq!(fs::read(dst.join("sub/old.txt")).unwrap(), b"old in sub");
    assert_eq!(
        fs::read(&witness).unwrap(),
        b"old dst version",
        "same-named file was rewritten in place instead of replaced by rename"
    );
    assert_no_temp_files(&dst);
}

/// Names are bytes on Linux: spaces, newlines, leading dashes, non-UTF-8 and 255-byte names.
#[test]
fn unusual_names_are_copied() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let long = "n".repeat(255);
    let names: Vec<&[u8]> = vec![
        b"with space",
        b"new\nline",
        b"-leading-dash",
        b"caf\xe9 latin1",
        "\u{65e5}\u{672c}\u{8a9e}".as_bytes(),
        long.as_bytes(),
        b".hidden",
    ];
    for (i, n) in names.iter().enumerate() {
        let name = std::ffi::OsStr::from_bytes(n);
        fs::write(src.join(name), format!("file {i}")).unwrap();
        fs::create_dir(src.join(format!("dir{i}"))).unwrap();
        fs::write(src.join(format!("dir{i}")).join(name), b"nested").unwrap();
        symlink(name, src.join(format!("link{i}"))).unwrap();
    }
    let run = treecopy(args!["-j3", &src, &dst]);
    run.assert_code(0);
    compare_trees(&src, &dst);
}

/// A deep chain of directories (deeper than any walker recursion shortcut would assume).
#[test]
fn deep_directory_chain() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let mut p = src.clone();
    for i in 0..60 {
        p.push(format!("level{i}"));
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("bottom.txt"), b"deep").unwrap();
    let run = treecopy(args!["-j2", &src, &dst]);
    run.assert_code(0);
    compare_trees(&src, &dst);
}

/// Copying again onto a complete earlier copy must work (as root) although that copy has 0500
/// and 0000 directories and read-only files, and must leave the same tree.
#[test]
fn recopy_onto_previous_copy_is_idempotent() {
    require_root!();
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, 0x1DE_4407);
    treecopy(args!["-j4", &src, &dst]).assert_code(0);
    let run = treecopy(args!["-j4", &src, &dst]);
    run.assert_code(0);
    assert_no_temp_files(&dst);
    compare_trees(&src, &dst);
}

/// Many files in one directory copied by many workers: temp names must never collide.
#[test]
fn many_files_in_one_directory_with_many_jobs() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    for i in 0..3000u64 {
        write_random_file(&src.join(format!("f{i:04}")), (i % 7 * 300) as usize, i);
    }
    let run = treecopy(args!["-j8", &src, &dst]);
    run.assert_code(0);
    assert_no_temp_files(&dst);
    compare_trees(&src, &dst);
}

/// A same-named symlink in DST is replaced, never written through: the file it points to
/// (outside DST) must stay untouched.
#[test]
fn symlink_in_destination_is_replaced_not_followed() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(src.join("a.txt"), b"new content").unwrap();
    let outside = tmp.path().join("outside.txt");
    fs::write(&outside, b"must not change").unwrap();
    symlink(&outside, dst.join("a.txt")).unwrap();
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    assert_eq!(fs::read(&outside).unwrap(), b"must not change");
    let m = fs::symlink_metadata(dst.join("a.txt")).unwrap();
    assert!(m.is_file(), "DST/a.txt is still a symlink");
    assert_eq!(fs::read(dst.join("a.txt")).unwrap(), b"new content");
}

/// Special files: reading a FIFO would block a worker forever. Whatever the copier does with
/// it (recreate it or report it), it must finish and copy the rest.
#[test]
fn fifo_in_source_does_not_hang_the_copy() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("regular.txt"), b"data").unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let mut cmd = std::process::Command::new(crate::util::bin());
    cmd.args(args!["-j2", &src, &dst]);
    let run = crate::util::run_cmd(cmd, std::time::Duration::from_secs(30));
    assert!(
        matches!(run.code(), Some(0) | Some(1)),
        "unexpected status {:?}:\n{}",
        run.status,
        run.stderr
    );
    assert_eq!(fs::read(dst.join("regular.txt")).unwrap(), b"data");
    if run.code() == Some(0) {
        let m = fs::symlink_metadata(dst.join("pipe")).expect("exit 0 but the FIFO is missing");
        assert_eq!(
            m.mode() & libc::S_IFMT,
            libc::S_IFIFO,
            "DST/pipe is not a FIFO"
        );
    }
    assert_no_temp_files(&dst);
}

/// Relative operands (resolved against the copier's cwd, set on the child only) and trailing
/// slashes name the same directories as their plain absolute spellings.
#[test]
fn relative_paths_and_trailing_slashes() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f"), b"relative").unwrap();
    for (i, (s, d)) in [("src", "dst0"), ("src/", "dst1/"), ("./src/.", "x/../dst2")]
        .iter()
        .enumerate()
    {
        fs::create_dir_all(tmp.path().join("x")).unwrap();
        let mut cmd = std::process::Command::new(crate::util::bin());
        cmd.current_dir(tmp.path()).args([s, d]);
        let run = crate::util::run_cmd(cmd, crate::util::RUN_TIMEOUT);
        run.assert_code(0);
        let dst = tmp.path().join(format!("dst{i}"));
        assert_eq!(
            fs::read(dst.join("sub/f")).ok().as_deref(),
            Some(&b"relative"[..]),
            "`treecopy {s} {d}` did not copy SRC's contents into {}",
            dst.display()
        );
        compare_trees(&src, &dst);
    }
}

/// More workers than the open-file limit can serve (-j 600 under `ulimit -n 256`) are
/// lowered, with a warning, rather than failing most files with EMFILE (1,888 of 3,000).
#[test]
fn jobs_beyond_the_open_file_limit_are_lowered() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    for d in 0..30 {
        for f in 0..100 {
            let path = src.join(format!("{d}/{f}"));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("{d}.{f}\n")).unwrap();
        }
    }
    let script = format!(
        "ulimit -n 256 && exec {} -j 600 \"$0\" \"$1\"",
        crate::util::bin()
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script]).arg(&src).arg(&dst);
    let run = crate::util::run_cmd(cmd, crate::util::RUN_TIMEOUT);
    run.assert_code(0);
    // Root may raise the limit past the shell's: then no worker needs lowering.
    if !run.stderr.contains("open-file limit") {
        eprintln!("NOTE: the open-file limit was raised past 256; nothing lowered");
    }
    assert!(
        !run.stderr.contains("Too many open files"),
        "{}",
        run.stderr
    );
    compare_trees(&src, &dst);
}
