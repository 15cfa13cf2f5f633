//! Shared fixture: running the real binary with a timeout, a seeded random tree generator, the
//! tree oracle (`compare_trees`), temp-file checks and mount guards that always unmount.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Every file is written under a name with this prefix before being renamed (contract).
pub const TMP_PREFIX: &str = ".treecopy-tmp.";

/// Default time limit for one run of the binary; a hang fails the test instead of the suite.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_treecopy")
}

/// Builds an argument vector from anything path- or string-like, e.g. `args!["-j1", &src, &dst]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(::std::ffi::OsStr::new(&$a).to_os_string()),*]
    };
}

/// Skips the current test (prints why on stderr) unless the expression is `Ok`.
#[macro_export]
macro_rules! skip_unless {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        }
    };
}

/// Skips the current test unless running as root (the fixture chowns and reads 0000 dirs).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::util::is_root() {
            eprintln!("SKIPPED: needs root (fixture uses chown and 0000 directories)");
            return;
        }
    };
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The outcome of one run of the binary.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn assert_code(&self, want: i32) {
        assert_eq!(
            self.status.code(),
            Some(want),
            "unexpected exit status {:?} (want {want})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Contract: every stderr line starts with `treecopy: ` (not applied to clap usage errors).
    #[track_caller]
    pub fn assert_stderr_prefixed(&self) {
        for line in self.stderr.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.starts_with("treecopy: "),
                "stderr line lacks the `treecopy: ` prefix: {line:?}\n--- stderr ---\n{}",
                self.stderr
            );
        }
    }

    /// The stderr lines that report an error.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("treecopy: error"))
            .collect()
    }
}

/// Runs the binary with `args` and waits (bounded by `RUN_TIMEOUT`).
pub fn treecopy(args: Vec<OsString>) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_cmd(cmd, RUN_TIMEOUT)
}

/// Runs any command with stdin closed, capturing both streams; kills it and panics on timeout.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let (out, err) = drain(&mut child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr so far:\n{err}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

type Reader = thread::JoinHandle<Vec<u8>>;

/// Reads a child's piped stdout and stderr on threads so a chatty child never blocks on a full pipe.
pub fn drain(child: &mut Child) -> (Reader, Reader) {
    fn reader(mut r: impl Read + Send + 'static) -> Reader {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let out = child.stdout.take().expect("stdout piped");
    let err = child.stderr.take().expect("stderr piped");
    (reader(out), reader(err))
}

/// A small, seedable PRNG (splitmix64) so every generated tree is reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A timestamp as (seconds, nanoseconds), the resolution `utimensat` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ts(pub i64, pub i64);

/// What the generator set that the oracle cannot re-derive from the source afterwards: the
/// source's atimes change when anything (the copier, the oracle) reads it under `relatime`.
pub struct Manifest {
    /// (relative path, atime) for every entry below the root.
    pub atimes: Vec<(PathBuf, Ts)>,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub bytes: u64,
}

/// Sets atime and mtime of `path` itself (never following a symlink).
pub fn set_times(path: &Path, atime: Ts, mtime: Ts) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `ts` points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        panic!(
            "utimensat {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// Writes `len` pseudo-random bytes derived from `seed` (fast enough for a few MiB).
pub fn write_random_file(path: &Path, len: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    fs::write(path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes a large, fully allocated (non-sparse) file quickly: one random MiB repeated, each
/// copy stamped with its index so a misplaced or repeated chunk is detectable.
pub fn write_big_file(path: &Path, len: u64, seed: u64) {
    const CHUNK: usize = 1 << 20;
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; CHUNK];
    rng.fill(&mut buf);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut left = len;
    let mut i: u64 = 0;
    while left > 0 {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&buf[..n]).expect("write big file");
        left -= n as u64;
        i += 1;
    }
}

/// Byte offset of the first difference between two files, or None when they are identical.
pub fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        // Slice equality is a memcmp: fast even in debug builds; locate the byte only on mismatch.
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
            return Ok(Some(off + i.unwrap() as u64));
        }
        if na != nb {
            return Ok(Some(off + na.min(nb) as u64));
        }
        if na == 0 {
            // Sizes differing without differing bytes would be a file changing under us.
            return Ok(if la == lb { None } else { Some(la.min(lb)) });
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Knobs of the random tree; `Default` is the "seeded tree" the basic tests copy.
#[derive(Clone)]
pub struct TreeSpec {
    pub dirs: usize,
    pub files: usize,
    pub symlinks: usize,
    pub max_depth: usize,
    /// How many ~3 MiB files to include.
    pub big_files: usize,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            dirs: 24,
            files: 140,
            symlinks: 20,
            max_depth: 5,
            big_files: 2,
        }
    }
}

/// Generates the default seeded tree under `root` (created if missing).
pub fn gen_tree(root: &Path, seed: u64) -> Manifest {
    gen_tree_with(root, seed, &TreeSpec::default())
}

/// Generates a random tree under `root`: nested dirs, files of varied sizes (0 B, 4096 B,
/// small, medium, ~3 MiB), symlinks of every flavour, varied owners and odd modes (0500 and 0000
/// dirs that contain things, setuid/setgid/sticky bits), and nanosecond timestamps (some before
/// 1970, some after 2038) applied after everything is populated so nothing bumps them later.
/// Needs root for chown (skipped otherwise).
pub fn gen_tree_with(root: &Path, seed: u64, spec: &TreeSpec) -> Manifest {
    let mut rng = Rng::new(seed);
    fs::create_dir_all(root).unwrap();
    let root_is_root = is_root();

    // (relative path, depth). Fixed dirs first: restrictive ones that must contain entries, so
    // a copier that applies their mode before filling them fails.
    let mut dirs: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    for fixed in ["ro_dir", "locked_dir", "locked_dir/inner", "setgid_dir"] {
        fs::create_dir(root.join(fixed)).unwrap();
        dirs.push((PathBuf::from(fixed), fixed.matches('/').count() + 1));
    }
    for i in 0..spec.dirs {
        let parents: Vec<&(PathBuf, usize)> =
            dirs.iter().filter(|(_, d)| *d < spec.max_depth).collect();
        let (parent, depth) = (*rng.pick(&parents)).clone();
        let rel = parent.join(format!("d{i}_{:x}", rng.below(0x1000)));
        fs::create_dir(root.join(&rel)).unwrap();
        dirs.push((rel, depth + 1));
    }

    let mut files: Vec<PathBuf> = Vec::new();
    let mut bytes = 0u64;
    let mut big_left = spec.big_files;
    for i in 0..spec.files {
        // The first entries go into the fixed dirs; the rest anywhere.
        let dir = match i {
            0 => PathBuf::from("ro_dir"),
            1 => PathBuf::from("locked_dir"),
            2 => PathBuf::from("locked_dir/inner"),
            3 => PathBuf::from("setgid_dir"),
            _ => rng.pick(&dirs).0.clone(),
        };
        let len: usize = if i % 10 == 4 {
            0
        } else if i % 10 == 5 {
            4096
        } else if big_left > 0 && i >= 6 {
            big_left -= 1;
            3 * 1024 * 1024 + rng.below(8192) as usize
        } else if rng.percent(80) {
            rng.range(1, 4000) as usize
        } else {
            rng.range(4097, 300_000) as usize
        };
        let rel = dir.join(format!("f{i}.{}", rng.pick(&["txt", "bin", "dat", "log"])));
        write_random_file(&root.join(&rel), len, seed ^ ((i as u64 + 1) * 0x1234_5678));
        bytes += len as u64;
        files.push(rel);
    }

    let mut links: Vec<PathBuf> = Vec::new();
    for i in 0..spec.symlinks {
        let (dir, depth) = rng.pick(&dirs).clone();
        let up = "../".repeat(depth);
        let target: OsString = match i % 5 {
            // relative, to a file somewhere in the tree
            0 => format!("{up}{}", rng.pick(&files).display()).into(),
            // absolute, into the source tree (bytes must be kept, not rewritten)
            1 => root.join(rng.pick(&files)).into_os_string(),
            // dangling
            2 => format!("no/such/target_{i}").into(),
            // to a directory (relative)
            3 => format!("{up}{}", rng.pick(&dirs).0.display()).into(),
            // odd bytes: not UTF-8, with spaces
            _ => OsStr::from_bytes(b"weird \xff\xfe target").to_os_string(),
        };
        let rel = dir.join(format!("l{i}"));
        symlink(&target, root.join(&rel)).unwrap();
        links.push(rel);
    }

    // Owners first: chown clears setuid/setgid, so modes must come after it.
    const OWNERS: [(u32, u32); 4] = [(1000, 1000), (65534, 65534), (12345, 54321), (0, 1000)];
    if root_is_root {
        for rel in files
            .iter()
            .chain(&links)
            .chain(dirs.iter().skip(1).map(|(p, _)| p))
        {
            if rng.percent(30) {
                let (u, g) = *rng.pick(&OWNERS);
                lchown(root.join(rel), Some(u), Some(g)).unwrap();
            }
        }
    }

    let mut atimes = Vec::new();
    const FILE_MODES: [u32; 9] = [
        0o644, 0o600, 0o755, 0o444, 0o700, 0o640, 0o4755, 0o2750, 0o000,
    ];
    for (i, rel) in files.iter().enumerate() {
        let p = root.join(rel);
        let mode = if i == 3 {
            0o4755
        } else {
            *rng.pick(&FILE_MODES)
        };
        set_mode(&p, mode);
        let a = random_ts(&mut rng);
        let m = match i {
            // before the epoch, with nanoseconds: catches sign/nsec handling bugs
            7 => Ts(-1_000_000_123, 123_456_789),
            // past 2038, catches 32-bit time_t truncation
            8 => Ts(4_000_000_000, 999_999_999),
            9 => Ts(1_600_000_000, 0),
            _ => random_ts(&mut rng),
        };
        set_times(&p, a, m);
        atimes.push((rel.clone(), a));
    }
    for rel in &links {
        let a = random_ts(&mut rng);
        let m = random_ts(&mut rng);
        set_times(&root.join(rel), a, m);
        atimes.push((rel.clone(), a));
    }
    // Directories last and deepest first, so no later creation, chmod or utimensat inside a
    // directory changes its mtime after we set it.
    let mut by_depth: Vec<&(PathBuf, usize)> = dirs.iter().skip(1).collect();
    by_depth.sort_by_key(|(p, d)| (std::cmp::Reverse(*d), p.clone()));
    const DIR_MODES: [u32; 6] = [0o755, 0o700, 0o750, 0o2775, 0o1777, 0o500];
    for (rel, _) in by_depth {
        let mode = match rel.to_str() {
            Some("ro_dir") => 0o500,
            Some("locked_dir") => 0o000,
            Some("locked_dir/inner") => 0o000,
            Some("setgid_dir") => 0o2755,
            _ => *rng.pick(&DIR_MODES),
        };
        let p = root.join(rel);
        set_mode(&p, mode);
        let a = random_ts(&mut rng);
        let m = random_ts(&mut rng);
        set_times(&p, a, m);
        atimes.push((rel.clone(), a));
    }
    Manifest {
        atimes,
        files: files.len(),
        dirs: dirs.len() - 1,
        symlinks: links.len(),
        bytes,
    }
}

/// A past timestamp (2001..2023) with random nanoseconds; over 24 h old, so `relatime` will bump
/// the source's atime when the copier reads it (the copy must carry the original).
fn random_ts(rng: &mut Rng) -> Ts {
    Ts(
        rng.range(1_000_000_000, 1_700_000_000) as i64,
        rng.below(1_000_000_000) as i64,
    )
}

/// File-type bits of a mode, as a readable word for messages.
fn kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "char device",
        libc::S_IFBLK => "block device",
        _ => "unknown",
    }
}

fn names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect()
}

/// The tree oracle: walks both trees with lstat (never following symlinks) and asserts the same
/// names, types, contents, permission bits (incl. setuid/setgid/sticky), mtimes with nanoseconds
/// (files, dirs, symlinks), symlink targets and owners. The roots' own metadata is not compared
/// (the contract only says DST receives SRC's *contents*). Panics listing every differing path.
#[track_caller]
pub fn compare_trees(src: &Path, dst: &Path) {
    let mut diffs = Vec::new();
    compare_dir(src, dst, Path::new(""), &mut diffs);
    if !diffs.is_empty() {
        let shown: Vec<&String> = diffs.iter().take(40).collect();
        panic!(
            "{} differs from {} in {} place(s):\n  {}",
            dst.display(),
            src.display(),
            diffs.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

fn compare_dir(src_root: &Path, dst_root: &Path, rel: &Path, diffs: &mut Vec<String>) {
    let (s, d) = (names(&src_root.join(rel)), names(&dst_root.join(rel)));
    for missing in s.difference(&d) {
        diffs.push(format!("{}: missing in DST", rel.join(missing).display()));
    }
    for extra in d.difference(&s) {
        diffs.push(format!(
            "{}: in DST but not in SRC",
            rel.join(extra).display()
        ));
    }
    for name in s.intersection(&d) {
        compare_entry(src_root, dst_root, &rel.join(name), diffs);
    }
}

fn compare_entry(src_root: &Path, dst_root: &Path, rel: &Path, diffs: &mut Vec<String>) {
    let (sp, dp) = (src_root.join(rel), dst_root.join(rel));
    let sm = fs::symlink_metadata(&sp).unwrap();
    let dm = fs::symlink_metadata(&dp).unwrap();
    let r = rel.display();
    if sm.mode() & libc::S_IFMT != dm.mode() & libc::S_IFMT {
        diffs.push(format!(
            "{r}: type {} in SRC but {} in DST",
            kind(sm.mode()),
            kind(dm.mode())
        ));
        return;
    }
    // Symlink permission bits are meaningless on Linux (always 0777), compare anyway: cheap.
    if sm.mode() & 0o7777 != dm.mode() & 0o7777 {
        diffs.push(format!(
            "{r}: mode {:04o} in SRC but {:04o} in DST",
            sm.mode() & 0o7777,
            dm.mode() & 0o7777
        ));
    }
    if (sm.mtime(), sm.mtime_nsec()) != (dm.mtime(), dm.mtime_nsec()) {
        diffs.push(format!(
            "{r}: {} mtime {}.{:09} in SRC but {}.{:09} in DST",
            kind(sm.mode()),
            sm.mtime(),
            sm.mtime_nsec(),
            dm.mtime(),
            dm.mtime_nsec()
        ));
    }
    if (sm.uid(), sm.gid()) != (dm.uid(), dm.gid()) {
        diffs.push(format!(
            "{r}: owner {}:{} in SRC but {}:{} in DST",
            sm.uid(),
            sm.gid(),
            dm.uid(),
            dm.gid()
        ));
    }
    match sm.mode() & libc::S_IFMT {
        libc::S_IFREG => {
            if sm.len() != dm.len() {
                diffs.push(format!(
                    "{r}: size {} in SRC but {} in DST",
                    sm.len(),
                    dm.len()
                ));
            } else {
                match first_difference(&sp, &dp) {
                    Ok(None) => {}
                    Ok(Some(off)) => diffs.push(format!("{r}: content differs at byte {off}")),
                    Err(e) => diffs.push(format!("{r}: cannot compare content: {e}")),
                }
            }
        }
        libc::S_IFLNK => {
            let (st, dt) = (fs::read_link(&sp).unwrap(), fs::read_link(&dp).unwrap());
            if st != dt {
                diffs.push(format!(
                    "{r}: symlink target {st:?} in SRC but {dt:?} in DST"
                ));
            }
        }
        libc::S_IFDIR => compare_dir(src_root, dst_root, rel, diffs),
        _ => {}
    }
}

/// Checks DST's atimes against what the generator set. Uses lstat by path only (no readdir,
/// no reads) so the check itself does not bump any atime; call it before `compare_trees`.
#[track_caller]
pub fn assert_atimes(dst: &Path, manifest: &Manifest) {
    let mut diffs = Vec::new();
    for (rel, want) in &manifest.atimes {
        match fs::symlink_metadata(dst.join(rel)) {
            Ok(m) => {
                let got = Ts(m.atime(), m.atime_nsec());
                if got != *want {
                    diffs.push(format!(
                        "{} ({}): atime {}.{:09} want {}.{:09}",
                        rel.display(),
                        kind(m.mode()),
                        got.0,
                        got.1,
                        want.0,
                        want.1
                    ));
                }
            }
            Err(e) => diffs.push(format!("{}: {e}", rel.display())),
        }
    }
    assert!(
        diffs.is_empty(),
        "{} atime(s) not preserved:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

/// Every path below `root` (not following symlinks) whose name starts with `.treecopy-tmp.`.
pub fn find_temp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                found.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    found
}

#[track_caller]
pub fn assert_no_temp_files(root: &Path) {
    let left = find_temp_files(root);
    assert!(left.is_empty(), "temp files left behind: {left:#?}");
}

/// Every regular file below `dst` (under its final name) must equal its counterpart in `src`:
/// after a failure or an interruption files are either complete or absent. Returns how many
/// complete files were found.
#[track_caller]
pub fn assert_present_files_complete(src: &Path, dst: &Path) -> usize {
    let mut complete = 0;
    let mut bad = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(dst.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() && !e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                match first_difference(&src.join(&r), &dst.join(&r)) {
                    Ok(None) => complete += 1,
                    Ok(Some(off)) => bad.push(format!(
                        "{}: differs from source at byte {off} (size {} vs source {})",
                        r.display(),
                        fs::metadata(dst.join(&r)).map(|m| m.len()).unwrap_or(0),
                        fs::metadata(src.join(&r)).map(|m| m.len()).unwrap_or(0)
                    )),
                    Err(e) => bad.push(format!("{}: {e}", r.display())),
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "files under their final name in DST are incomplete:\n  {}",
        bad.join("\n  ")
    );
    complete
}

/// Device number as `major:minor` (glibc's encoding of dev_t), as the verbose log prints it.
pub fn dev_string(dev: u64) -> String {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff);
    format!("{major}:{minor}")
}

/// Runs a helper command, returning Err(description) when it is missing or fails.
pub fn sh(program: &str, args: &[&OsStr]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A mount made by a test. Drop unmounts it (lazily if busy) and detaches its loop device, also
/// when the test panics. Declare it after the TempDir holding the mount point so it drops first.
pub struct Mount {
    pub dir: PathBuf,
    loopdev: Option<String>,
}

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "2m") on `dir` (created if missing).
    pub fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        if !is_root() {
            return Err("mounting needs root".into());
        }
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let opt = format!("size={size}");
        sh(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                opt.as_ref(),
                "tmpfs".as_ref(),
                dir.as_os_str(),
            ],
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
            loopdev: None,
        })
    }

    /// Creates a sparse image `img` of `size` (e.g. "300M"), makes an XFS on it and loop-mounts it
    /// on `dir`. Err says why it is unavailable (no root, no mkfs.xfs, no loop devices...).
    pub fn xfs_loop(img: &Path, dir: &Path, size: &str) -> Result<Mount, String> {
        Self::loop_fs(img, dir, size, "mkfs.xfs", &["-q"])
    }

    /// Like `xfs_loop` with btrfs (at least ~120 MiB).
    pub fn btrfs_loop(img: &Path, dir: &Path, size: &str) -> Result<Mount, String> {
        Self::loop_fs(img, dir, size, "mkfs.btrfs", &["-q"])
    }

    fn loop_fs(
        img: &Path,
        dir: &Path,
        size: &str,
        mkfs: &str,
        mkfs_args: &[&str],
    ) -> Result<Mount, String> {
        if !is_root() {
            return Err("loop mounting needs root".into());
        }
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        sh("truncate", &["-s".as_ref(), size.as_ref(), img.as_os_str()])?;
        let mut args: Vec<&OsStr> = mkfs_args.iter().map(OsStr::new).collect();
        args.push(img.as_os_str());
        sh(mkfs, &args)?;
        // losetup --find can race with a parallel test grabbing the same free device; retry.
        let mut last = String::new();
        let mut dev = None;
        for _ in 0..5 {
            match sh(
                "losetup",
                &["--find".as_ref(), "--show".as_ref(), img.as_os_str()],
            ) {
                Ok(d) => {
                    dev = Some(d);
                    break;
                }
                Err(e) => {
                    last = e;
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let dev = dev.ok_or(last)?;
        let mount = Mount {
            dir: dir.to_path_buf(),
            loopdev: Some(dev.clone()),
        };
        if let Err(e) = sh("mount", &[dev.as_ref(), dir.as_os_str()]) {
            // Nothing is mounted: detach here and skip Drop's unmount.
            let _ = sh("losetup", &["-d".as_ref(), dev.as_ref()]);
            std::mem::forget(mount);
            return Err(e);
        }
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if sh("umount", &[self.dir.as_os_str()]).is_err() {
            let _ = sh("umount", &["-l".as_ref(), self.dir.as_os_str()]);
        }
        if let Some(dev) = &self.loopdev {
            let _ = sh("losetup", &["-d".as_ref(), dev.as_ref()]);
        }
    }
}

/// A fresh directory on the given filesystem root (e.g. "/dev/shm"), removed on drop.
pub fn tempdir_in(base: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("treecopy-it-")
        .tempdir_in(base)
        .map_err(|e| format!("cannot create a temp dir in {base}: {e}"))
}

/// A TempDir on the default temp location (the disk, normally /tmp).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("treecopy-it-")
        .tempdir()
        .expect("tempdir")
}

pub fn dev_of(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .dev()
}
