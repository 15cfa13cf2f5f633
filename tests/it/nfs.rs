//! treecopy on NFS-like mounts: latencyfs (this workspace's FUSE passthrough that delays
//! every request like a LAN round trip) serves each side. Checks that large files move as
//! parallel chunks, that server-side copy and its refusal both give exact copies, and that
//! injected server faults are reported without leaving anything half-written.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{
    RotatingTree, assert_no_temp_files, bin, compare_trees, first_difference, gen_tree, is_root,
    set_xattr, summary_fields, tempdir, treecopy, write_random_file, xattrs,
};
use crate::{args, skip_unless};

/// latencyfs is built beside treecopy by `cargo test --workspace`.
fn latencyfs_bin() -> Result<PathBuf, String> {
    let path = Path::new(bin()).with_file_name("latencyfs");
    if !is_root() {
        return Err("mounting FUSE with allow_other needs root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built (run cargo test --workspace)",
            path.display()
        ))
    }
}

/// A latencyfs mount of `back` on `mnt`; unmounts (lazily if busy) and reaps the daemon on
/// drop, so a failing test leaves no mount behind.
struct LatencyMount {
    mnt: PathBuf,
    back: PathBuf,
    stats: PathBuf,
    unmounted: bool,
}

impl LatencyMount {
    fn start(base: &Path, name: &str, flags: &[&str]) -> Result<LatencyMount, String> {
        let exe = latencyfs_bin()?;
        let (back, mnt) = (base.join(format!("{name}-back")), base.join(name));
        let stats = base.join(format!("{name}.stats"));
        // A remount of the same name must not find its predecessor's counters (the guard waits
        // for this daemon's).
        let _ = fs::remove_file(&stats);
        fs::create_dir_all(&back).map_err(|e| e.to_string())?;
        fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        // Without --foreground latencyfs returns once the mount is usable.
        let out = Command::new(exe)
            .arg(&back)
            .arg(&mnt)
            .arg("--stats-file")
            .arg(&stats)
            .args(flags)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "latencyfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(LatencyMount {
            mnt,
            back,
            stats,
            unmounted: false,
        })
    }

    /// Unmounts and returns the daemon's request counters.
    fn finish(mut self) -> HashMap<String, u64> {
        self.unmount();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = fs::read_to_string(&self.stats)
                && !text.is_empty()
            {
                return text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect();
            }
            assert!(Instant::now() < deadline, "latencyfs wrote no stats");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn unmount(&mut self) {
        if std::mem::replace(&mut self.unmounted, true) {
            return;
        }
        let ok = Command::new("umount").arg(&self.mnt).status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // The daemon writes its counters as it exits: wait for them, so that the test's temp
        // folder is not removed while the daemon is still writing into it (which left the
        // folder behind).
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::metadata(&self.stats).map_or(true, |m| m.len() == 0) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for LatencyMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The methods named by -v's "copied ... by METHOD" lines.
fn methods(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: copied "))
        .filter_map(|l| l.rsplit_once(" by ").map(|(_, m)| m.to_string()))
        .collect()
}

/// A file large enough to be copied in chunks, between two NFS-like mounts: the source
/// server sees several READ streams at once, the copy is exact, and the data went by
/// read/write with large buffers (the kernel's cross-mount copy_file_range moves 64 KiB per
/// round trip).
#[test]
fn large_file_between_two_mounts_moves_as_parallel_chunks() {
    let tmp = tempdir();
    // The source server's OPENs and the most READs it served at once, and the most WRITEs
    // the destination server had in flight at once, for a copy with these flags. Each open
    // file at the destination is capped like one TCP stream, so that parallel writes overlap
    // long enough to be counted.
    let source_streams = |name: &str, flags: &[&str]| -> Option<(u64, u64, u64)> {
        let base = tmp.path().join(name);
        let a = LatencyMount::start(&base, "a", &["--latency-us", "200"]).ok()?;
        let capped = ["--latency-us", "200", "--stream-bandwidth", "100MiB"];
        let b = LatencyMount::start(&base, "b", &capped).ok()?;
        write_random_file(&a.back.join("field.grib"), 160 << 20, 0x5eed);
        let mut argv = args!["-v"];
        argv.extend(flags.iter().map(std::ffi::OsString::from));
        argv.extend(args![&a.mnt.join("field.grib"), &b.mnt]);
        let run = treecopy(argv);
        run.assert_code(0);
        assert_eq!(methods(&run.stderr), ["read/write"], "{}", run.stderr);
        assert_eq!(
            first_difference(&a.back.join("field.grib"), &b.back.join("field.grib")).unwrap(),
            None,
            "{flags:?}: the copy differs"
        );
        assert_no_temp_files(&b.back);
        let writes = b.finish()["max_writes_in_flight"];
        let stats = a.finish();
        Some((stats["open"], stats["max_reads_in_flight"], writes))
    };
    skip_unless!(latencyfs_bin());
    let (opens_one, peak_one, _) = source_streams("one", &["-j1"]).expect("latencyfs mounts");
    let (opens_many, peak_many, writes_many) =
        source_streams("many", &["-j8"]).expect("latencyfs mounts");
    // 160 MiB: a first chunk of 16 MiB, then 9 chunks taken by min(workers, 9) runners, each
    // reading through an open file of its own.
    assert_eq!(opens_one, 2, "-j1: the copy's open and one runner's");
    assert_eq!(opens_many, 9, "-j8: the copy's open and eight runners'");
    assert!(
        peak_many >= peak_one,
        "eight runners had at most {peak_many} READs in flight, one had {peak_one}"
    );
    // The temp file is opened for direct I/O like the runners' files: FUSE lets direct
    // writes to one file overlap only while no descriptor of it uses the page cache.
    assert!(
        writes_many >= 4,
        "eight runners had at most {writes_many} WRITEs in flight: the writes were serialized"
    );
}

/// Within one mount the server copies (NFSv4.2 COPY); with server-side copy refused the
/// data flows through the client. Both give an exact tree.
#[test]
fn tree_within_one_mount_with_and_without_server_side_copy() {
    let tmp = tempdir();
    for (name, flags) in [
        ("ssc", &["--latency-us", "100"][..]),
        (
            "nossc",
            &["--latency-us", "100", "--no-copy-file-range"][..],
        ),
    ] {
        let m = skip_unless!(LatencyMount::start(tmp.path(), name, flags));
        gen_tree(&m.back.join("src"), 0xAB);
        write_random_file(&m.back.join("src/big.bin"), 80 << 20, 7);
        let run = treecopy(args!["-v", &m.mnt.join("src"), &m.mnt.join("dst")]);
        run.assert_code(0);
        compare_trees(&m.back.join("src"), &m.back.join("dst"));
        assert_no_temp_files(&m.back.join("dst"));
        let stats = m.finish();
        let copied = stats.get("bytes_copied").copied().unwrap_or(0);
        if name == "ssc" {
            assert!(
                copied >= 80 << 20,
                "{name}: the server copied {copied} bytes: no server-side copy"
            );
        } else {
            assert_eq!(copied, 0, "{name}: the server copied despite refusing");
        }
    }
}

/// A large file within one mount: where the server copies, treecopy leaves it one server-side
/// copy; where the server refuses and the kernel copies through the client (64 KiB per round
/// trip on FUSE), treecopy notices the rate of the first chunk and moves the rest as
/// read/write chunks. Both copies are exact.
#[test]
fn large_file_within_one_mount_uses_the_server_or_read_write_chunks() {
    let tmp = tempdir();
    for (name, flags) in [
        ("ssc", &["--latency-us", "1000"][..]),
        (
            "nossc",
            &["--latency-us", "1000", "--no-copy-file-range"][..],
        ),
    ] {
        let m = skip_unless!(LatencyMount::start(tmp.path(), name, flags));
        fs::create_dir_all(m.back.join("src")).unwrap();
        write_random_file(&m.back.join("src/field.grib"), 80 << 20, 11);
        let run = treecopy(args!["-v", &m.mnt.join("src"), &m.mnt.join("dst")]);
        run.assert_code(0);
        assert_eq!(
            first_difference(
                &m.back.join("src/field.grib"),
                &m.back.join("dst/field.grib")
            )
            .unwrap(),
            None,
            "{name}: the copy differs"
        );
        assert_no_temp_files(&m.back.join("dst"));
        let switched = run.stderr.contains("read/write chunks for the rest");
        let stats = m.finish();
        if name == "ssc" {
            assert!(
                !switched,
                "{name}: left the server-side copy\n{}",
                run.stderr
            );
            assert_eq!(methods(&run.stderr), ["copy_file_range"], "{}", run.stderr);
            assert!(stats["bytes_copied"] >= 80 << 20, "{name}: {stats:?}");
        } else {
            assert!(
                switched,
                "{name}: stayed with the kernel's copy\n{}",
                run.stderr
            );
            assert_eq!(methods(&run.stderr), ["read/write"], "{}", run.stderr);
            // The first chunk through the kernel's 64 KiB pipe, the rest in 1 MiB requests.
            assert!(stats["write"] < 400, "{name}: {} WRITEs", stats["write"]);
        }
    }
}

/// A server that runs out of space for a file (ENOSPC after some bytes): the failing file
/// is reported by path with the OS error, nothing appears under its final name, no temp
/// file is left, and the rest of the tree is copied.
#[test]
fn server_faults_fail_the_file_and_leave_nothing_half_written() {
    let tmp = tempdir();
    let src_m = skip_unless!(LatencyMount::start(
        tmp.path(),
        "src",
        &["--latency-us", "50"]
    ));
    // Every open file that has received 2.5 MB fails its next write with ENOSPC, as a full
    // server would; files below that size go through.
    let flags = ["--latency-us", "50", "--fail-enospc-after", "2500000"];
    let dst_m = skip_unless!(LatencyMount::start(tmp.path(), "dst", &flags));
    let tree = src_m.back.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    write_random_file(&tree.join("sub/doomed.bin"), 3 << 20, 1);
    write_random_file(&tree.join("ok.bin"), 2 << 20, 2);
    write_random_file(&tree.join("sub/ok2.bin"), 1 << 20, 3);
    let run = treecopy(args![&src_m.mnt.join("tree"), &dst_m.mnt.join("copy")]);
    run.assert_code(1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("doomed.bin") && errors[0].contains("No space left on device"),
        "{}",
        errors[0]
    );
    let copy = dst_m.back.join("copy");
    assert!(!copy.join("sub/doomed.bin").exists());
    for rel in ["ok.bin", "sub/ok2.bin"] {
        assert_eq!(
            first_difference(&tree.join(rel), &copy.join(rel)).unwrap(),
            None,
            "{rel}"
        );
    }
    assert_no_temp_files(&copy);
}

/// From a network source, each file's xattr listing and its close are made on helper threads
/// (src/aside.rs) while the copy goes on: every xattr still arrives, and each source file is
/// listed once (not by both a helper and its worker). This checks the outcome, which copying
/// in line also meets; the hand-over itself (a listing given up, no helper started, every
/// source closed) is checked by the unit tests in src/aside.rs.
#[test]
fn xattrs_of_a_network_source_arrive_though_listed_aside() {
    let tmp = tempdir();
    let src_m = skip_unless!(LatencyMount::start(
        tmp.path(),
        "src",
        &["--latency-us", "200"]
    ));
    let dst_m = skip_unless!(LatencyMount::start(
        tmp.path(),
        "dst",
        &["--latency-us", "200"]
    ));
    let tree = src_m.back.join("tree");
    let mut files = 0u64;
    let mut tagged = 0;
    for d in 0..6 {
        let dir = tree.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            let path = dir.join(format!("f{f}"));
            fs::write(&path, format!("{d}/{f}").repeat(f + 1)).unwrap();
            files += 1;
            if f % 3 == 0 {
                let value = format!("v{d}-{f}");
                if set_xattr(&path, b"user.field", value.as_bytes()).is_ok() {
                    tagged += 1;
                }
            }
        }
    }
    if tagged == 0 {
        eprintln!("skipped: the backing filesystem refuses user xattrs");
        return;
    }
    let run = treecopy(args![
        "-j8",
        &src_m.mnt.join("tree"),
        &dst_m.mnt.join("copy")
    ]);
    run.assert_code(0);
    // compare_trees compares xattrs too.
    compare_trees(&tree, &dst_m.back.join("copy"));
    let copied = (0..6)
        .flat_map(|d| (0..40).step_by(3).map(move |f| (d, f)))
        .filter(|(d, f)| {
            let got = xattrs(&dst_m.back.join(format!("copy/d{d}/f{f}"))).unwrap();
            got.get(&b"user.field"[..]).map(Vec::as_slice) == Some(format!("v{d}-{f}").as_bytes())
        })
        .count();
    assert_eq!(copied, tagged, "xattrs that arrived");
    let stats = src_m.finish();
    let listed = stats.get("listxattr").copied().unwrap_or(0);
    assert!(
        (files..files + 20).contains(&listed),
        "{listed} xattr listings for {files} files"
    );
}

/// A directory treecopy creates on a network destination is held by an O_PATH handle, and
/// whether it passes a default ACL on is known from its parent: the server sees no OPENDIR
/// for it and no ACL probe, and its mode, times and xattrs still arrive (set through
/// /proc, the only way such a handle allows).
#[test]
fn new_directories_on_a_network_destination_cost_no_open_and_keep_their_metadata() {
    let tmp = tempdir();
    let dst_m = skip_unless!(LatencyMount::start(
        tmp.path(),
        "dst",
        &["--latency-us", "100"]
    ));
    let tree = tmp.path().join("tree");
    let dirs = 24;
    let mut tagged = 0;
    for d in 0..dirs {
        let dir = tree.join(format!("d{}/sub{d}", d % 4));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), format!("{d}")).unwrap();
        if set_xattr(&dir, b"user.dir", format!("v{d}").as_bytes()).is_ok() {
            tagged += 1;
        }
        let mode = if d % 2 == 0 { 0o750 } else { 0o705 };
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    // Times last: creating the entries above changed them.
    let run = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06.789"])
        .args((0..dirs).map(|d| tree.join(format!("d{}/sub{d}", d % 4))))
        .status()
        .unwrap();
    assert!(run.success());
    let run = treecopy(args!["-j4", &tree, &dst_m.mnt.join("copy")]);
    run.assert_code(0);
    // compare_trees compares modes, times and xattrs.
    compare_trees(&tree, &dst_m.back.join("copy"));
    if tagged > 0 {
        let got = xattrs(&dst_m.back.join("copy/d1/sub5")).unwrap();
        assert_eq!(
            got.get(&b"user.dir"[..]).map(Vec::as_slice),
            Some(&b"v5"[..])
        );
    }
    let stats = dst_m.finish();
    // The root of the copy is opened in full (it is checked for a default ACL); the 28 made
    // below it are not.
    let opened = stats.get("opendir").copied().unwrap_or(0);
    assert!(
        opened <= 2,
        "{opened} OPENDIRs on the destination server for {dirs} new dirs"
    );
    // One killpriv probe per file written (the kernel's) and a few for the root; none per
    // new directory.
    let probes = stats.get("getxattr").copied().unwrap_or(0);
    assert!(
        probes <= dirs as u64 + 4,
        "{probes} GETXATTRs on the destination server for {dirs} files"
    );
}

/// A source server that fails the xattr listing of one file (EIO): that file fails with an
/// error naming its source path (the side that failed), nothing appears under its final
/// name, and the rest of the tree is copied.
#[test]
fn a_failed_xattr_listing_of_the_source_is_reported_at_the_source_path() {
    let tmp = tempdir();
    let flags = [
        "--latency-us",
        "50",
        "--fail-path",
        "cursed.bin",
        "--fail-ops",
        "listxattr",
    ];
    let src_m = skip_unless!(LatencyMount::start(tmp.path(), "src", &flags));
    let tree = src_m.back.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/cursed.bin"), b"data").unwrap();
    fs::write(tree.join("sub/fine.bin"), b"more data").unwrap();
    let dst = tmp.path().join("copy");
    let run = treecopy(args![&src_m.mnt.join("tree"), &dst]);
    run.assert_code(1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: error:"))
        .collect();
    let want = format!(
        "list xattrs of {}: Input/output error",
        src_m.mnt.join("tree/sub/cursed.bin").display()
    );
    assert!(
        errors.len() == 1 && errors[0].contains(&want),
        "want one error containing {want:?}: {}",
        run.stderr
    );
    assert!(!dst.join("sub/cursed.bin").exists());
    assert_eq!(fs::read(dst.join("sub/fine.bin")).unwrap(), b"more data");
    assert_no_temp_files(&dst);
}

/// A destination server that fails the FLUSH of one file's close (EIO), as an NFS server
/// reports a write it refused after the client cached it: that file fails by its path, nothing
/// appears under its final name, and the rest is copied.
#[test]
fn a_close_the_server_fails_fails_the_file_and_commits_nothing() {
    let tmp = tempdir();
    let flags = [
        "--latency-us",
        "50",
        "--fail-path",
        "cursed.bin",
        "--fail-ops",
        "flush",
    ];
    let dst_m = skip_unless!(LatencyMount::start(tmp.path(), "dst", &flags));
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    write_random_file(&tree.join("sub/cursed.bin"), 200 << 10, 7);
    write_random_file(&tree.join("sub/fine.bin"), 300 << 10, 8);
    let run = treecopy(args![&tree, &dst_m.mnt.join("copy")]);
    run.assert_code(1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: error:"))
        .collect();
    assert!(
        errors.len() == 1
            && errors[0].contains("cursed.bin")
            && errors[0].contains("Input/output error"),
        "{}",
        run.stderr
    );
    let copy = dst_m.back.join("copy");
    assert!(!copy.join("sub/cursed.bin").exists());
    assert_eq!(
        first_difference(&tree.join("sub/fine.bin"), &copy.join("sub/fine.bin")).unwrap(),
        None
    );
    assert_no_temp_files(&copy);
}

/// Entries a producer deletes during the run, made deterministic by a source server that
/// answers ENOENT for their OPEN and OPENDIR after the listing named them: each is a warning
/// naming its path, counted as vanished, not failed; the exit status is rsync's 24, nothing
/// appears under their names, and the rest of the tree is copied.
#[test]
fn entries_deleted_after_the_listing_are_vanished_warnings_and_exit_24() {
    let tmp = tempdir();
    let flags = [
        "--latency-us",
        "50",
        "--fail-path",
        "gone*",
        "--fail-errno",
        "ENOENT",
        "--fail-ops",
        "open,opendir",
    ];
    let src_m = skip_unless!(LatencyMount::start(tmp.path(), "src", &flags));
    let tree = src_m.back.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::create_dir_all(tree.join("gone-dir")).unwrap();
    fs::write(tree.join("gone-dir/inner.bin"), b"inner").unwrap();
    fs::write(tree.join("sub/gone.bin"), b"data").unwrap();
    fs::write(tree.join("sub/fine.bin"), b"more data").unwrap();
    let dst = tmp.path().join("copy");
    let report = tmp.path().join("report.json");
    let run = treecopy(args!["--report", &report, &src_m.mnt.join("tree"), &dst]);
    run.assert_code(24);
    assert!(!run.stderr.contains("treecopy: error:"), "{}", run.stderr);
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: warning: vanished: "))
        .collect();
    let mnt = src_m.mnt.join("tree");
    let want = [
        format!(
            "open directory {}: No such file or directory",
            mnt.join("gone-dir").display()
        ),
        format!(
            "open {}: No such file or directory",
            mnt.join("sub/gone.bin").display()
        ),
    ];
    assert!(
        warnings.len() == 2 && want.iter().all(|s| warnings.iter().any(|w| w.contains(s))),
        "want warnings containing {want:?}: {}",
        run.stderr
    );
    let summary = run
        .stderr
        .lines()
        .find(|l| l.contains(" summary "))
        .unwrap();
    assert!(
        summary.contains(" failed=0 ") && summary.contains(" vanished=2 "),
        "{summary}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert_eq!(doc["outcome"], "vanished");
    assert_eq!(doc["exit_code"], 24);
    assert_eq!(doc["counts"]["vanished"], 2);
    assert_eq!(doc["vanished"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["failures"].as_array().map(Vec::len), Some(0));
    assert!(!dst.join("sub/gone.bin").exists());
    assert!(!dst.join("gone-dir").exists());
    assert_eq!(fs::read(dst.join("sub/fine.bin")).unwrap(), b"more data");
    assert_no_temp_files(&dst);
}

/// ESTALE from the source server for a file that is still there (a server fault, not a
/// deletion) stays a failure: treecopy looks the path up afresh before calling anything
/// vanished, so a share gone bad cannot pass for a rotated tree.
#[test]
fn a_stale_handle_on_a_file_that_is_still_there_is_a_failure() {
    let tmp = tempdir();
    let flags = [
        "--latency-us",
        "50",
        "--fail-path",
        "stale.bin",
        "--fail-errno",
        "ESTALE",
        "--fail-ops",
        "open",
    ];
    let src_m = skip_unless!(LatencyMount::start(tmp.path(), "src", &flags));
    let tree = src_m.back.join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("stale.bin"), b"data").unwrap();
    fs::write(tree.join("fine.bin"), b"more data").unwrap();
    let dst = tmp.path().join("copy");
    let run = treecopy(args![&src_m.mnt.join("tree"), &dst]);
    run.assert_code(1);
    let want = format!(
        "error: open {}: Stale file handle",
        src_m.mnt.join("tree/stale.bin").display()
    );
    let errors = run.error_lines();
    assert!(
        errors.len() == 1 && errors[0].contains(&want),
        "want {want:?}: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("vanished: "), "{}", run.stderr);
    assert!(!dst.join("stale.bin").exists());
    assert_eq!(fs::read(dst.join("fine.bin")).unwrap(), b"more data");
}

/// A producer deleting directories on the server while treecopy copies them, on a mount
/// that answers ESTALE for deleted objects as NFS does (--stale-handles): whatever the
/// timing, nothing is an error, the exit status is 0 or 24, every warning is a counted
/// vanished entry, copied files hold their own content, and untouched directories are whole.
#[test]
fn directories_deleted_on_the_server_during_the_copy_are_vanished() {
    let tmp = tempdir();
    let flags = ["--latency-us", "500", "--stale-handles"];
    let src_m = skip_unless!(LatencyMount::start(tmp.path(), "src", &flags));
    let tree = RotatingTree {
        dirs: 30,
        per_dir: 100,
    };
    let back = src_m.back.join("src");
    tree.create(&back);
    let dst = tmp.path().join("copy");
    let deleter = tree.rotate(&back, Duration::from_millis(100), Duration::from_millis(15));
    let run = treecopy(args![&src_m.mnt.join("src"), &dst]);
    deleter.join().unwrap();
    tree.check_copy(&run, &dst);
}

/// A destination server that fails a file's writes and then its removal (EIO): inside a new
/// directory, where files are created under their final names while the directory is still
/// hidden, the failed file is moved to a temp name instead, so the published directory holds
/// nothing incomplete under a final name; the next run removes the leftover and copies it.
/// When the move fails too, the directory stays hidden rather than being published with it.
#[test]
fn a_failed_file_that_cannot_be_removed_never_shows_under_its_name() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    write_random_file(&tree.join("d/f3"), 50_000, 3);
    fs::write(tree.join("d/fine"), b"fine").unwrap();
    for (name, ops) in [("moved", "write,unlink"), ("hidden", "write,unlink,rename")] {
        let base = tmp.path().join(name);
        let flags = [
            "--latency-us",
            "50",
            "--fail-path",
            "*f3",
            "--fail-ops",
            ops,
        ];
        let dst_m = skip_unless!(LatencyMount::start(&base, "dst", &flags));
        let run = treecopy(args![&tree, &dst_m.mnt.join("copy")]);
        run.assert_code(1);
        let copy = dst_m.back.join("copy");
        assert!(!copy.join("d/f3").exists(), "{name}: {}", run.stderr);
        if name == "moved" {
            assert_eq!(fs::read(copy.join("d/fine")).unwrap(), b"fine");
        } else {
            assert!(!copy.join("d").exists(), "{name}: published");
            assert!(run.stderr.contains("not published"), "{}", run.stderr);
        }
        drop(dst_m);
        // Without the faults, the next run leaves the copy whole and no temp name behind.
        let again = skip_unless!(LatencyMount::start(&base, "dst", &["--latency-us", "50"]));
        treecopy(args![&tree, &again.mnt.join("copy")]).assert_code(0);
        assert_eq!(
            first_difference(&tree.join("d/f3"), &copy.join("d/f3")).unwrap(),
            None
        );
        assert_no_temp_files(&copy);
    }
}

/// Another process creating the directories treecopy is still staging (here `mkdir -p` of
/// every `dN/sub` while a slow source is copied): each is merged, with no error, no temp
/// directory left behind, the copy equal to the source, and a second run that copies nothing.
#[test]
fn directories_made_by_another_process_during_the_copy_are_merged() {
    let tmp = tempdir();
    let flags = ["--latency-us", "3000", "--no-copy-file-range"];
    let src_m = skip_unless!(LatencyMount::start(tmp.path(), "src", &flags));
    let back = src_m.back.join("tree");
    for d in 1..=12 {
        for f in 0..20 {
            let dir = back.join(format!("d{d}/sub"));
            fs::create_dir_all(&dir).unwrap();
            write_random_file(
                &dir.join(format!("f{f}")),
                3000 + f * 100,
                (d * 100 + f) as u64,
            );
            write_random_file(&back.join(format!("d{d}/g{f}")), 2000, f as u64);
        }
    }
    let dst = tmp.path().join("copy");
    fs::create_dir(&dst).unwrap();
    let maker = {
        let dst = dst.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            for d in 1..=12 {
                fs::create_dir_all(dst.join(format!("d{d}/sub"))).unwrap();
            }
        })
    };
    let run = treecopy(args!["-j4", &src_m.mnt.join("tree"), &dst]);
    maker.join().unwrap();
    run.assert_code(0);
    assert!(run.error_lines().is_empty(), "{}", run.stderr);
    assert_no_temp_files(&dst);
    compare_trees(&back, &dst);
    let again = treecopy(args![&src_m.mnt.join("tree"), &dst]);
    again.assert_code(0);
    let fields = summary_fields(&again).expect("a summary line");
    assert_eq!(fields["copied"], "0", "{}", again.stderr);
}

/// A new directory whose publishing rename the server fails (EIO): one error naming it, and
/// its staged copy removed (its mode was the source's by then, so no later run would have
/// taken it for a leftover of ours); the next run copies it.
#[test]
fn a_directory_whose_publishing_fails_leaves_no_staged_copy() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("d1")).unwrap();
    fs::create_dir_all(tree.join("d4")).unwrap();
    fs::write(tree.join("d1/f"), b"a").unwrap();
    fs::write(tree.join("d4/f"), b"b").unwrap();
    let flags = [
        "--latency-us",
        "50",
        "--fail-path",
        "/x/d4",
        "--fail-ops",
        "rename",
    ];
    let dst_m = skip_unless!(LatencyMount::start(tmp.path(), "dst", &flags));
    let run = treecopy(args!["-q", &tree, &dst_m.mnt.join("x")]);
    run.assert_code(1);
    let errors = run.error_lines();
    assert!(
        errors.len() == 1 && errors[0].contains("rename") && errors[0].contains("/x/d4"),
        "{}",
        run.stderr
    );
    let x = dst_m.back.join("x");
    assert_no_temp_files(&x);
    assert!(!x.join("d4").exists());
    drop(dst_m);
    let again = skip_unless!(LatencyMount::start(
        tmp.path(),
        "dst",
        &["--latency-us", "50"]
    ));
    treecopy(args!["-q", &tree, &again.mnt.join("x")]).assert_code(0);
    assert_eq!(fs::read(x.join("d4/f")).unwrap(), b"b");
}

/// A large sparse file between two NFS-like mounts moves its data as parallel chunks too (it
/// used to be one stream: 27 s for 1.2 GiB of data under a 100 MB/s stream cap, against
/// 2.4 s in chunks), and its holes stay holes, whether latencyfs reports them (SEEK_DATA) or
/// only their zeros show them.
#[test]
fn a_sparse_file_between_two_mounts_moves_as_parallel_chunks_and_keeps_its_holes() {
    use std::os::unix::fs::MetadataExt;
    skip_unless!(latencyfs_bin());
    let tmp = tempdir();
    let a = LatencyMount::start(tmp.path(), "a", &["--latency-us", "200"]).expect("latencyfs");
    let b = LatencyMount::start(tmp.path(), "b", &["--latency-us", "200"]).expect("latencyfs");
    let src = a.back.join("field.grib");
    // 96 MiB of data, a 200 MiB hole, 32 MiB of data, a 64 MiB hole at the end.
    let mut data = vec![0u8; 96 << 20];
    crate::util::Rng::new(0x5A55).fill(&mut data);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&src).unwrap();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Current(200 << 20)).unwrap();
        f.write_all(&data[..32 << 20]).unwrap();
        f.set_len((96 + 200 + 32 + 64) << 20).unwrap();
    }
    let src_blocks = fs::metadata(&src).unwrap().blocks() * 512;
    assert!(src_blocks < 200 << 20, "the backing store filled the holes");
    let run = treecopy(args!["-v", "-j8", &a.mnt.join("field.grib"), &b.mnt]);
    run.assert_code(0);
    let copy = b.back.join("field.grib");
    assert_eq!(
        first_difference(&src, &copy).unwrap(),
        None,
        "the copy differs"
    );
    let blocks = fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        blocks <= src_blocks + (8 << 20),
        "holes filled: {blocks} bytes allocated, the source {src_blocks}"
    );
    assert_no_temp_files(&b.back);
    drop(b);
    let opens = a.finish()["open"];
    // 128 MiB of data in 16 MiB pieces: the copy's own open and up to eight runners'.
    assert!(
        opens >= 3,
        "{opens} opens of the source: one stream\n{}",
        run.stderr
    );
}
