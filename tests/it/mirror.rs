//! Incremental runs and mirroring: up-to-date entries are left alone (the report and the inode
//! numbers prove it), --itemize lists exactly what changed, --checksum / --ignore-existing /
//! --update decide what to copy, --delete and its safety nets, --dry-run changes nothing,
//! SIGKILL at random moments, the DST lock, filters, --fsync / --verify and -x.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    Mount, Rng, Run, TMP_PREFIX, Ts, assert_no_temp_files, bin, compare_trees, find_temp_files,
    first_difference, gen_tree, run_cmd, set_mode, set_times, summary_fields, tempdir, treecopy,
    write_big_file, write_random_file,
};
use crate::{args, require_root, skip_unless};

const LOCK: &str = ".treecopy.lock";
const OLD: Ts = Ts(1_300_000_000, 42);

/// Every entry below `root` (never following symlinks), relative, with its lstat.
fn entries(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let rd = fs::read_dir(root.join(&rel));
        for e in rd.unwrap_or_else(|e| panic!("read_dir {}: {e}", rel.display())) {
            let r = rel.join(e.unwrap().file_name());
            let m = fs::symlink_metadata(root.join(&r)).unwrap();
            if m.is_dir() {
                stack.push(r.clone());
            }
            out.push((r, m));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The relative paths below `root`, directories with a trailing `/`.
fn paths(root: &Path) -> BTreeSet<String> {
    let slash = |m: &fs::Metadata| if m.is_dir() { "/" } else { "" };
    let all = entries(root).into_iter();
    all.map(|(p, m)| format!("{}{}", p.display(), slash(&m)))
        .collect()
}

fn inodes(root: &Path) -> BTreeMap<PathBuf, u64> {
    let all = entries(root).into_iter();
    all.map(|(p, m)| (p, m.ino())).collect()
}

/// Everything observable of a tree, the root itself included: names, types, modes, owners,
/// mtimes, sizes, a hash of each file's content, symlink targets.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = entries(root);
    all.push((PathBuf::new(), fs::symlink_metadata(root).unwrap()));
    let describe = |rel: &Path, m: &fs::Metadata| {
        let p = root.join(rel);
        let mut h = DefaultHasher::new();
        if m.is_file() {
            h.write(&read(p));
        } else if m.file_type().is_symlink() {
            h.write(fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes());
        }
        let size = if m.is_dir() { 0 } else { m.len() };
        let owner = (m.uid(), m.gid());
        let t = (m.mtime(), m.mtime_nsec());
        format!("{:o} {owner:?} {t:?} {size} {:x}", m.mode(), h.finish())
    };
    let all = all.into_iter();
    all.map(|(rel, m)| (rel.clone(), describe(&rel, &m)))
        .collect()
}

#[track_caller]
fn assert_same_snapshot(before: &BTreeMap<PathBuf, String>, dst: &Path, what: &str) {
    let after = snapshot(dst);
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{k:?}: {:?} -> {:?}", before.get(k), after.get(k)))
        .collect();
    let diffs = diffs.join("\n  ");
    assert!(diffs.is_empty(), "{what} changed DST:\n  {diffs}");
}

/// The itemized lines of a run's stdout (the JSON report, if any, left out).
fn itemized(run: &Run) -> BTreeSet<String> {
    let out = run.stdout.lines();
    out.filter(|l| !l.trim().is_empty() && !l.starts_with('{'))
        .map(str::to_string)
        .collect()
}

/// The set of `|`-separated items.
fn set_of(items: &str) -> BTreeSet<String> {
    let all = items.split('|').filter(|s| !s.is_empty());
    all.map(str::to_string).collect()
}

/// The JSON report: the last non-empty line of stdout.
#[track_caller]
fn json_report(run: &Run) -> &str {
    let last = run.stdout.lines().rev().find(|l| !l.trim().is_empty());
    let line = last.unwrap_or("").trim();
    let whole = line.starts_with('{') && line.ends_with('}');
    assert!(whole, "last stdout line is no JSON:\n{}", run.stdout);
    line
}

/// The JSON text of the value of member `key` up to the end of the document (light parsing,
/// whitespace-tolerant; keys used here are unique in the report).
#[track_caller]
fn json_value<'a>(doc: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\"");
    let at = doc
        .find(&pat)
        .unwrap_or_else(|| panic!("no {pat} in {doc}"));
    let rest = doc[at + pat.len()..].trim_start();
    let value = rest.strip_prefix(':');
    value
        .unwrap_or_else(|| panic!("{pat}: no ':' in {doc}"))
        .trim_start()
}

/// A scalar member as its JSON text (strings keep their quotes).
fn json_scalar<'a>(doc: &'a str, key: &str) -> &'a str {
    let v = json_value(doc, key);
    v[..v.find([',', '}']).unwrap_or(v.len())].trim()
}

/// The numeric members of the flat object that is the value of `key`.
#[track_caller]
fn json_numbers(doc: &str, key: &str) -> BTreeMap<String, String> {
    let v = json_value(doc, key);
    assert!(v.starts_with('{'), "\"{key}\" is not an object in {doc}");
    let body = v[1..v.find('}').unwrap()].split(',');
    let pairs = body.filter_map(|kv| kv.split_once(':'));
    pairs
        .map(|(k, n)| (k.trim().trim_matches('"').into(), n.trim().into()))
        .collect()
}

/// Asserts that `fields` holds each `key=value` of `want`.
#[track_caller]
fn assert_fields(fields: &BTreeMap<String, String>, want: &str, what: &str) {
    for (k, v) in want.split_whitespace().filter_map(|kv| kv.split_once('=')) {
        let got = fields.get(k).map(String::as_str);
        assert_eq!(got, Some(v), "{k} in {what}");
    }
}

/// The summary line on stderr carries each `key=value` of `want`.
#[track_caller]
fn assert_summary(run: &Run, want: &str) {
    let s = summary_fields(run).unwrap_or_else(|| panic!("no summary:\n{}", run.stderr));
    assert_fields(&s, want, &run.stderr);
}

/// Writes ROOT/REL, creating its parent directories.
fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read(p: PathBuf) -> Vec<u8> {
    fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn mtime(p: PathBuf) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// The options in `opts` (whitespace-separated), then SRC and DST.
fn argv(opts: &str, src: &Path, dst: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = opts.split_whitespace().map(Into::into).collect();
    a.extend([src.into(), dst.into()]);
    a
}

/// Sets every directory's times (deepest first, `root` included) to one fixed value, so only
/// what a test changes on purpose differs between SRC and an earlier copy.
fn settle_dirs(root: &Path) {
    let all = entries(root).into_iter();
    let mut dirs: Vec<PathBuf> = all.filter(|(_, m)| m.is_dir()).map(|(p, _)| p).collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    dirs.push(PathBuf::new());
    for d in dirs {
        set_times(&root.join(d), OLD, Ts(1_450_000_000, 777));
    }
}

/// A small fixed tree: six files with old nanosecond mtimes, a symlink, four directories.
fn small_tree(root: &Path) {
    let files = "top.txt a/one.txt a/two.txt a/b/three.txt c/four.bin c/five.txt";
    for (i, rel) in files.split_whitespace().enumerate() {
        // Distinct contents and sizes (c/four.bin: 10 kB).
        let data = rel.repeat(if i == 4 { 1000 } else { i + 1 });
        put(root, rel, data.as_bytes());
        set_mode(&root.join(rel), 0o644);
        let i = i as i64;
        set_times(&root.join(rel), OLD, Ts(1_500_000_000 + i, 123 * i));
    }
    symlink("a/one.txt", root.join("link")).unwrap();
    set_times(&root.join("link"), OLD, Ts(1_400_000_000, 1));
    settle_dirs(root);
}

fn src_dst() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    (tmp, src, dst)
}

/// 400 files of 1-60 KB in 20 dirs, six of ~4 MiB and 20 symlinks: a copy with one or two
/// workers takes a few tenths of a second.
fn busy_tree(root: &Path) {
    for d in 0..20u64 {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..20u64 {
            let len = 1000 + ((d * 20 + i) * 7919 % 60_000) as usize;
            write_random_file(&dir.join(format!("f{i:02}")), len, d * 100 + i);
        }
        symlink(format!("f{:02}", d % 20), dir.join("link")).unwrap();
    }
    for b in 0..6u64 {
        let p = root.join(format!("d{:02}/big{b}.bin", b * 3));
        write_big_file(&p, (4 << 20) + b * 4099, b);
    }
}

/// After a kill, every regular file under its final name in DST equals its source (temp files
/// and the lock file that a killed run leaves at the top aside).
#[track_caller]
fn assert_final_names_complete(src: &Path, dst: &Path) {
    if !dst.exists() {
        return;
    }
    let mut bad = Vec::new();
    for (rel, m) in entries(dst) {
        // A staged directory's contents are under its temp name, not under a final path.
        let staged = rel
            .iter()
            .any(|part| part.as_bytes().starts_with(TMP_PREFIX.as_bytes()));
        if !m.is_file() || rel == Path::new(LOCK) || staged {
            continue;
        }
        match first_difference(&src.join(&rel), &dst.join(&rel)) {
            Ok(None) => {}
            Ok(Some(off)) => bad.push(format!("{}: differs at byte {off}", rel.display())),
            Err(e) => bad.push(format!("{}: {e}", rel.display())),
        }
    }
    let bad = bad.join("\n  ");
    assert!(bad.is_empty(), "incomplete files in DST:\n  {bad}");
}

/// A spawned run, killed (and continued, if stopped) and reaped when dropped, so a failing test
/// leaves no process behind.
struct Proc(Child);

impl Proc {
    fn spawn(args: Vec<OsString>) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args).stdin(Stdio::null());
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Proc(cmd.spawn().expect("spawn treecopy"))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, which is not reaped before Proc is dropped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, sig) };
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    #[track_caller]
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "still running after {timeout:?}");
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGKILL);
            self.signal(libc::SIGCONT);
            let _ = self.0.wait();
        }
    }
}

/// Waits until a run has taken the lock on `dst` and started copying: the lock file exists
/// beside at least one other entry. Panics if the run ends first.
#[track_caller]
fn wait_until_copying(p: &mut Proc, dst: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<OsString> = fs::read_dir(dst)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if names.iter().any(|n| n == LOCK) && names.len() > 1 {
            return;
        }
        assert!(p.running(), "the run ended before it was seen copying");
        assert!(Instant::now() < deadline, "the run never started copying");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn second_run_copies_nothing() {
    require_root!();
    let (_tmp, src, dst) = src_dst();
    let m = gen_tree(&src, 0x1AC_0001);
    treecopy(args!["-j4", &src, &dst]).assert_code(0);
    let before = inodes(&dst);
    let run = treecopy(args!["-j4", "--json", &src, &dst]);
    run.assert_code(0);
    // Every entry that is not a directory is found up to date.
    let non_dirs = m.files + m.symlinks;
    let zero = format!("copied=0 updated=0 deleted=0 failed=0 skipped={non_dirs}");
    assert_summary(&run, &format!("bytes=0 {zero}"));
    let doc = json_report(&run);
    assert_eq!(json_scalar(doc, "schema"), "\"treecopy-report/1\"");
    assert_eq!(json_scalar(doc, "outcome"), "\"ok\"");
    assert_eq!(json_scalar(doc, "exit_code"), "0");
    assert_fields(&json_numbers(doc, "counts"), &zero, doc);
    let bytes = format!("copied=0 skipped={}", m.bytes);
    assert_fields(&json_numbers(doc, "bytes"), &bytes, doc);
    assert_eq!(inodes(&dst), before, "the second run replaced entries");
    compare_trees(&src, &dst);
}

#[test]
fn itemize_lists_exactly_touched_grown_and_chmodded_files() {
    let (_tmp, src, dst) = src_dst();
    small_tree(&src);
    treecopy(args![&src, &dst]).assert_code(0);
    let before = inodes(&dst);
    set_times(&src.join("top.txt"), OLD, Ts(1_600_000_000, 5));
    let three = src.join("a/b/three.txt");
    let mut f = fs::OpenOptions::new().append(true).open(three).unwrap();
    std::io::Write::write_all(&mut f, b" and more").unwrap();
    drop(f);
    set_mode(&src.join("c/five.txt"), 0o600);

    let run = treecopy(args!["-i", "--json", &src, &dst]);
    run.assert_code(0);
    let want = ">f..t...... top.txt|>f.st...... a/b/three.txt|.f...p..... c/five.txt";
    assert_eq!(itemized(&run), set_of(want));
    let doc = json_report(&run);
    let counts = json_numbers(doc, "counts");
    assert_fields(&counts, "copied=2 updated=1 deleted=0 failed=0", doc);
    // Only the two recopied files are new inodes; the chmod was fixed in place.
    let after = inodes(&dst);
    let changed = before.iter().filter(|(k, ino)| after[*k] != **ino);
    let changed: Vec<&Path> = changed.map(|(k, _)| k.as_path()).collect();
    assert_eq!(changed, [Path::new("a/b/three.txt"), Path::new("top.txt")]);
    compare_trees(&src, &dst);
}

#[test]
fn itemize_lists_new_entries_and_deletions() {
    let (_tmp, src, dst) = src_dst();
    small_tree(&src);
    treecopy(args![&src, &dst]).assert_code(0);
    let before = inodes(&dst);
    put(&src, "new.txt", b"new");
    put(&src, "newdir/inner.txt", b"inner");
    symlink("../top.txt", src.join("a/newlink")).unwrap();
    fs::remove_dir_all(src.join("c")).unwrap();
    fs::remove_file(src.join("a/two.txt")).unwrap();
    settle_dirs(&src);

    let run = treecopy(args!["-i", "--delete", &src, &dst]);
    run.assert_code(0);
    let want = ">f+++++++++ new.txt|cd+++++++++ newdir/|>f+++++++++ newdir/inner.txt|\
                cL+++++++++ a/newlink -> ../top.txt|*deleting   a/two.txt|\
                *deleting   c/|*deleting   c/four.bin|*deleting   c/five.txt";
    assert_eq!(itemized(&run), set_of(want));
    assert_summary(&run, "copied=4 deleted=4 updated=0");
    let after = inodes(&dst);
    for rel in ["top.txt", "a", "a/one.txt", "a/b", "a/b/three.txt", "link"] {
        let rel = Path::new(rel);
        assert_eq!(after[rel], before[rel], "{} was replaced", rel.display());
    }
    compare_trees(&src, &dst);
}

#[test]
fn checksum_recopies_a_change_that_kept_size_and_mtime() {
    let (_tmp, src, dst) = src_dst();
    fs::create_dir(&src).unwrap();
    let (f, t) = (src.join("f.bin"), Ts(1_555_555_555, 555));
    write_random_file(&f, 65_536, 1);
    write_random_file(&src.join("g.bin"), 5_000, 2);
    set_times(&f, OLD, t);
    treecopy(args![&src, &dst]).assert_code(0);
    let old = read(dst.join("f.bin"));
    let mut data = old.clone();
    data[40_000] ^= 0xff;
    fs::write(&f, &data).unwrap();
    set_times(&f, OLD, t);
    let ino = inodes(&dst);

    let run = treecopy(args!["-i", &src, &dst]);
    run.assert_code(0);
    assert_eq!(itemized(&run), BTreeSet::new(), "without -c");
    assert_eq!(read(dst.join("f.bin")), old, "recopied without -c");
    assert_eq!(inodes(&dst), ino);

    let run = treecopy(args!["-c", "-i", &src, &dst]);
    run.assert_code(0);
    let lines: Vec<String> = itemized(&run).into_iter().collect();
    // Same size and mtime, new content: rsync's `>fc........` (no `t`: the time did not differ).
    let ok = lines.len() == 1 && lines[0] == ">fc........ f.bin";
    assert!(ok, "with -c: {lines:?}");
    assert_eq!(read(dst.join("f.bin")), data, "not recopied with -c");
    let g = Path::new("g.bin");
    assert_eq!(inodes(&dst)[g], ino[g], "g.bin recopied with -c");
    compare_trees(&src, &dst);
}

#[test]
fn ignore_existing_and_update_keep_destination_files() {
    let (_tmp, src, dst) = src_dst();
    let t = 1_500_000_000;
    // (name, DST's mtime): older and newer than the source's.
    let files = [("older.txt", t - 100), ("newer.txt", t + 100)];
    for (name, dst_mtime) in files {
        put(&src, name, b"source version");
        set_times(&src.join(name), OLD, Ts(t, 0));
        put(&dst, name, b"dst");
        set_times(&dst.join(name), OLD, Ts(dst_mtime, 7));
    }
    put(&src, "sub/new.txt", b"new");
    let ino = inodes(&dst);
    treecopy(args!["--ignore-existing", &src, &dst]).assert_code(0);
    for (name, dst_mtime) in files {
        let what = format!("{name} with --ignore-existing");
        assert_eq!(read(dst.join(name)), b"dst", "{what}");
        assert_eq!(mtime(dst.join(name)), (dst_mtime, 7), "{what}");
        let name = Path::new(name);
        assert_eq!(inodes(&dst)[name], ino[name], "{what}");
    }
    assert_eq!(read(dst.join("sub/new.txt")), b"new");

    treecopy(args!["-u", &src, &dst]).assert_code(0);
    assert_eq!(read(dst.join("newer.txt")), b"dst", "-u replaced newer");
    assert_eq!(mtime(dst.join("newer.txt")), (t + 100, 7));
    assert_eq!(read(dst.join("older.txt")), b"source version", "-u");
    assert_eq!(mtime(dst.join("older.txt")), (t, 0));
}

#[test]
fn delete_removes_exactly_the_extraneous_entries() {
    let (tmp, src, dst) = src_dst();
    put(&src, "keep.txt", b"keep");
    put(&src, "sub/keep2.txt", b"keep2");
    symlink("keep.txt", src.join("link")).unwrap();
    treecopy(args![&src, &dst]).assert_code(0);
    let outside = tmp.path().join("outside");
    put(&outside, "f1", b"outside 1");
    put(&outside, "f2", b"outside 2");
    // 7 extraneous entries (olddir counts with its 3 below), and 2 that the filter excludes.
    for rel in ["extra.txt", "sub/extra2.txt", "olddir/x", "olddir/y/z"] {
        put(&dst, rel, b"x");
    }
    symlink(&outside, dst.join("escape")).unwrap();
    put(&dst, "cache.bak", b"excluded");
    put(&dst, "sub/more.bak", b"excluded");

    let run = treecopy(argv("--delete --exclude *.bak", &src, &dst));
    run.assert_code(0);
    let kept = "keep.txt|link|sub/|sub/keep2.txt|";
    let want = format!("{kept}cache.bak|sub/more.bak");
    assert_eq!(paths(&dst), set_of(&want));
    assert_summary(&run, "deleted=7");
    assert_eq!(paths(&outside), set_of("f1|f2"), "link target emptied");
    assert_eq!(read(outside.join("f1")), b"outside 1");

    let opts = "--delete --delete-excluded --exclude *.bak";
    treecopy(argv(opts, &src, &dst)).assert_code(0);
    assert_eq!(paths(&dst), set_of(kept));
    compare_trees(&src, &dst);
}

/// The directories that files replace count against --max-delete too: the pre-pass used to
/// miss them, so the run deleted up to the limit inside one, then stopped (exit 1, half a
/// directory gone) instead of refusing with nothing changed.
#[test]
fn max_delete_counts_a_directory_a_file_replaces() {
    let (_tmp, src, dst) = src_dst();
    put(&src, "kept", b"k");
    treecopy(args![&src, &dst]).assert_code(0);
    put(&src, "mp", b"now a file");
    for i in 0..10 {
        put(&dst, &format!("mp/{i}"), b"x");
    }
    let before = snapshot(&dst);
    let run = treecopy(argv("--delete --max-delete 2", &src, &dst));
    run.assert_code(4);
    assert_same_snapshot(&before, &dst, "a refused --max-delete run");
    let run = treecopy(argv("--delete --max-delete 11", &src, &dst));
    run.assert_code(0);
    assert_summary(&run, "deleted=11");
    compare_trees(&src, &dst);
}

#[test]
fn max_delete_refuses_the_whole_run_when_over_the_limit() {
    let (_tmp, src, dst) = src_dst();
    small_tree(&src);
    treecopy(args![&src, &dst]).assert_code(0);
    // Pending work besides the deletions: a new file and an update.
    put(&src, "pending.txt", b"pending");
    set_times(&src.join("top.txt"), OLD, Ts(1_650_000_000, 0));
    for rel in ["e1", "e2", "a/e3", "a/b/e4", "c/e5"] {
        put(&dst, rel, rel.as_bytes());
    }
    let before = snapshot(&dst);
    let run = treecopy(argv("--delete --max-delete 4", &src, &dst));
    run.assert_code(4);
    assert_same_snapshot(&before, &dst, "a refused --max-delete run");

    let run = treecopy(argv("--delete --max-delete 5", &src, &dst));
    run.assert_code(0);
    assert_summary(&run, "deleted=5");
    compare_trees(&src, &dst);
}

#[test]
fn delete_with_an_empty_source_needs_allow_empty_source() {
    let (_tmp, src, dst) = src_dst();
    fs::create_dir(&src).unwrap();
    put(&dst, "a", b"a");
    put(&dst, "d/b", b"b");
    let before = snapshot(&dst);
    treecopy(args!["--delete", &src, &dst]).assert_code(4);
    assert_same_snapshot(&before, &dst, "--delete from an empty SRC");
    let opts = "--delete --allow-empty-source";
    treecopy(argv(opts, &src, &dst)).assert_code(0);
    assert_eq!(paths(&dst), BTreeSet::new());
}

#[test]
fn dry_run_changes_nothing_and_itemizes_what_a_real_run_does() {
    let (_tmp, src, dst) = src_dst();
    small_tree(&src);
    treecopy(args![&src, &dst]).assert_code(0);
    put(&src, "new.txt", b"new");
    put(&src, "newdir/inner.txt", b"inner");
    set_times(&src.join("top.txt"), OLD, Ts(1_600_000_000, 9));
    put(&src, "a/one.txt", b"one, grown");
    set_mode(&src.join("c/five.txt"), 0o640);
    symlink("a/b", src.join("dirlink")).unwrap();
    fs::remove_file(src.join("a/two.txt")).unwrap();
    put(&dst, "stale/deeper/s", b"stale");
    let before = snapshot(&dst);

    let dry = treecopy(args!["-n", "--delete", &src, &dst]);
    dry.assert_code(0);
    assert_same_snapshot(&before, &dst, "--dry-run");
    let lines = itemized(&dry);
    let want = ">f+++++++++ new.txt|cd+++++++++ newdir/|>f+++++++++ newdir/inner.txt|\
                >f..t...... top.txt|>f.st...... a/one.txt|.f...p..... c/five.txt|\
                cL+++++++++ dirlink -> a/b|*deleting   a/two.txt|*deleting   stale/|\
                *deleting   stale/deeper/|*deleting   stale/deeper/s";
    let missing: Vec<String> = set_of(want).difference(&lines).cloned().collect();
    assert!(missing.is_empty(), "dry run lacks {missing:?}: {lines:#?}");
    let real = treecopy(args!["-i", "--delete", &src, &dst]);
    real.assert_code(0);
    assert_eq!(lines, itemized(&real), "dry run vs real run");
    compare_trees(&src, &dst);
}

#[test]
fn sigkill_at_random_moments_then_rerun_converges() {
    let (_tmp, src, dst) = src_dst();
    busy_tree(&src);
    let mut took = Duration::ZERO;
    for _ in 0..2 {
        let t = Instant::now();
        treecopy(args!["-j2", &src, &dst]).assert_code(0);
        took += t.elapsed() / 2;
        fs::remove_dir_all(&dst).unwrap();
    }
    let typical_us = took.as_micros().max(20_000) as u64;
    // The copy's length varies with the load of the rest of the suite, and a resumed run is
    // shorter than a fresh one, so the window of kill moments adapts: a kill that lands after the
    // run ended does not count and narrows the window; one that lands widens it again.
    let mut window_us = typical_us;
    let mut rng = Rng::new(0x5161_4B11);
    let (mut kills, mut missed, mut round, mut left_tmp, mut left_lock) = (0, 0, 0, 0, 0);
    while kills < 20 {
        assert!(
            missed < 100,
            "{missed} kills landed after the run ended; {kills} landed"
        );
        if dst.exists() {
            fs::remove_dir_all(&dst).unwrap();
        }
        // Odd rounds also kill the run that resumes from the first killed one.
        for _ in 0..(1 + round % 2).min(20 - kills) {
            let mut p = Proc::spawn(args!["-j2", &src, &dst]);
            thread::sleep(Duration::from_micros(rng.below(window_us)));
            let landed = p.running();
            if landed {
                p.signal(libc::SIGKILL);
                kills += 1;
                window_us = (window_us + window_us / 8).min(typical_us);
            } else {
                missed += 1;
                window_us = (window_us * 3 / 4).max(1_000);
            }
            let st = p.wait(Duration::from_secs(30));
            assert!(st.success() || st.signal() == Some(libc::SIGKILL), "{st}");
            assert_final_names_complete(&src, &dst);
            left_tmp += usize::from(!find_temp_files(&dst).is_empty());
            left_lock += usize::from(dst.join(LOCK).exists());
        }
        let run = treecopy(args!["-j2", &src, &dst]);
        run.assert_code(0);
        compare_trees(&src, &dst);
        assert_no_temp_files(&dst);
        assert!(!dst.join(LOCK).exists(), "lock left after round {round}");
        round += 1;
    }
    eprintln!(
        "copy {took:?}; 20 kills mid-run, {missed} after the end; left {left_tmp} tmp, {left_lock} lock"
    );
    // A kill that leaves neither a temp file nor the lock behind never hit the copy at all.
    assert!(
        left_tmp + left_lock >= 10,
        "only {left_tmp} kills left a temp file, {left_lock} the lock"
    );
}

#[test]
fn a_locked_destination_refuses_a_second_run_and_wait_waits() {
    let (_tmp, src, dst) = src_dst();
    busy_tree(&src);
    let mut a = Proc::spawn(args!["-j1", &src, &dst]);
    wait_until_copying(&mut a, &dst);
    // Frozen while it holds the lock: a run in progress for as long as the test needs.
    a.signal(libc::SIGSTOP);
    let mut cmd = Command::new(bin());
    cmd.args(args![&src, &dst]);
    let b = run_cmd(cmd, Duration::from_secs(20));
    b.assert_code(3);
    assert!(b.stderr.contains("locked"), "stderr: {}", b.stderr);

    // Stopped while it waits, a --wait run exits as interrupted (it used to exit 2).
    let mut d = Proc::spawn(args!["--wait", &src, &dst]);
    thread::sleep(Duration::from_millis(700));
    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(143),
        "a waiting run stopped by SIGTERM: {st}"
    );

    let mut c = Proc::spawn(args!["--wait", &src, &dst]);
    thread::sleep(Duration::from_millis(700));
    assert!(c.running(), "the --wait run did not wait for the lock");
    a.signal(libc::SIGCONT);
    let st = a.wait(Duration::from_secs(60));
    assert!(st.success(), "first run: {st}");
    let st = c.wait(Duration::from_secs(60));
    assert!(st.success(), "--wait run: {st}");
    compare_trees(&src, &dst);
    assert!(!dst.join(LOCK).exists());
}

#[test]
fn a_lock_left_by_a_killed_run_does_not_block_the_next() {
    let (_tmp, src, dst) = src_dst();
    busy_tree(&src);
    let mut a = Proc::spawn(args!["-j1", &src, &dst]);
    wait_until_copying(&mut a, &dst);
    a.signal(libc::SIGKILL);
    a.wait(Duration::from_secs(30));
    assert!(dst.join(LOCK).exists(), "SIGKILL left no lock file");
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    compare_trees(&src, &dst);
    assert_no_temp_files(&dst);
    assert!(!dst.join(LOCK).exists(), "lock file left behind");
}

#[test]
fn filters_copy_exactly_the_expected_paths() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    let files = "a.txt b.tmp top-only keep.log debug.log x.grib sub/c.tmp sub/d.txt \
        sub/top-only sub/e.grib sub/trace.log cache/blob sub/cache/blob2 other/cache \
        build/out.o sub/build/keep.o deep/er/f.grib deep/er/g.nc";
    for f in files.split_whitespace() {
        put(&src, f, f.as_bytes());
    }
    let all = paths(&src);
    // All paths but the given ones (a directory with its contents).
    let without = |gone: &str| -> BTreeSet<String> {
        let gone = set_of(gone);
        let under = |p: &String, g: &String| g.ends_with('/') && p.starts_with(g);
        let hit = |p: &String| gone.iter().any(|g| p == g || under(p, g));
        all.iter().filter(|p| !hit(p)).cloned().collect()
    };
    let rules = tmp.path().join("rules");
    let text = "# build outputs and logs\n\n+ keep.log\n*.log\n/build/\n# temporaries\n*.tmp\n";
    fs::write(&rules, text).unwrap();
    let exclude_from = format!("--exclude-from {}", rules.display());
    let c0 = without("b.tmp|sub/c.tmp|top-only|cache/|sub/cache/");
    let grib = |p: &&String| p.ends_with('/') || p.ends_with(".grib");
    let c1: BTreeSet<String> = all.iter().filter(grib).cloned().collect();
    let c3 = without("debug.log|sub/trace.log|build/|b.tmp|sub/c.tmp");
    let cases = [
        ("--exclude *.tmp --exclude /top-only --exclude cache/", c0),
        ("--include */ --include *.grib --exclude *", c1),
        // First match wins: everything is excluded before the include is reached.
        ("--exclude * --include *.grib", BTreeSet::new()),
        (exclude_from.as_str(), c3),
    ];
    for (i, (opts, want)) in cases.into_iter().enumerate() {
        let dst = tmp.path().join(format!("dst{i}"));
        treecopy(argv(opts, &src, &dst)).assert_code(0);
        assert_eq!(paths(&dst), want, "filters {opts}");
    }
    assert_eq!(read(tmp.path().join("dst0/other/cache")), b"other/cache");
}

#[test]
fn fsync_and_verify_produce_exact_copies() {
    require_root!();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    gen_tree(&src, 0xF5_7C);
    for (i, opts) in ["--fsync", "--verify", "--fsync --verify"]
        .iter()
        .enumerate()
    {
        let dst = tmp.path().join(format!("dst{i}"));
        treecopy(argv(&format!("-j4 {opts}"), &src, &dst)).assert_code(0);
        compare_trees(&src, &dst);
        assert_no_temp_files(&dst);
    }
}

#[test]
fn one_file_system_creates_mount_points_empty() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    put(&src, "a.txt", b"a");
    put(&src, "sub/b.txt", b"b");
    let _mount = skip_unless!(Mount::tmpfs(&src.join("sub/mnt"), "4m"));
    put(&src, "sub/mnt/inside.txt", b"on tmpfs");
    put(&src, "sub/mnt/inner/deep.txt", b"deep");

    let dst = tmp.path().join("dst");
    treecopy(args!["-x", &src, &dst]).assert_code(0);
    assert_eq!(paths(&dst), set_of("a.txt|sub/|sub/b.txt|sub/mnt/"));
    // Without -x the mount's contents are copied: the fixture does hold something to skip.
    let all = tmp.path().join("all");
    treecopy(args![&src, &all]).assert_code(0);
    assert!(paths(&all).contains("sub/mnt/inner/deep.txt"));
}

/// --delete never enters a filesystem mounted inside DST, a tmpfs or a bind mount of the
/// destination's own filesystem (same st_dev): each mount point is reported and kept with all
/// it holds (and so is the directory holding it), and the rest is mirrored.
#[test]
fn delete_does_not_enter_mounts_in_the_destination() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    put(&src, "keep.txt", b"k");
    let dst = tmp.path().join("dst");
    put(&dst, "stale.txt", b"s");
    put(&dst, "old/stale.txt", b"s");
    let precious = tmp.path().join("precious");
    put(&precious, "v.txt", b"valuable");
    put(&precious, "deep/w.txt", b"valuable too");
    let _bound = skip_unless!(Mount::bind(&precious, &dst.join("old/bound")));
    let _tmpfs = skip_unless!(Mount::tmpfs(&dst.join("scratch"), "1m"));
    put(&dst, "scratch/t.txt", b"on tmpfs");

    let run = treecopy(args!["--delete", &src, &dst]);
    run.assert_code(1);
    let errors = run.error_lines();
    for mnt in ["old/bound", "scratch"] {
        let want = format!("delete {}: ", dst.join(mnt).display());
        assert!(
            errors
                .iter()
                .any(|l| l.contains(&want) && l.contains("mounted there")),
            "want an error for {mnt}: {}",
            run.stderr
        );
    }
    assert_eq!(fs::read(precious.join("v.txt")).unwrap(), b"valuable");
    assert_eq!(
        fs::read(precious.join("deep/w.txt")).unwrap(),
        b"valuable too"
    );
    assert_eq!(fs::read(dst.join("scratch/t.txt")).unwrap(), b"on tmpfs");
    assert!(!dst.join("stale.txt").exists());
    // The directory holding the bind mount stays: its removal stops at the mount point.
    assert!(dst.join("old/bound").is_dir());
    assert_eq!(fs::read(dst.join("keep.txt")).unwrap(), b"k");
}

/// An xattr added to, changed on or removed from a source file (its mtime untouched) is
/// carried to the copy by the next run, in place; `-c` also repairs an xattr changed on the
/// copy alone.
#[test]
fn xattr_changes_reach_the_copy_in_place() {
    use crate::util::{set_xattr, xattrs};
    let (_tmp, src, dst) = src_dst();
    small_tree(&src);
    set_xattr(&src.join("a/one.txt"), b"user.keep", b"1").unwrap();
    set_xattr(&src.join("a/two.txt"), b"user.gone", b"x").unwrap();
    treecopy(args![&src, &dst]).assert_code(0);
    let before = inodes(&dst);
    set_xattr(&src.join("top.txt"), b"user.new", b"n").unwrap();
    set_xattr(&src.join("a/one.txt"), b"user.keep", b"2").unwrap();
    xattr_remove(&src.join("a/two.txt"), "user.gone");

    let run = treecopy(args!["-i", &src, &dst]);
    run.assert_code(0);
    let want = ".f........x top.txt|.f........x a/one.txt|.f........x a/two.txt";
    assert_eq!(itemized(&run), set_of(want));
    assert_eq!(inodes(&dst), before, "xattrs are fixed in place");
    for rel in ["top.txt", "a/one.txt", "a/two.txt"] {
        assert_eq!(
            xattrs(&src.join(rel)).unwrap(),
            xattrs(&dst.join(rel)).unwrap(),
            "{rel}"
        );
    }
    // An xattr changed on the copy alone is found by --checksum.
    set_xattr(&dst.join("c/five.txt"), b"user.stray", b"s").unwrap();
    let run = treecopy(args!["-c", "-i", &src, &dst]);
    run.assert_code(0);
    assert!(xattrs(&dst.join("c/five.txt")).unwrap().is_empty());
    compare_trees(&src, &dst);
}

fn xattr_remove(path: &Path, name: &str) {
    let out = Command::new("setfattr")
        .arg("-x")
        .arg(name)
        .arg(path)
        .output()
        .expect("setfattr runs");
    assert!(out.status.success(), "setfattr -x {name}: {out:?}");
}

/// A report that cannot be written is refused before anything is copied (exit 2: a cron
/// wrapper reading it must not take its absence for success, and a whole night's copy should
/// not run unrecorded) and names the path; a written one is complete JSON.
#[test]
fn report_file_is_written_whole_or_the_run_fails() {
    let (tmp, src, dst) = src_dst();
    small_tree(&src);
    let missing_dir = tmp.path().join("no-such-dir/report.json");
    let run = treecopy(args!["--report", &missing_dir, &src, &dst]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("report")
            && run.stderr.contains("no-such-dir/report.json")
            && run.stderr.contains("No such file or directory"),
        "{}",
        run.stderr
    );
    assert!(
        !dst.exists(),
        "copied although the report cannot be written"
    );
    // A directory, and a file in a directory that takes no new files, are refused alike.
    for path in [tmp.path(), Path::new("/proc/version")] {
        let run = treecopy(args!["--report", path, &src, &dst]);
        run.assert_code(2);
        assert!(!dst.exists(), "--report {}: copied", path.display());
    }
    let report = tmp.path().join("report.json");
    treecopy(args!["--report", &report, &src, &dst]).assert_code(0);
    let text = fs::read_to_string(&report).unwrap();
    assert!(
        text.trim_start().starts_with('{') && text.trim_end().ends_with('}'),
        "{text}"
    );
    assert!(text.contains("\"schema\": \"treecopy-report/1\""), "{text}");
    assert!(text.contains("\"outcome\": \"ok\""), "{text}");
}

/// --report onto a symlink replaces the link's target and keeps the link; onto a FIFO it
/// writes into the FIFO (a reader gets the report) instead of replacing it with a file; a
/// --json or --itemize stdout that cannot take the output (/dev/full) fails the run, while a
/// reader that goes away (a closed pipe) does not. No temp file is left beside the report.
#[test]
fn report_and_stdout_go_where_they_point_and_their_failures_count() {
    let (tmp, src, _dst) = src_dst();
    small_tree(&src);
    let logs = tmp.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let link = tmp.path().join("current.json");
    symlink("logs/real.json", &link).unwrap();
    // An older, private report: the new one keeps its mode.
    fs::write(logs.join("real.json"), b"{}").unwrap();
    set_mode(&logs.join("real.json"), 0o640);
    treecopy(args!["--report", &link, &src, tmp.path().join("d1")]).assert_code(0);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let real = fs::read_to_string(logs.join("real.json")).unwrap();
    let mode = fs::metadata(logs.join("real.json")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the report kept its mode");
    assert!(real.contains("\"outcome\": \"ok\""), "{real}");
    let names: Vec<_> = fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["real.json"], "no temp file left");

    let fifo = tmp.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        thread::spawn(move || fs::read_to_string(fifo).unwrap())
    };
    treecopy(args!["--report", &fifo, &src, tmp.path().join("d2")]).assert_code(0);
    let got = reader.join().unwrap();
    assert!(got.contains("\"schema\": \"treecopy-report/1\""), "{got}");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    for flag in ["--json", "-i"] {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec \"$0\" \"$@\" > /dev/full", bin(), flag])
            .arg(&src)
            .arg(tmp.path().join(format!("full{flag}")));
        let run = run_cmd(cmd, Duration::from_secs(60));
        run.assert_code(1);
        assert!(
            run.stderr.contains("write stdout: No space left on device"),
            "{flag}: {}",
            run.stderr
        );
    }
    let mut cmd = Command::new(bin());
    cmd.arg("-i")
        .arg(&src)
        .arg(tmp.path().join("closed"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "a closed pipe is not a failure"
    );
}

/// A directory in DST that only bears the temp-name pattern (not 0700, so not staged by us)
/// is not removed as a killed run's leftover.
#[test]
fn a_directory_that_only_looks_staged_is_left_alone() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let dst = tmp.path().join("dst");
    let lookalike = dst.join(format!("{TMP_PREFIX}99999999.3"));
    fs::create_dir_all(&lookalike).unwrap();
    fs::set_permissions(&lookalike, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(lookalike.join("f"), b"z").unwrap();
    let run = treecopy(args![&src, &dst]);
    run.assert_code(0);
    assert_eq!(fs::read(lookalike.join("f")).unwrap(), b"z");
    assert!(run.stderr.contains("left alone"), "{}", run.stderr);
}

/// A run killed while a slow directory is still staged leaves its finished parts (here a
/// subdirectory published inside it) under the temp name; the next run resumes that
/// directory instead of copying it again: the finished files keep their inodes.
#[test]
fn a_killed_runs_staged_directory_is_resumed() {
    resumes_killed_staged_directory("x");
}

/// A name too long to fit in a temp name beside the prefix is carried as a hash, and resumed
/// all the same.
#[test]
fn a_killed_runs_staged_directory_with_a_long_name_is_resumed() {
    resumes_killed_staged_directory(&"x".repeat(250));
}

fn resumes_killed_staged_directory(x: &str) {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    let sx = src.join(x);
    fs::create_dir_all(sx.join("y/z")).unwrap();
    write_big_file(&sx.join("big.bin"), 1 << 30, 0x7E);
    for (i, f) in ["y/g1", "y/g2", "y/z/e"].iter().enumerate() {
        write_random_file(&sx.join(f), 8192, i as u64);
    }
    for attempt in 0..5 {
        let dst = tmp.path().join(format!("dst{attempt}"));
        let mut p = Proc::spawn(args!["-j2", &src, &dst]);
        // Wait until y is published inside x's staged directory, then kill mid-copy of big.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut finished_y = None;
        while finished_y.is_none() && p.running() && Instant::now() < deadline {
            finished_y = fs::read_dir(&dst).ok().and_then(|rd| {
                rd.flatten()
                    .find(|e| e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes()))
                    .map(|e| e.path().join("y"))
                    .filter(|y| y.join("g2").exists() && y.join("z/e").exists())
            });
        }
        let Some(y) = finished_y.filter(|_| p.running()) else {
            let _ = p.wait(Duration::from_secs(60));
            eprintln!("attempt {attempt}: the copy ended before y was published inside x");
            continue;
        };
        p.signal(libc::SIGKILL);
        assert_eq!(
            p.wait(Duration::from_secs(30)).signal(),
            Some(libc::SIGKILL)
        );
        if !y.exists() {
            eprintln!("attempt {attempt}: x was published before the kill");
            continue;
        }
        let inode = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        let before = (inode(&y.join("g1")), inode(&y.join("z/e")));
        let run = treecopy(args!["-v", "-j2", &src, &dst]);
        run.assert_code(0);
        assert!(run.stderr.contains("resuming"), "{}", run.stderr);
        compare_trees(&src, &dst);
        assert_no_temp_files(&dst);
        let after = (
            inode(&dst.join(x).join("y/g1")),
            inode(&dst.join(x).join("y/z/e")),
        );
        assert_eq!(before, after, "finished files were copied again");
        return;
    }
    panic!("never caught x staged with y finished inside it");
}

/// In a resumed staged directory a file cut off mid-write is under its final name; it must
/// be copied again even with --ignore-existing, --update or a wide --modify-window, which
/// would keep it anywhere else. A complete one is kept.
#[test]
fn a_cut_off_file_in_a_resumed_directory_is_copied_again_whatever_the_policy() {
    for flag in ["--ignore-existing", "--update", "--modify-window=100000"] {
        let tmp = tempdir();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("x")).unwrap();
        write_random_file(&src.join("x/cut"), 1 << 20, 1);
        write_random_file(&src.join("x/whole"), 4096, 2);
        let dst = tmp.path().join("dst");
        // What a killed run leaves: its staged x, 0700, with one file cut off (half its
        // bytes, its mtime the moment of the kill) and one complete (times already set).
        let staged = dst.join(format!("{TMP_PREFIX}99999999.0.x"));
        fs::create_dir_all(&staged).unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o700)).unwrap();
        let data = fs::read(src.join("x/cut")).unwrap();
        fs::write(staged.join("cut"), &data[..data.len() / 2]).unwrap();
        fs::copy(src.join("x/whole"), staged.join("whole")).unwrap();
        let m = fs::metadata(src.join("x/whole")).unwrap();
        set_times(
            &staged.join("whole"),
            Ts(m.atime(), m.atime_nsec()),
            Ts(m.mtime(), m.mtime_nsec()),
        );
        let whole_ino = fs::metadata(staged.join("whole")).unwrap().ino();
        let run = treecopy(args!["-v", flag, &src, &dst]);
        run.assert_code(0);
        assert!(run.stderr.contains("resuming"), "{flag}: {}", run.stderr);
        compare_trees(&src, &dst);
        assert_no_temp_files(&dst);
        assert_eq!(
            fs::metadata(dst.join("x/whole")).unwrap().ino(),
            whole_ino,
            "{flag}"
        );
    }
}

/// A hard-linked pair whose copy was changed in place: the real run writes one name anew and
/// relinks the other, and --dry-run says so too (it used to list only the rewrite, since the
/// names were still linked to each other in the untouched destination).
#[test]
fn dry_run_lists_the_relinks_of_a_rewritten_hard_link_group() {
    let (_tmp, src, dst) = src_dst();
    put(&src, "a", b"a\n");
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    treecopy(args!["-q", &src, &dst]).assert_code(0);
    fs::write(dst.join("a"), b"changed\n").unwrap();
    let dry = treecopy(args!["-n", "-i", "-j1", &src, &dst]);
    dry.assert_code(0);
    let real = treecopy(args!["-i", "-j1", &src, &dst]);
    real.assert_code(0);
    let kinds = |run: &Run| -> BTreeSet<String> {
        itemized(run).iter().map(|l| l[..2].to_string()).collect()
    };
    assert_eq!(kinds(&real), set_of(">f|hf"), "{:?}", itemized(&real));
    assert_eq!(kinds(&dry), kinds(&real), "dry {:?}", itemized(&dry));
    compare_trees(&src, &dst);
}

/// `run`'s itemized lines of hard links and file copies.
fn file_lines(run: &Run) -> BTreeSet<String> {
    itemized(run)
        .into_iter()
        .filter(|l| l.starts_with("hf") || l.starts_with(">f"))
        .collect()
}

/// The names of `run`'s itemized lines of hard links and file copies, with their kind (`hf` or
/// `>f`), without the first name a link points to (which name of an up-to-date group the walk
/// reached first).
fn linked_and_copied(run: &Run) -> BTreeSet<String> {
    itemized(run)
        .into_iter()
        .filter(|l| l.starts_with("hf") || l.starts_with(">f"))
        .map(|l| match l.split_once(" => ") {
            Some((line, _)) => line.to_string(),
            None => l,
        })
        .collect()
}

/// A hard-link group already in DST that gains names, some in a new directory the walk may
/// reach first: the new names are linked to the copy DST has, never copied again, with or
/// without -c, and --dry-run lists the same. (A new name reached before the group's others
/// used to be copied anew, and the others relinked to it.)
#[test]
fn new_names_of_an_up_to_date_hard_link_group_are_linked_not_copied() {
    for flags in [&[][..], &["-c"][..]] {
        let (_tmp, src, dst) = src_dst();
        fs::create_dir_all(src.join("old/c")).unwrap();
        for i in 0..20 {
            put(&src, &format!("old/b/{i}"), format!("{i}\n").as_bytes());
            fs::hard_link(
                src.join(format!("old/b/{i}")),
                src.join(format!("old/c/{i}")),
            )
            .unwrap();
        }
        let run = |first: &[&str]| {
            let mut args: Vec<OsString> = first.iter().chain(flags).map(OsString::from).collect();
            args.extend([src.clone().into_os_string(), dst.clone().into_os_string()]);
            treecopy(args)
        };
        treecopy(args!["-q", &src, &dst]).assert_code(0);
        let inode = |rel: String| fs::symlink_metadata(dst.join(rel)).unwrap().ino();
        let before: Vec<u64> = (0..20).map(|i| inode(format!("old/b/{i}"))).collect();
        fs::create_dir(src.join("a")).unwrap();
        for i in 0..20 {
            fs::hard_link(src.join(format!("old/b/{i}")), src.join(format!("a/{i}"))).unwrap();
            fs::hard_link(
                src.join(format!("old/b/{i}")),
                src.join(format!("old/new{i}")),
            )
            .unwrap();
        }
        let want: BTreeSet<String> = (0..20)
            .flat_map(|i| {
                [
                    format!("hf+++++++++ a/{i}"),
                    format!("hf+++++++++ old/new{i}"),
                ]
            })
            .collect();
        let dry = run(&["-n", "-i"]);
        dry.assert_code(0);
        assert_eq!(linked_and_copied(&dry), want, "{flags:?} dry run");
        let real = run(&["-i"]);
        real.assert_code(0);
        assert_eq!(linked_and_copied(&real), want, "{flags:?}");
        assert_eq!(summary_fields(&real).unwrap()["bytes"], "0", "{flags:?}");
        for (i, ino) in before.iter().enumerate() {
            for rel in [format!("old/b/{i}"), format!("old/c/{i}"), format!("a/{i}")] {
                assert_eq!(inode(rel.clone()), *ino, "{flags:?} {rel}");
            }
            assert_eq!(inode(format!("old/new{i}")), *ino, "{flags:?}");
        }
        compare_trees(&src, &dst);
    }
}

/// A group whose names are all new to an existing DST is copied once, under the name first in
/// path order, and linked under the others; --dry-run lists exactly the same lines, whatever
/// order either run's walk reached the names in. Names whose group has links outside SRC are
/// decided at the end of the walk, the same way.
#[test]
fn a_hard_link_group_new_to_an_existing_destination_is_listed_alike_by_a_dry_run() {
    let (tmp, src, dst) = src_dst();
    fs::create_dir_all(&dst).unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    for i in 0..20 {
        put(&src, &format!("x/{i}"), format!("{i}\n").as_bytes());
        fs::create_dir_all(src.join("w")).unwrap();
        fs::hard_link(src.join(format!("x/{i}")), src.join(format!("w/{i}"))).unwrap();
        fs::hard_link(src.join(format!("x/{i}")), src.join(format!("x/{i}b"))).unwrap();
        if i % 2 == 0 {
            fs::hard_link(src.join(format!("x/{i}")), outside.join(format!("{i}"))).unwrap();
        }
    }
    let dry = treecopy(args!["-n", "-i", &src, &dst]);
    dry.assert_code(0);
    let real = treecopy(args!["-i", &src, &dst]);
    real.assert_code(0);
    let want: BTreeSet<String> = (0..20)
        .flat_map(|i| {
            [
                format!(">f+++++++++ w/{i}"),
                format!("hf+++++++++ x/{i} => w/{i}"),
                format!("hf+++++++++ x/{i}b => w/{i}"),
            ]
        })
        .collect();
    assert_eq!(file_lines(&real), want);
    assert_eq!(file_lines(&dry), want, "dry run");
    for i in 0..20 {
        let ino = fs::metadata(dst.join(format!("w/{i}"))).unwrap().ino();
        for rel in [format!("x/{i}"), format!("x/{i}b")] {
            assert_eq!(fs::metadata(dst.join(&rel)).unwrap().ino(), ino, "{rel}");
        }
    }
    compare_trees(&src, &dst);
}

/// Makes a file immutable (chattr +i) until dropped, so that even root cannot delete it.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Result<Immutable, String> {
        crate::util::sh("chattr", &["+i".as_ref(), path.as_os_str()])
            .map_err(|e| format!("this filesystem refuses chattr +i: {e}"))?;
        Ok(Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = crate::util::sh("chattr", &["-i".as_ref(), self.0.as_os_str()]);
    }
}

/// A deletion that fails (an immutable file) is an error, and neither itemized as
/// `*deleting` nor counted as deleted; its siblings are still deleted, and the directory
/// holding it is left (it used to be listed and counted as deleted, and the removal of its
/// directory stopped at it).
#[test]
fn a_failed_deletion_is_reported_and_not_counted_as_done() {
    require_root!();
    let (_tmp, src, dst) = src_dst();
    put(&src, "kept", b"k\n");
    treecopy(args!["-q", &src, &dst]).assert_code(0);
    put(&dst, "extra/stuck", b"x\n");
    put(&dst, "extra/free", b"y\n");
    put(&dst, "gone", b"z\n");
    let _stuck = skip_unless!(Immutable::set(&dst.join("extra/stuck")));
    let run = treecopy(args!["-i", "--delete", "--json", &src, &dst]);
    run.assert_code(1);
    let deletions: BTreeSet<String> = itemized(&run)
        .into_iter()
        .filter(|l| l.starts_with('*'))
        .collect();
    assert_eq!(
        deletions,
        set_of("*deleting   extra/free|*deleting   gone"),
        "{}",
        run.stderr
    );
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("extra/stuck") && errors[0].contains("Operation not permitted"),
        "{errors:?}"
    );
    assert_eq!(summary_fields(&run).unwrap()["deleted"], "2");
    assert!(dst.join("extra/stuck").exists() && !dst.join("gone").exists());
}

/// Temp entries named for a live process that is not a treecopy (the pid was reused: here
/// pid 1) are a dead run's leftovers: removed, or resumed, by the next run.
#[test]
fn leftovers_of_a_reused_pid_are_removed() {
    let comm = fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if comm.starts_with("treecopy") || comm.is_empty() {
        eprintln!("SKIPPED: pid 1 is {comm:?}");
        return;
    }
    let (_tmp, src, dst) = src_dst();
    put(&src, "sub/deeper/f", b"f\n");
    put(&src, "top", b"t\n");
    treecopy(args!["-q", &src, &dst]).assert_code(0);
    put(&dst, &format!("{TMP_PREFIX}1.5"), b"left by a killed run\n");
    let staged = dst.join(format!("sub/{TMP_PREFIX}1.7.gone"));
    fs::create_dir(&staged).unwrap();
    set_mode(&staged, 0o700);
    put(&staged, "partial", b"cut");
    let run = treecopy(args!["-i", &src, &dst]);
    run.assert_code(0);
    assert_no_temp_files(&dst);
    compare_trees(&src, &dst);
}

/// A dry run counts the names its own --delete (or a rewrite) would take from a destination
/// inode: a file whose hard-linked twin is deleted is then up to date, as the run finds it,
/// not listed for a rewrite (the run deletes the twin before it compares the file).
#[test]
fn dry_run_counts_the_links_its_deletions_and_rewrites_remove() {
    let (_tmp, src, dst) = src_dst();
    put(&src, "a", b"a\n");
    fs::hard_link(src.join("a"), src.join("a2")).unwrap();
    treecopy(args!["-q", &src, &dst]).assert_code(0);
    fs::remove_file(src.join("a2")).unwrap();
    let dry = treecopy(args!["-n", "-i", "--delete", &src, &dst]);
    dry.assert_code(0);
    let real = treecopy(args!["-i", "--delete", &src, &dst]);
    real.assert_code(0);
    let files = |run: &Run| -> BTreeSet<String> {
        itemized(run)
            .into_iter()
            .filter(|l| !l.starts_with(".d"))
            .collect()
    };
    assert_eq!(files(&real), set_of("*deleting   a2"));
    assert_eq!(files(&dry), files(&real), "dry run");
    compare_trees(&src, &dst);
}

/// A sparse file counts its data, not its size, in a dry run's bytes as in the run's (which
/// copies only the data): a 1 GiB file holding 4 MiB is 4 MiB either way.
#[test]
fn a_dry_run_counts_a_sparse_files_data_like_the_run() {
    let (_tmp, src, dst) = src_dst();
    fs::create_dir_all(&src).unwrap();
    let f = src.join("sparse");
    write_random_file(&f, 4 << 20, 0x5B);
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    if fs::metadata(&f).unwrap().blocks() * 512 >= 1 << 30 {
        eprintln!("SKIPPED: this filesystem keeps no holes");
        return;
    }
    let dry = treecopy(args!["-n", &src, &dst]);
    dry.assert_code(0);
    let real = treecopy(args![&src, &dst]);
    real.assert_code(0);
    assert_eq!(
        summary_fields(&real).unwrap()["bytes"],
        (4u64 << 20).to_string()
    );
    assert_eq!(
        summary_fields(&dry).unwrap()["bytes"],
        (4u64 << 20).to_string()
    );
    assert_eq!(summary_fields(&dry).unwrap()["rate"], "0.0MiB/s");
    compare_trees(&src, &dst);
}

/// A hard-link group whose names are all new is listed alike by a dry run and the run into
/// a new DST too: copied under its first name in path order, linked under the others.
#[test]
fn a_hard_link_group_copied_anew_is_listed_alike_by_a_dry_run() {
    for round in 0..3 {
        let (_tmp, src, dst) = src_dst();
        for i in 0..10 {
            put(&src, &format!("c/{i}"), format!("{i}\n").as_bytes());
            for d in ["a", "b"] {
                fs::create_dir_all(src.join(d)).unwrap();
                fs::hard_link(src.join(format!("c/{i}")), src.join(format!("{d}/{i}"))).unwrap();
            }
        }
        let dry = treecopy(args!["-n", "-i", &src, &dst]);
        dry.assert_code(0);
        let real = treecopy(args!["-i", &src, &dst]);
        real.assert_code(0);
        let want: BTreeSet<String> = (0..10)
            .flat_map(|i| {
                [
                    format!(">f+++++++++ a/{i}"),
                    format!("hf+++++++++ b/{i} => a/{i}"),
                    format!("hf+++++++++ c/{i} => a/{i}"),
                ]
            })
            .collect();
        assert_eq!(file_lines(&real), want, "round {round}");
        assert_eq!(file_lines(&dry), want, "round {round}: dry run");
        compare_trees(&src, &dst);
    }
}

/// With --ignore-existing (or -u and a newer copy), a name of a group that DST keeps as it is
/// is not a copy of the source: a name new to DST gets the source's data, not a link to it.
#[test]
fn a_new_name_is_not_linked_to_a_copy_kept_by_ignore_existing() {
    for flag in ["--ignore-existing", "-u"] {
        let (_tmp, src, dst) = src_dst();
        put(&src, "a/f", b"source data\n");
        set_times(&src.join("a/f"), OLD, OLD);
        fs::create_dir_all(src.join("b")).unwrap();
        fs::hard_link(src.join("a/f"), src.join("b/g")).unwrap();
        put(&dst, "a/f", b"kept, newer\n");
        let run = treecopy(args!["-i", flag, &src, &dst]);
        run.assert_code(0);
        assert_eq!(
            fs::read(dst.join("a/f")).unwrap(),
            b"kept, newer\n",
            "{flag}"
        );
        assert_eq!(
            fs::read(dst.join("b/g")).unwrap(),
            b"source data\n",
            "{flag}"
        );
        let again = treecopy(args!["-i", flag, &src, &dst]);
        again.assert_code(0);
        assert_eq!(
            again.stdout.trim(),
            "",
            "{flag}: the rerun changed something"
        );
    }
}

/// A hard-link group with a name on a filesystem mounted inside DST: that name gets a copy of
/// its own there (as cp -a gives it), a dry run says so, and a rerun converges. It used to
/// fail with EXDEV on every run.
#[test]
fn a_hard_link_across_a_mount_inside_the_destination_is_copied() {
    require_root!();
    let (_tmp, src, dst) = src_dst();
    put(&src, "a/f", b"group\n");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::hard_link(src.join("a/f"), src.join("sub/g")).unwrap();
    fs::create_dir_all(dst.join("sub")).unwrap();
    let _mount = skip_unless!(Mount::tmpfs(&dst.join("sub"), "1m"));
    let dry = treecopy(args!["-n", "-i", &src, &dst]);
    dry.assert_code(0);
    let run = treecopy(args!["-i", &src, &dst]);
    run.assert_code(0);
    assert_eq!(
        file_lines(&run),
        set_of(">f+++++++++ a/f|>f+++++++++ sub/g")
    );
    assert_eq!(file_lines(&dry), file_lines(&run), "dry run");
    assert_eq!(fs::read(dst.join("sub/g")).unwrap(), b"group\n");
    let again = treecopy(args!["-i", &src, &dst]);
    again.assert_code(0);
    assert!(file_lines(&again).is_empty(), "{:?}", itemized(&again));
}

/// A `.treecopy.lock` below DST's root is another run's lock (its DST is that directory):
/// --delete leaves it, and one in SRC is not copied (counted as excluded).
#[test]
fn lock_files_at_any_depth_are_neither_deleted_nor_copied() {
    let (_tmp, src, dst) = src_dst();
    put(&src, "sub/f", b"f\n");
    put(&src, "other/.treecopy.lock", b"12345\n");
    treecopy(args!["-q", &src, &dst]).assert_code(0);
    assert!(
        !dst.join("other/.treecopy.lock").exists(),
        "a lock file was copied"
    );
    put(&dst, "sub/.treecopy.lock", b"99999\n");
    let run = treecopy(args!["-i", "--delete", &src, &dst]);
    run.assert_code(0);
    assert!(
        dst.join("sub/.treecopy.lock").exists(),
        "another run's lock was deleted"
    );
    assert_eq!(summary_fields(&run).unwrap()["excluded"], "1");
}
