//! Failure behaviour: fatal argument errors (exit 2), per-entry errors that leave the rest
//! copied (exit 1: permission denied as an unprivileged user, a full destination), source
//! entries deleted during the run (warnings, exit 24), and that no temp file or partial file is
//! left behind after a failure.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{
    Mount, NOBODY, RUN_TIMEOUT, RotatingTree, Run, as_nobody, assert_no_temp_files,
    assert_present_files_complete, bin, have, nobody_can_run, run_cmd, summary_fields, tempdir,
    treecopy, write_random_file,
};
use crate::{args, require_root, skip_unless};

fn small_src(root: &Path) -> std::path::PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"a").unwrap();
    fs::write(src.join("sub/b.txt"), b"b").unwrap();
    src
}

#[test]
fn missing_source_is_fatal_and_named() {
    let tmp = tempdir();
    let src = tmp.path().join("does-not-exist");
    let dst = tmp.path().join("dst");
    let run = treecopy(args![&src, &dst]);
    run.assert_code(2);
    run.assert_stderr_prefixed();
    assert!(
        run.stderr.contains(src.to_str().unwrap()),
        "stderr does not name the missing SRC:\n{}",
        run.stderr
    );
    assert!(!dst.exists(), "DST created although SRC is missing");
}

#[test]
fn destination_inside_source_is_fatal() {
    let tmp = tempdir();
    let src = small_src(tmp.path());
    let dst = src.join("sub/inner-copy");
    let run = treecopy(args![&src, &dst]);
    run.assert_code(2);
    run.assert_stderr_prefixed();
    assert!(!dst.exists(), "DST inside SRC was created");
}

/// The same check through a symlinked spelling of SRC: without resolving paths the copier would
/// recurse into its own output.
#[test]
fn destination_inside_source_via_symlink_is_fatal() {
    let tmp = tempdir();
    let src = small_src(tmp.path());
    let alias = tmp.path().join("alias");
    symlink(&src, &alias).unwrap();
    let dst = alias.join("sub/inner-copy");
    let run = treecopy(args![&src, &dst]);
    run.assert_code(2);
    assert!(
        !src.join("sub/inner-copy").exists(),
        "DST inside SRC was created"
    );
}

#[test]
fn destination_equal_to_source_is_fatal() {
    let tmp = tempdir();
    let src = small_src(tmp.path());
    let run = treecopy(args![&src, &src]);
    run.assert_code(2);
    run.assert_stderr_prefixed();
    // Same directory, spelled differently.
    fs::create_dir(tmp.path().join("x")).unwrap();
    let other_spelling = tmp.path().join("x/../src/.");
    let run = treecopy(args![&src, &other_spelling]);
    run.assert_code(2);
    assert_eq!(
        fs::read(src.join("a.txt")).unwrap(),
        b"a",
        "SRC was modified"
    );
}

#[test]
fn directory_source_onto_existing_file_is_fatal() {
    let tmp = tempdir();
    let src = small_src(tmp.path());
    let dst = tmp.path().join("plain-file");
    fs::write(&dst, b"untouched").unwrap();
    let run = treecopy(args![&src, &dst]);
    run.assert_code(2);
    run.assert_stderr_prefixed();
    assert_eq!(
        fs::read(&dst).unwrap(),
        b"untouched",
        "DST file was modified"
    );
}

/// The summary's `failed=N` agrees with the number of reported errors.
#[track_caller]
fn assert_summary_failed(run: &Run, n: usize) {
    let summary = run
        .stderr
        .lines()
        .find(|l| l.starts_with("treecopy: summary "))
        .unwrap_or_else(|| panic!("no summary line:\n{}", run.stderr));
    assert!(
        summary.contains(&format!(" failed={n} ")),
        "summary should say failed={n}: {summary}"
    );
}

/// Runs as nobody: an unreadable file and an unreadable directory are reported (path and
/// `Permission denied`), exit 1, and everything else is still copied.
#[test]
fn unreadable_entries_reported_and_rest_copied() {
    require_root!();
    let tmp = tempdir();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    for d in ["sub", "locked", "later"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("ok1.txt"), b"one").unwrap();
    fs::write(src.join("sub/ok2.txt"), b"two").unwrap();
    fs::write(src.join("later/ok3.txt"), b"three").unwrap();
    fs::write(src.join("secret.txt"), b"secret").unwrap();
    fs::write(src.join("locked/inner.txt"), b"inner").unwrap();
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    chown(&out, Some(NOBODY), Some(NOBODY)).unwrap();
    let dst = out.join("dst");

    // Capability check: setpriv exists, and nobody can run the binary and read the tree.
    skip_unless!(nobody_can_run(&src.join("sub/ok2.txt")));

    let mut cmd = as_nobody();
    cmd.arg(bin()).args(["-j2"]).arg(&src).arg(&dst);
    let run = run_cmd(cmd, RUN_TIMEOUT);
    run.assert_code(1);
    run.assert_stderr_prefixed();
    // Exactly the two unreadable entries fail; e.g. not being allowed to chown as nobody is no
    // error (ownership is only preserved as root).
    assert_eq!(
        run.error_lines().len(),
        2,
        "want exactly two error lines:\n{}",
        run.stderr
    );
    assert_summary_failed(&run, 2);
    for name in ["secret.txt", "locked"] {
        let p = src.join(name);
        assert!(
            run.error_lines()
                .iter()
                .any(|l| l.contains(p.to_str().unwrap()) && l.contains("Permission denied")),
            "no `Permission denied` error naming {}:\n{}",
            p.display(),
            run.stderr
        );
    }
    for (rel, want) in [
        ("ok1.txt", &b"one"[..]),
        ("sub/ok2.txt", b"two"),
        ("later/ok3.txt", b"three"),
    ] {
        assert_eq!(
            fs::read(dst.join(rel)).ok().as_deref(),
            Some(want),
            "{rel} not copied:\n{}",
            run.stderr
        );
    }
    assert!(
        !dst.join("secret.txt").exists(),
        "an unreadable file appeared in DST"
    );
    assert!(
        !dst.join("locked/inner.txt").exists(),
        "a file from an unreadable dir appeared in DST"
    );
    assert_no_temp_files(&dst);
}

/// A 2 MiB tmpfs as destination and a tree of ~5 MiB: some files fail with ENOSPC (exit 1,
/// reported with path), every file under its final name is complete, no temp file remains.
#[test]
fn full_destination_reports_enospc_and_leaves_no_partial_files() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    for d in ["a", "b"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for i in 0..20 {
        write_random_file(
            &src.join(["a", "b"][i % 2]).join(format!("small{i}")),
            20_000,
            i as u64,
        );
    }
    write_random_file(&src.join("a/medium1"), 700_000, 100);
    write_random_file(&src.join("b/medium2"), 700_000, 101);
    write_random_file(&src.join("huge.bin"), 3 << 20, 102);

    let mnt = tmp.path().join("small");
    let guard = skip_unless!(Mount::tmpfs(&mnt, "2m"));
    let dst = guard.dir.join("dst");
    let run = treecopy(args!["-j2", &src, &dst]);
    run.assert_code(1);
    run.assert_stderr_prefixed();
    let enospc: Vec<&str> = run
        .error_lines()
        .into_iter()
        .filter(|l| l.contains("No space left on device"))
        .collect();
    assert!(
        !enospc.is_empty(),
        "no `No space left on device` error:\n{}",
        run.stderr
    );
    let root = tmp.path().to_str().unwrap();
    for l in &enospc {
        assert!(l.contains(root), "ENOSPC error does not name a path: {l}");
    }
    // 3 MiB can never fit in 2 MiB, so huge.bin must be among the reported failures.
    assert!(
        run.error_lines().iter().any(|l| l.contains("huge.bin")),
        "failure of huge.bin not reported:\n{}",
        run.stderr
    );
    assert_summary_failed(&run, run.error_lines().len());
    assert!(
        !dst.join("huge.bin").exists(),
        "huge.bin present although it cannot fit"
    );
    assert_present_files_complete(&src, &dst);
    assert_no_temp_files(&dst);
}

/// `treecopy . sub/copy` run inside SRC: the containment check must resolve relative operands.
#[test]
fn relative_destination_inside_relative_source_is_fatal() {
    let tmp = tempdir();
    let src = small_src(tmp.path());
    let mut cmd = Command::new(bin());
    cmd.current_dir(&src).args([".", "sub/copy"]);
    let run = run_cmd(cmd, RUN_TIMEOUT);
    run.assert_code(2);
    assert!(!src.join("sub/copy").exists(), "DST inside SRC was created");
}

/// Contract: nothing in DST is deleted. A non-empty directory in DST where SRC has a file cannot
/// be replaced, so that entry fails (exit 1) and the directory survives; with -q the only output
/// is the error itself.
#[test]
fn file_onto_nonempty_directory_in_destination_fails_and_keeps_it() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("clash"), b"a file in SRC").unwrap();
    fs::write(src.join("fine.txt"), b"fine").unwrap();
    fs::create_dir_all(dst.join("clash")).unwrap();
    fs::write(dst.join("clash/precious"), b"keep me").unwrap();
    let run = treecopy(args!["-q", &src, &dst]);
    run.assert_code(1);
    run.assert_stderr_prefixed();
    let errors = run.error_lines();
    assert!(
        errors.len() == 1 && errors[0].contains("clash"),
        "want one error naming `clash`:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "-q must print only errors:\n{}",
        run.stderr
    );
    assert_eq!(fs::read(dst.join("clash/precious")).unwrap(), b"keep me");
    assert_eq!(fs::read(dst.join("fine.txt")).unwrap(), b"fine");
    assert_no_temp_files(&dst);
}

/// A producer deleting directories of the source while treecopy copies it: whatever the
/// timing, nothing is an error, the exit status is 0 (the deletions came too late or too early
/// to be seen) or 24, every warning is a counted vanished entry, and every file that was
/// copied holds its own content; the directories nobody touched are copied whole.
#[test]
fn directories_deleted_during_the_copy_are_vanished_not_failed() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    let tree = RotatingTree {
        dirs: 20,
        per_dir: 300,
    };
    tree.create(&src);
    let dst = tmp.path().join("dst");
    let deleter = tree.rotate(&src, Duration::ZERO, Duration::from_millis(5));
    let run = treecopy(args!["-j2", &src, &dst]);
    deleter.join().unwrap();
    tree.check_copy(&run, &dst);
}

/// The calls that move a file's data, and those that rename: where `run_held` holds a run.
const DATA_COPY: &str = "copy_file_range,sendfile";
const RENAME: &str = "renameat2,rename,renameat";

/// Runs `treecopy -j1 SRC DST` under strace, which holds it for `hold` after its first call
/// of one of `syscalls` returns (or, `Before`, when it is made), while `meanwhile` runs
/// halfway into that pause. None (the test skips) without strace.
fn run_held(
    syscalls: &str,
    hold: Held,
    src: &Path,
    dst: &Path,
    meanwhile: impl FnOnce() + Send + 'static,
) -> Option<Run> {
    if !have("strace") {
        eprintln!("SKIPPED: no strace to hold the run");
        return None;
    }
    let mut cmd = Command::new("strace");
    cmd.args(["-o", "/dev/null", "-f", "-e"])
        .arg(format!(
            "inject={syscalls}:{}={}:when=1",
            match hold {
                Held::After(_) => "delay_exit",
                Held::Before(_) => "delay_enter",
            },
            hold.time().as_micros()
        ))
        .args([bin(), "-j1"])
        .arg(src)
        .arg(dst);
    let after = hold.time() / 2;
    let other = std::thread::spawn(move || {
        std::thread::sleep(after);
        meanwhile();
    });
    let run = run_cmd(cmd, RUN_TIMEOUT);
    other.join().unwrap();
    Some(run)
}

/// Where strace holds a run: after the call returns, or before it is carried out.
enum Held {
    After(Duration),
    Before(Duration),
}

impl Held {
    fn time(&self) -> Duration {
        match *self {
            Held::After(t) | Held::Before(t) => t,
        }
    }
}

/// Appends `tail` to the file at `path`, as a producer still writing it.
fn append(path: &Path, tail: &'static [u8]) -> impl FnOnce() + Send + 'static {
    let path = path.to_path_buf();
    move || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(tail).unwrap();
    }
}

/// A FIFO replaced by a hard link to a regular file between the listing and its copy (strace
/// holds treecopy for 3 s after its first directory listing): the entry fails as changed type,
/// and is not recreated by mknod as an empty file, which as the first name of the hard-link
/// group would have emptied the two names of the file that never changed.
#[test]
fn a_special_file_replaced_after_the_listing_fails_and_empties_nothing() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let made = Command::new("mkfifo").arg(src.join("p1")).status().unwrap();
    assert!(made.success());
    let content = b"IMPORTANT CONTENT\n";
    fs::write(src.join("anchor"), content).unwrap();
    fs::hard_link(src.join("anchor"), src.join("zz_other")).unwrap();
    let dst = tmp.path().join("dst");
    let swap = {
        let src = src.clone();
        move || {
            fs::remove_file(src.join("p1")).unwrap();
            fs::hard_link(src.join("anchor"), src.join("p1")).unwrap();
        }
    };
    let Some(run) = run_held(
        "getdents64",
        Held::After(Duration::from_secs(3)),
        &src,
        &dst,
        swap,
    ) else {
        return;
    };
    run.assert_code(1);
    let errors = run.error_lines();
    let want = format!(
        "stat {}: changed type during the copy",
        src.join("p1").display()
    );
    assert!(
        errors.len() == 1 && errors[0].contains(&want),
        "want {want:?}: {}",
        run.stderr
    );
    assert!(!dst.join("p1").exists());
    for name in ["anchor", "zz_other"] {
        assert_eq!(fs::read(dst.join(name)).unwrap(), content, "{name}");
    }
    let ino = |n: &str| fs::metadata(dst.join(n)).unwrap().ino();
    assert_eq!(ino("anchor"), ino("zz_other"), "still one file");
    assert_eq!(
        fs::read(src.join("anchor")).unwrap(),
        content,
        "source untouched"
    );
}

/// A failing entry whose name holds a newline, a backslash and a byte that is not UTF-8 is
/// one error line, its name escaped as --itemize writes it: a name cannot forge a line of
/// its own in a cron log.
#[test]
fn an_error_about_a_hostile_name_is_one_escaped_line() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let name = OsStr::from_bytes(b"evil\ntreecopy: error: forged\\\xff");
    fs::create_dir(&src).unwrap();
    fs::write(src.join(name), b"a file in SRC").unwrap();
    fs::create_dir_all(dst.join(name)).unwrap();
    fs::write(dst.join(name).join("precious"), b"keep me").unwrap();
    let run = treecopy(args!["-q", &src, &dst]);
    run.assert_code(1);
    run.assert_stderr_prefixed();
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("evil\\#012treecopy: error: forged\\#134\\#377"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read(dst.join(name).join("precious")).unwrap(),
        b"keep me"
    );
}

/// A source file written to while it is copied (strace holds treecopy for 2 s after its first
/// data copy call while the test appends to the file): the copy mixes two versions, so it is
/// not committed; the run warns, counts it as changed, exits 24, and copies the rest. The
/// next run copies the file whole.
#[test]
fn a_file_written_to_while_it_is_copied_is_not_committed() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    write_random_file(&src.join("growing.bin"), 1 << 20, 11);
    let dst = tmp.path().join("dst");
    let writer = append(&src.join("growing.bin"), b"the producer's last words");
    let hold = Duration::from_secs(2);
    let Some(run) = run_held(DATA_COPY, Held::After(hold), &src, &dst, writer) else {
        return;
    };
    run.assert_code(24);
    let want = format!(
        "warning: changed: copy {}: the file changed while it was copied; not committed",
        src.join("growing.bin").display()
    );
    assert!(run.stderr.contains(&want), "want {want:?}: {}", run.stderr);
    let fields = summary_fields(&run).expect("a summary line");
    assert_eq!(
        (fields["changed"].as_str(), fields["failed"].as_str()),
        ("1", "0")
    );
    assert!(!dst.join("growing.bin").exists());
    assert_no_temp_files(&dst);
    treecopy(args![&src, &dst]).assert_code(0);
    assert_eq!(
        fs::read(dst.join("growing.bin")).unwrap(),
        fs::read(src.join("growing.bin")).unwrap()
    );
}

/// A hard-linked file written to while its first name is copied: every name of it is a
/// `changed` warning (they are one inode), not 'the first name was not copied' errors; exit 24.
#[test]
fn a_hard_linked_file_written_to_while_copied_is_changed_under_every_name() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    write_random_file(&src.join("a/h1"), 1 << 20, 12);
    fs::hard_link(src.join("a/h1"), src.join("b/h2")).unwrap();
    fs::hard_link(src.join("a/h1"), src.join("h3")).unwrap();
    let dst = tmp.path().join("dst");
    let writer = append(&src.join("a/h1"), b"more");
    let hold = Duration::from_secs(2);
    let Some(run) = run_held(DATA_COPY, Held::After(hold), &src, &dst, writer) else {
        return;
    };
    run.assert_code(24);
    assert!(run.error_lines().is_empty(), "{}", run.stderr);
    let fields = summary_fields(&run).expect("a summary line");
    assert_eq!(fields["changed"], "3", "{}", run.stderr);
    treecopy(args![&src, &dst]).assert_code(0);
    assert_eq!(
        fs::read(dst.join("h3")).unwrap(),
        fs::read(src.join("h3")).unwrap()
    );
}

/// A run killed just before it publishes a staged directory (strace holds its first rename
/// for 3 s, and the test kills it then) leaves that directory in the staged mode,
/// 0700, by which the next run knows it for a killed run's: that run completes the copy and
/// leaves nothing behind. (The directory used to get its source's mode before the rename, so a
/// kill in between left a temp directory no run removed.)
#[test]
fn a_run_killed_before_publishing_a_directory_leaves_it_for_the_next_run() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..3 {
        fs::write(src.join(format!("sub/{i}")), format!("{i}\n")).unwrap();
    }
    let dst = tmp.path().join("dst");
    let kill = signal_treecopy_into(&dst, libc::SIGKILL);
    let Some(_) = run_held(
        RENAME,
        Held::Before(Duration::from_secs(3)),
        &src,
        &dst,
        kill,
    ) else {
        return;
    };
    let staged: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(b".treecopy-tmp.")
        })
        .collect();
    assert_eq!(staged.len(), 1, "the killed run left no staged directory");
    let mode = staged[0].metadata().unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the staged directory lost its staged mode");
    let rerun = treecopy(args![&src, &dst]);
    rerun.assert_code(0);
    assert_no_temp_files(&dst);
    crate::util::compare_trees(&src, &dst);
}

/// Sends `sig` to the treecopy (run under strace) whose command line names `dst`.
fn signal_treecopy_into(dst: &Path, sig: libc::c_int) -> impl FnOnce() + Send + 'static {
    let dst = dst.to_path_buf();
    move || {
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"treecopy"))
                && args
                    .iter()
                    .any(|a| *a == dst.as_os_str().as_encoded_bytes())
            {
                let pid: i32 = entry.file_name().to_string_lossy().parse().unwrap();
                // SAFETY: kill(2) takes plain integers and touches no memory of ours.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
}

/// A run that resumes a killed run's staged directory and is itself interrupted (SIGTERM,
/// while strace holds its first copy) leaves the directory staged: published, the killed
/// run's cut-off file in it would have been taken as complete by `-u` (its mtime is newer)
/// and by --ignore-existing. The next `-u` run resumes it and completes the copy.
#[test]
fn an_interrupted_run_does_not_publish_a_resumed_directory() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    write_random_file(&src.join("sub/big"), 4 << 20, 0x5EB);
    fs::write(src.join("sub/small"), b"small\n").unwrap();
    crate::util::set_times(
        &src.join("sub/big"),
        crate::util::Ts(1_500_000_000, 0),
        crate::util::Ts(1_500_000_000, 0),
    );
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    // What a run killed in the middle of `big` leaves: its staged directory (mode 0700, a
    // dead pid in its name) holding `big` cut off, newer than the source.
    let staged = dst.join(".treecopy-tmp.4194303.1.sub");
    fs::create_dir(&staged).unwrap();
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o700)).unwrap();
    let full = fs::read(src.join("sub/big")).unwrap();
    fs::write(staged.join("big"), &full[..1 << 20]).unwrap();
    let Some(run) = run_held(
        DATA_COPY,
        Held::Before(Duration::from_secs(3)),
        &src,
        &dst,
        signal_treecopy_into(&dst, libc::SIGTERM),
    ) else {
        return;
    };
    run.assert_code(143);
    assert!(
        !dst.join("sub").exists(),
        "the interrupted run published the resumed directory:\n{}",
        run.stderr
    );
    let rerun = treecopy(args!["-u", &src, &dst]);
    rerun.assert_code(0);
    assert_eq!(fs::read(dst.join("sub/big")).unwrap(), full);
    assert_eq!(
        fs::metadata(dst.join("sub/big")).unwrap().mtime(),
        1_500_000_000
    );
    assert_no_temp_files(&dst);
    crate::util::compare_trees(&src, &dst);
}

/// Another process makes a staged directory's final name meanwhile (strace holds the
/// publishing rename for 3 s), with a directory where the source has a file: that name alone
/// fails (theirs is kept, with what it holds), their other entries are merged in, and the
/// rest of the directory is published.
#[test]
fn a_directory_against_a_file_inside_a_merged_directory_fails_that_name_alone() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a"), b"ours\n").unwrap();
    fs::write(src.join("sub/b"), b"b\n").unwrap();
    let dst = tmp.path().join("dst");
    let theirs = {
        let sub = dst.join("sub");
        move || {
            fs::create_dir_all(sub.join("a")).unwrap();
            fs::write(sub.join("a/inner"), b"theirs\n").unwrap();
            fs::write(sub.join("extra"), b"extra\n").unwrap();
        }
    };
    let Some(run) = run_held(
        RENAME,
        Held::Before(Duration::from_secs(3)),
        &src,
        &dst,
        theirs,
    ) else {
        return;
    };
    eprintln!("{}", run.stderr);
    run.assert_code(1);
    let errors = run.error_lines();
    assert!(
        errors.len() == 1 && errors[0].contains(&*dst.join("sub/a").to_string_lossy()),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read(dst.join("sub/a/inner")).unwrap(), b"theirs\n");
    assert_eq!(fs::read(dst.join("sub/extra")).unwrap(), b"extra\n");
    assert_eq!(fs::read(dst.join("sub/b")).unwrap(), b"b\n");
    assert_no_temp_files(&dst);
}

/// A file rewritten in place while it is copied, its mtime then put back (as `touch -r`,
/// `cp -p` or `rsync --inplace` leave it): only its ctime tells, and the copy is not
/// committed (exit 24). It used to be committed with the old data, which every later run's
/// size-and-mtime check then took for up to date.
#[test]
fn a_file_rewritten_with_its_mtime_put_back_is_changed_not_committed() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("field.grib");
    write_random_file(&f, 1 << 20, 13);
    let rewrite = {
        let f = f.clone();
        move || {
            use std::io::{Seek, SeekFrom, Write};
            let mtime = fs::metadata(&f).unwrap().modified().unwrap();
            let mut file = fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.seek(SeekFrom::Start(1000)).unwrap();
            file.write_all(b"NEW DATA").unwrap();
            file.set_modified(mtime).unwrap();
        }
    };
    let dst = tmp.path().join("dst");
    let Some(run) = run_held(
        DATA_COPY,
        Held::After(Duration::from_secs(2)),
        &src,
        &dst,
        rewrite,
    ) else {
        return;
    };
    run.assert_code(24);
    assert!(run.stderr.contains("warning: changed:"), "{}", run.stderr);
    assert!(!dst.join("field.grib").exists());
    treecopy(args![&src, &dst]).assert_code(0);
    assert_eq!(
        fs::read(dst.join("field.grib")).unwrap(),
        fs::read(&f).unwrap()
    );
}

/// A file deleted while it is copied (its link count, so its ctime, moves) is vanished, not
/// changed: exit 24, and nothing committed under its name.
#[test]
fn a_file_deleted_while_copied_is_vanished() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("gone.grib");
    write_random_file(&f, 1 << 20, 14);
    let delete = {
        let f = f.clone();
        move || fs::remove_file(&f).unwrap()
    };
    let dst = tmp.path().join("dst");
    let Some(run) = run_held(
        DATA_COPY,
        Held::After(Duration::from_secs(2)),
        &src,
        &dst,
        delete,
    ) else {
        return;
    };
    run.assert_code(24);
    let fields = summary_fields(&run).expect("a summary line");
    assert_eq!(
        (fields["vanished"].as_str(), fields["changed"].as_str()),
        ("1", "0"),
        "{}",
        run.stderr
    );
    assert!(!dst.join("gone.grib").exists());
    assert_no_temp_files(&dst);
}
