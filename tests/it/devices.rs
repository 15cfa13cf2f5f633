//! Copies that cross filesystems or read pseudo-filesystems: tmpfs to disk (the per-device-pair
//! fallback decision), loop-mounted XFS (within and between filesystems), /sys and /proc.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{
    Mount, TreeSpec, assert_no_temp_files, compare_trees, dev_of, dev_string, gen_tree,
    gen_tree_with, is_root, tempdir, tempdir_in, treecopy, write_random_file,
};
use crate::{args, require_root, skip_unless};

/// tmpfs to disk: copy_file_range cannot cross these (EXDEV), so the copier must fall back, and
/// must decide that once per (source dev, dest dev) pair rather than once per file.
#[test]
fn tmpfs_to_disk_probes_fallback_once_per_device_pair() {
    let shm = skip_unless!(tempdir_in("/dev/shm"));
    let disk = tempdir();
    let (src, dst) = (shm.path().join("src"), disk.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let (sdev, ddev) = (dev_of(shm.path()), dev_of(disk.path()));
    if sdev == ddev {
        eprintln!("SKIPPED: /dev/shm and the temp dir are on the same device ({sdev})");
        return;
    }
    const N: usize = 200;
    for i in 0..N {
        let sub = src.join(format!("d{}", i % 10));
        fs::create_dir_all(&sub).unwrap();
        write_random_file(&sub.join(format!("f{i}")), 1000 + i * 37, i as u64);
    }
    // As root, also the seeded tree: metadata must survive the fallback path too.
    let seeded_files = if is_root() {
        gen_tree(&src.join("tree"), 0xD3_0004).files
    } else {
        0
    };
    let run = treecopy(args!["-v", "-j4", &src, &dst]);
    run.assert_code(0);
    run.assert_stderr_prefixed();
    compare_trees(&src, &dst);
    assert_no_temp_files(&dst);

    let decisions: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("decision for device pair"))
        .collect();
    assert_eq!(
        decisions.len(),
        1,
        "want exactly one fallback decision for the single device pair, got:\n{}",
        decisions.join("\n")
    );
    let (s, d) = (dev_string(sdev), dev_string(ddev));
    assert!(
        decisions[0].contains(&s) && decisions[0].contains(&d),
        "decision line does not name the pair {s} -> {d}: {}",
        decisions[0]
    );
    // `treecopy: copied SRC -> DST: N bytes by copy_file_range|sendfile|read/write`
    let copied: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: copied "))
        .collect();
    assert_eq!(
        copied.len(),
        N + seeded_files,
        "want one `copied` verbose line per file"
    );
    for line in copied {
        let (paths, how) = line
            .rsplit_once(" bytes by ")
            .unwrap_or_else(|| panic!("malformed copied line: {line}"));
        assert!(
            ["copy_file_range", "sendfile", "read/write"].contains(&how),
            "unknown copy method in: {line}"
        );
        let (paths, n) = paths.rsplit_once(": ").unwrap();
        let from = paths
            .strip_prefix("treecopy: copied ")
            .and_then(|p| p.split_once(" -> "))
            .unwrap_or_else(|| panic!("malformed copied line: {line}"))
            .0;
        let size = fs::metadata(from).map(|m| m.len()).unwrap_or(u64::MAX);
        assert_eq!(
            n.parse::<u64>().ok(),
            Some(size),
            "byte count wrong in: {line}"
        );
    }
}

/// Seeded tree small enough for a 300 MiB XFS image.
fn xfs_spec() -> TreeSpec {
    TreeSpec {
        dirs: 15,
        files: 80,
        symlinks: 12,
        max_depth: 5,
        big_files: 2,
    }
}

#[test]
fn xfs_loop_mounts_within_and_between_filesystems() {
    require_root!();
    let tmp = tempdir();
    let (ma, mb) = (tmp.path().join("mnt_a"), tmp.path().join("mnt_b"));
    // Guards are declared after `tmp` so they unmount before the TempDir is removed.
    let a = skip_unless!(Mount::xfs_loop(&tmp.path().join("a.img"), &ma, "300M"));
    let b = skip_unless!(Mount::xfs_loop(&tmp.path().join("b.img"), &mb, "300M"));
    assert_ne!(
        dev_of(&a.dir),
        dev_of(&b.dir),
        "two loop mounts share a device"
    );

    let src = a.dir.join("src");
    gen_tree_with(&src, 0x0F5_0001, &xfs_spec());

    let within = a.dir.join("copy");
    let run = treecopy(args!["-j4", &src, &within]);
    run.assert_code(0);
    compare_trees(&src, &within);
    assert_no_temp_files(&within);

    let between = b.dir.join("copy");
    let run = treecopy(args!["-j4", "-v", &src, &between]);
    run.assert_code(0);
    compare_trees(&src, &between);
    assert_no_temp_files(&between);
    let decisions = run
        .stderr
        .lines()
        .filter(|l| l.contains("decision for device pair"))
        .count();
    assert!(
        decisions <= 1,
        "one device pair but {decisions} decision lines:\n{}",
        run.stderr
    );
}

/// btrfs (copy_file_range may reflink) within one filesystem, and btrfs to XFS (different
/// filesystem types, so the copier must fall back).
#[test]
fn btrfs_loop_mount_within_and_to_xfs() {
    require_root!();
    let tmp = tempdir();
    let (mb, mx) = (tmp.path().join("mnt_btrfs"), tmp.path().join("mnt_xfs"));
    let b = skip_unless!(Mount::btrfs_loop(&tmp.path().join("b.img"), &mb, "300M"));
    let x = skip_unless!(Mount::xfs_loop(&tmp.path().join("x.img"), &mx, "300M"));
    let src = b.dir.join("src");
    gen_tree_with(&src, 0xB7_0002, &xfs_spec());

    let within = b.dir.join("copy");
    let run = treecopy(args!["-j4", &src, &within]);
    run.assert_code(0);
    compare_trees(&src, &within);
    assert_no_temp_files(&within);

    let across = x.dir.join("copy");
    let run = treecopy(args!["-j4", &src, &across]);
    run.assert_code(0);
    compare_trees(&src, &across);
    assert_no_temp_files(&across);
}

/// Candidate sysfs directories and, for each, attributes whose content does not change while
/// the test runs. Canonicalised first: /sys/class/net/lo is a symlink into /sys/devices.
const SYS_CANDIDATES: [(&str, &[&str]); 3] = [
    (
        "/sys/class/net/lo",
        &[
            "address",
            "mtu",
            "type",
            "ifindex",
            "addr_len",
            "tx_queue_len",
        ],
    ),
    (
        "/sys/devices/system/cpu/cpu0",
        &["topology/core_id", "topology/physical_package_id"],
    ),
    ("/sys/kernel/mm", &["transparent_hugepage/enabled"]),
];

/// Regular files below `root` (not following symlinks), relative.
fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            let r = rel.join(e.file_name());
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(r);
            }
        }
    }
    out
}

/// sysfs files report st_size 4096 (or 0) whatever their content, and copy_file_range on them
/// may copy nothing: the copier must read them to EOF and never produce an empty copy of a
/// non-empty attribute.
#[test]
fn sysfs_subtree_copies_readable_attributes() {
    // The first candidate that exists and whose attributes are mostly readable.
    let mostly_readable = |dir: &Path| {
        let files = regular_files(dir);
        let ok = files
            .iter()
            .filter(|f| fs::read(dir.join(f)).is_ok())
            .count();
        ok * 2 > files.len()
    };
    let Some((src, stable)) = SYS_CANDIDATES.iter().find_map(|(p, stable)| {
        let dir = fs::canonicalize(p).ok()?;
        mostly_readable(&dir).then_some((dir, *stable))
    }) else {
        eprintln!("SKIPPED: no sysfs candidate exists with mostly readable attributes");
        return;
    };
    let tmp = tempdir();
    let dst = tmp.path().join("sys");
    let run = treecopy(args!["-j2", &src, &dst]);

    let files = regular_files(&src);
    let mut readable = 0;
    let mut unreadable = Vec::new();
    for rel in &files {
        let Ok(want) = fs::read(src.join(rel)) else {
            unreadable.push(src.join(rel));
            continue;
        };
        readable += 1;
        let got = fs::read(dst.join(rel))
            .unwrap_or_else(|e| panic!("{} readable in SRC but not copied: {e}", rel.display()));
        if !want.is_empty() {
            assert!(
                !got.is_empty(),
                "{}: source has {} bytes but the copy is empty",
                rel.display(),
                want.len()
            );
        }
        if stable.iter().any(|s| Path::new(s) == rel) {
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{}: stable attribute copied wrongly",
                rel.display()
            );
        }
    }
    assert!(
        readable >= stable.len(),
        "only {readable} readable files under {}",
        src.display()
    );
    // Exit 1 only for attributes that really cannot be read; each reported error names one.
    match run.code() {
        Some(0) => {}
        Some(1) => {
            for line in run.error_lines() {
                assert!(
                    unreadable
                        .iter()
                        .any(|p| line.contains(p.to_str().unwrap())),
                    "error for a path that is readable (or not under SRC): {line}\nunreadable: {unreadable:#?}"
                );
            }
        }
        other => panic!("exit {other:?} copying {}:\n{}", src.display(), run.stderr),
    }
    assert_no_temp_files(&dst);
}

#[test]
fn proc_version_as_single_file() {
    let Ok(want) = fs::read("/proc/version") else {
        eprintln!("SKIPPED: /proc/version not readable");
        return;
    };
    let tmp = tempdir();
    let dst = tmp.path().join("version");
    let run = treecopy(args!["/proc/version", &dst]);
    run.assert_code(0);
    let got = fs::read(&dst).unwrap();
    assert!(!got.is_empty(), "copy of /proc/version is empty");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// Files over 2 GiB need more than one copy_file_range/sendfile call (each moves < 2 GiB).
/// The source is sparse on tmpfs (cheap to make) with data at the ends and around the 2 GiB
/// mark; it is copied across devices (fallback path) and then within the disk.
#[test]
fn file_over_2gib_across_and_within_devices() {
    use std::io::{Seek, SeekFrom, Write};
    let shm = skip_unless!(tempdir_in("/dev/shm"));
    let disk = tempdir();
    let src = shm.path().join("huge.bin");
    const LEN: u64 = (2 << 30) + (16 << 20); // just over 2 GiB
    {
        let mut f = fs::File::create(&src).unwrap();
        for (i, off) in [0, (2 << 30) - 4096, 2 << 30, (2 << 30) + 12345, LEN - 100]
            .into_iter()
            .enumerate()
        {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(format!("marker {i} at {off}\n").as_bytes())
                .unwrap();
        }
        f.set_len(LEN).unwrap();
    }
    let across = disk.path().join("across.bin");
    let run = treecopy(args![&src, &across]);
    run.assert_code(0);
    assert_eq!(
        fs::metadata(&across).unwrap().len(),
        LEN,
        "size after cross-device copy"
    );
    assert_eq!(
        crate::util::first_difference(&src, &across).unwrap(),
        None,
        "cross-device copy differs"
    );
    let within = disk.path().join("within.bin");
    let run = treecopy(args![&across, &within]);
    run.assert_code(0);
    assert_eq!(
        fs::metadata(&within).unwrap().len(),
        LEN,
        "size after same-device copy"
    );
    assert_eq!(
        crate::util::first_difference(&across, &within).unwrap(),
        None,
        "same-device copy differs"
    );
}
