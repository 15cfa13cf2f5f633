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
pub fn random_ts(rng: &mut Rng) -> Ts {
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
            let temp = e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes());
            if ft.is_dir() {
                // A staged directory's contents are not under final paths.
                if !temp {
                    stack.push(r);
                }
            } else if ft.is_file() && !temp {
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

    /// Bind-mounts the directory `what` on `dir` (created if missing): the same filesystem,
    /// the same st_dev, another mount.
    pub fn bind(what: &Path, dir: &Path) -> Result<Mount, String> {
        if !is_root() {
            return Err("mounting needs root".into());
        }
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        sh(
            "mount",
            &["--bind".as_ref(), what.as_os_str(), dir.as_os_str()],
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
            loopdev: None,
        })
    }

    /// Mounts a ramfs on `dir`: a filesystem that refuses every extended attribute (and so
    /// every ACL) with EOPNOTSUPP. It has no size limit; keep what is written to it small.
    pub fn ramfs(dir: &Path) -> Result<Mount, String> {
        if !is_root() {
            return Err("mounting needs root".into());
        }
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        sh(
            "mount",
            &[
                "-t".as_ref(),
                "ramfs".as_ref(),
                "ramfs".as_ref(),
                dir.as_os_str(),
            ],
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
            loopdev: None,
        })
    }

    /// An XFS loop mount at `base`/`name`, its image beside it.
    pub fn xfs_in(base: &Path, name: &str, size: &str) -> Result<Mount, String> {
        Self::xfs_loop(&base.join(format!("{name}.img")), &base.join(name), size)
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

// ---------------------------------------------------------------------------------------------
// Exactness helpers: paths longer than PATH_MAX, extended attributes and POSIX ACLs, the rsync
// oracle, a second oracle that also compares xattrs and hard-link structure, extent maps, and
// running as an unprivileged user.

/// Longest path handed to the kernel as is; longer ones are reached through directory handles.
const SHORT_ENOUGH: usize = 3800;

/// A path that reaches ROOT/REL even when that is longer than PATH_MAX: the parent directory is
/// opened component by component (openat, O_PATH) and named through `/proc/self/fd/N`, which
/// the kernel resolves from the handle, not from a path. Valid while this value lives.
pub struct ShortPath {
    _parent: Option<std::os::fd::OwnedFd>,
    pub path: PathBuf,
}

pub fn short_path(root: &Path, rel: &Path) -> io::Result<ShortPath> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let full = root.join(rel);
    if full.as_os_str().len() < SHORT_ENOUGH {
        return Ok(ShortPath {
            _parent: None,
            path: full,
        });
    }
    let (Some(parent), Some(last)) = (rel.parent(), rel.file_name()) else {
        return Err(io::Error::other(
            "short_path needs a relative path with a name",
        ));
    };
    let open = |dir: libc::c_int, name: &OsStr| -> io::Result<OwnedFd> {
        let c = CString::new(name.as_bytes()).map_err(io::Error::other)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is NUL-terminated; a non-negative return is a descriptor we now own.
        let fd = unsafe { libc::openat(dir, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut dir = open(libc::AT_FDCWD, root.as_os_str())?;
    for comp in parent.components() {
        dir = open(dir.as_raw_fd(), comp.as_os_str())?;
    }
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(last);
    Ok(ShortPath {
        _parent: Some(dir),
        path,
    })
}

/// lstat of ROOT/REL however long the path.
pub fn lstat_deep(root: &Path, rel: &Path) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(&short_path(root, rel)?.path)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths hold no NUL")
}

/// Sets an extended attribute on `path` itself (never following a final symlink).
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let (c, n) = (cpath(path), CString::new(name).map_err(io::Error::other)?);
    // SAFETY: both strings are NUL-terminated; value points at value.len() readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every extended attribute of `path` itself (POSIX ACLs appear as system.posix_acl_*),
/// name -> value. A filesystem without xattr support has none.
pub fn xattrs(path: &Path) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = cpath(path);
    let mut out = std::collections::BTreeMap::new();
    // 64 KiB is XATTR_LIST_MAX and XATTR_SIZE_MAX: any list and any value fit.
    let mut list = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated and `list` has list.len() writable bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(out),
            _ => Err(e),
        };
    }
    list.truncate(n as usize);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above; `value` has value.len() writable bytes.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(m as usize);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

/// POSIX ACL entry tags, as the kernel's xattr representation numbers them.
pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

/// The value of system.posix_acl_access / system.posix_acl_default for the given
/// (tag, qualifier id, rwx bits) entries; setting it is what setfacl does, without needing it.
/// The id is ignored for the tags that have none.
pub fn posix_acl(entries: &[(u16, u32, u16)]) -> Vec<u8> {
    let mut sorted: Vec<(u16, u32, u16)> = entries
        .iter()
        .map(|&(tag, id, perm)| {
            let id = if tag == ACL_USER || tag == ACL_GROUP {
                id
            } else {
                u32::MAX
            };
            (tag, id, perm)
        })
        .collect();
    // The kernel accepts only entries ordered by tag, then qualifier.
    sorted.sort();
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, id, perm) in sorted {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Whether `program` can be run (`--version` or `-V` succeeds).
pub fn have(program: &str) -> bool {
    ["--version", "-V"].iter().any(|flag| {
        Command::new(program)
            .arg(flag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The exactness oracle: what `rsync -aHAX` would still change to make DST equal SRC, as
/// itemized lines (empty = exact). Compared: content by checksum, types, permissions, numeric
/// owners, mtimes with nanoseconds (--modify-window=-1) on everything but the root's own
/// atime, symlink targets, device numbers, hard-link structure, xattrs and ACLs; --delete lists
/// entries that exist only in DST. It only looks (-n). Err: rsync is not installed. Panics if
/// rsync itself fails. `exclude`s are rsync patterns (e.g. "/longpath" for a subtree rsync
/// cannot walk because its paths exceed PATH_MAX).
pub fn rsync_changes(src: &Path, dst: &Path, exclude: &[&str]) -> Result<String, String> {
    if !have("rsync") {
        return Err("rsync is not installed".into());
    }
    let mut cmd = Command::new("rsync");
    cmd.args([
        "-aHAXn",
        "--checksum",
        "--itemize-changes",
        "--numeric-ids",
        "--modify-window=-1",
        "--delete",
    ]);
    for e in exclude {
        cmd.arg(format!("--exclude={e}"));
    }
    let (mut s, mut d) = (src.as_os_str().to_owned(), dst.as_os_str().to_owned());
    s.push("/");
    d.push("/");
    cmd.arg(s).arg(d);
    let run = run_cmd(cmd, RUN_TIMEOUT);
    assert!(
        run.status.success(),
        "the rsync oracle failed ({}):\n{}",
        run.status,
        run.stderr
    );
    Ok(run.stdout)
}

/// The second oracle, for what rsync cannot reach (paths longer than PATH_MAX): walks SRC/REL
/// and DST/REL through directory handles and lists every difference in names, types,
/// permissions, owners, mtimes (ns), sizes and content, symlink targets, device numbers,
/// extended attributes (ACLs included) and hard-link structure (names sharing an inode in one
/// tree must share one in the other). The two directories' own metadata is compared too.
pub fn compare_exact(src: &Path, dst: &Path, rel: &Path) -> Vec<String> {
    let mut w = ExactWalk {
        src,
        dst,
        diffs: Vec::new(),
        inodes: std::collections::HashMap::new(),
        back: std::collections::HashMap::new(),
    };
    w.entry(rel);
    w.diffs
}

struct ExactWalk<'a> {
    src: &'a Path,
    dst: &'a Path,
    diffs: Vec<String>,
    /// SRC inode -> the DST inode its first name became, and the reverse.
    inodes: std::collections::HashMap<u64, (u64, PathBuf)>,
    back: std::collections::HashMap<u64, u64>,
}

impl ExactWalk<'_> {
    fn entry(&mut self, rel: &Path) {
        let r = rel.display().to_string();
        let (sp, dp) = match (short_path(self.src, rel), short_path(self.dst, rel)) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => return self.diffs.push(format!("{r}: cannot open: {e}")),
        };
        let (sm, dm) = match (
            fs::symlink_metadata(&sp.path),
            fs::symlink_metadata(&dp.path),
        ) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) => return self.diffs.push(format!("{r}: lstat in SRC: {e}")),
            (_, Err(e)) => return self.diffs.push(format!("{r}: missing in DST ({e})")),
        };
        let kind_s = sm.mode() & libc::S_IFMT;
        if kind_s != dm.mode() & libc::S_IFMT {
            return self.diffs.push(format!(
                "{r}: {} in SRC but {} in DST",
                kind(sm.mode()),
                kind(dm.mode())
            ));
        }
        let mut d = Vec::new();
        if sm.mode() & 0o7777 != dm.mode() & 0o7777 {
            d.push(format!(
                "mode {:04o} vs {:04o}",
                sm.mode() & 0o7777,
                dm.mode() & 0o7777
            ));
        }
        if (sm.uid(), sm.gid()) != (dm.uid(), dm.gid()) {
            d.push(format!(
                "owner {}:{} vs {}:{}",
                sm.uid(),
                sm.gid(),
                dm.uid(),
                dm.gid()
            ));
        }
        if (sm.mtime(), sm.mtime_nsec()) != (dm.mtime(), dm.mtime_nsec()) {
            d.push(format!(
                "mtime {}.{:09} vs {}.{:09}",
                sm.mtime(),
                sm.mtime_nsec(),
                dm.mtime(),
                dm.mtime_nsec()
            ));
        }
        match (xattrs(&sp.path), xattrs(&dp.path)) {
            (Ok(a), Ok(b)) if a != b => d.push(format!(
                "xattrs {:?} vs {:?}",
                a.keys()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>(),
                b.keys()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>()
            )),
            (Ok(_), Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) => d.push(format!("cannot read xattrs: {e}")),
        }
        if kind_s != libc::S_IFDIR && sm.nlink() > 1 {
            self.hard_link(rel, sm.ino(), dm.ino(), &mut d);
        } else if kind_s != libc::S_IFDIR && dm.nlink() != 1 {
            d.push(format!("{} names in DST, 1 in SRC", dm.nlink()));
        }
        match kind_s {
            libc::S_IFREG if sm.len() != dm.len() => {
                d.push(format!("size {} vs {}", sm.len(), dm.len()))
            }
            libc::S_IFREG => match first_difference(&sp.path, &dp.path) {
                Ok(None) => {}
                Ok(Some(off)) => d.push(format!("content differs at byte {off}")),
                Err(e) => d.push(format!("cannot compare content: {e}")),
            },
            libc::S_IFLNK => match (fs::read_link(&sp.path), fs::read_link(&dp.path)) {
                (Ok(a), Ok(b)) if a != b => d.push(format!("target {a:?} vs {b:?}")),
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => d.push(format!("readlink: {e}")),
            },
            libc::S_IFCHR | libc::S_IFBLK if sm.rdev() != dm.rdev() => d.push(format!(
                "device {} vs {}",
                dev_string(sm.rdev()),
                dev_string(dm.rdev())
            )),
            _ => {}
        }
        if !d.is_empty() {
            self.diffs.push(format!(
                "{r} ({}): {} [SRC vs DST]",
                kind(sm.mode()),
                d.join(", ")
            ));
        }
        if kind_s == libc::S_IFDIR {
            let (s, dn) = match (fs::read_dir(&sp.path), fs::read_dir(&dp.path)) {
                (Ok(s), Ok(dn)) => (s, dn),
                (Err(e), _) | (_, Err(e)) => {
                    return self.diffs.push(format!("{r}: cannot list: {e}"));
                }
            };
            let s: BTreeSet<OsString> = s.map(|e| e.unwrap().file_name()).collect();
            let dn: BTreeSet<OsString> = dn.map(|e| e.unwrap().file_name()).collect();
            drop((sp, dp));
            for extra in dn.difference(&s) {
                self.diffs
                    .push(format!("{}: only in DST", rel.join(extra).display()));
            }
            for name in s {
                self.entry(&rel.join(name));
            }
        }
    }

    /// Names of one SRC inode must be names of one DST inode, and of no other SRC inode's.
    fn hard_link(&mut self, rel: &Path, sino: u64, dino: u64, d: &mut Vec<String>) {
        match self.inodes.get(&sino) {
            Some((want, first)) if *want != dino => d.push(format!(
                "hard link to {} in SRC, a separate inode in DST",
                first.display()
            )),
            Some(_) => {}
            None => {
                if let Some(other) = self.back.insert(dino, sino)
                    && other != sino
                {
                    d.push("linked in DST to a name of another SRC inode".into());
                }
                self.inodes.insert(sino, (dino, rel.to_path_buf()));
            }
        }
    }
}

/// One extent of a file as FIEMAP reports it.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    pub logical: u64,
    pub length: u64,
    pub flags: u32,
}

/// The extent carries data shared with another file (a reflink / clone).
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// The extent map of `path`, after flushing its dirty data (FIEMAP_FLAG_SYNC) so delayed
/// allocations have real extents.
pub fn fiemap(path: &Path) -> io::Result<Vec<Extent>> {
    use std::os::fd::AsRawFd;
    // struct fiemap (32 bytes) followed by struct fiemap_extent (56 bytes each).
    const HEAD: usize = 32;
    const EXT: usize = 56;
    const BATCH: usize = 256;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_LAST: u32 = 1;
    let f = File::open(path)?;
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        // u64 words keep the buffer aligned for the kernel's u64 fields.
        let mut buf = vec![0u64; (HEAD + EXT * BATCH) / 8];
        {
            let b: &mut [u8] =
                // SAFETY: reinterpreting initialised u64s as bytes of the same total length.
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() * 8) };
            b[0..8].copy_from_slice(&start.to_ne_bytes());
            b[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
            b[16..20].copy_from_slice(&FIEMAP_FLAG_SYNC.to_ne_bytes());
            b[24..28].copy_from_slice(&(BATCH as u32).to_ne_bytes());
        }
        // SAFETY: the buffer holds a struct fiemap with room for BATCH extents, as declared.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, buf.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let b: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len() * 8) };
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        let mapped = u32_at(20) as usize;
        if mapped == 0 {
            return Ok(out);
        }
        let mut last = false;
        for i in 0..mapped {
            let o = HEAD + i * EXT;
            let e = Extent {
                logical: u64_at(o),
                length: u64_at(o + 16),
                flags: u32_at(o + 40),
            };
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
            start = e.logical + e.length;
            out.push(e);
        }
        if last {
            return Ok(out);
        }
    }
}

/// Free bytes of the filesystem holding `path`, after flushing it (delayed allocation and
/// freed extents settle on writeback).
pub fn free_bytes(path: &Path) -> u64 {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on an open descriptor; fstatvfs fills the zeroed struct we pass.
    unsafe {
        libc::syncfs(f.as_raw_fd());
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::fstatvfs(f.as_raw_fd(), &mut st),
            0,
            "statvfs {}",
            path.display()
        );
        st.f_bfree as u64 * st.f_frsize as u64
    }
}

/// The unprivileged identity used by the permission tests (nobody/nogroup on Debian).
pub const NOBODY: u32 = 65534;

/// A `setpriv` command prefix that runs what follows as uid/gid 65534 with no supplementary
/// groups (and so with no capabilities).
pub fn as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    c
}

/// Err(why) unless uid 65534 can run the binary and read `readable` (a file of the fixture):
/// setpriv may be missing, or a parent directory may be closed to others.
pub fn nobody_can_run(readable: &Path) -> Result<(), String> {
    let mut read = as_nobody();
    read.arg("cat").arg(readable);
    let mut run = as_nobody();
    run.arg(bin()).arg("--version");
    for (what, cmd) in [("read the source", read), ("run the binary", run)] {
        let r = run_cmd(cmd, RUN_TIMEOUT);
        if !r.status.success() {
            return Err(format!(
                "cannot {what} as uid 65534 via setpriv ({}): {}",
                r.status,
                r.stderr.trim()
            ));
        }
    }
    Ok(())
}

/// The `treecopy: summary ...` line's `key=value` fields.
pub fn summary_fields(run: &Run) -> Option<std::collections::BTreeMap<String, String>> {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("treecopy: summary "))?;
    Some(
        line["treecopy: summary ".len()..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A tree of `dirs` directories `dNN` of `per_dir` files `fNNN`, each holding its own relative
/// path, whose upper half a producer deletes during a copy: the rotating tree of a nightly job.
pub struct RotatingTree {
    pub dirs: usize,
    pub per_dir: usize,
}

impl RotatingTree {
    pub fn create(&self, root: &Path) {
        for d in 0..self.dirs {
            let dir = root.join(format!("d{d:02}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..self.per_dir {
                fs::write(dir.join(format!("f{f:03}")), format!("d{d:02}/f{f:03}")).unwrap();
            }
        }
    }

    /// Deletes the upper half from `root`, one directory every `step` after `start`.
    pub fn rotate(&self, root: &Path, start: Duration, step: Duration) -> thread::JoinHandle<()> {
        let (root, dirs) = (root.to_path_buf(), self.dirs);
        thread::spawn(move || {
            thread::sleep(start);
            for d in (dirs / 2..dirs).rev() {
                thread::sleep(step);
                fs::remove_dir_all(root.join(format!("d{d:02}"))).unwrap();
            }
        })
    }

    /// Whatever the timing: no error, exit 0 or 24 (24 exactly when something vanished), every
    /// warning a counted vanished entry, every copied file its own content, the untouched
    /// directories whole, no temp entry.
    pub fn check_copy(&self, run: &Run, dst: &Path) {
        assert!(
            matches!(run.code(), Some(0 | 24)),
            "exit {:?}: {}",
            run.code(),
            run.stderr
        );
        assert!(run.error_lines().is_empty(), "{}", run.stderr);
        let warnings = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("treecopy: warning: vanished: "))
            .count();
        let fields = summary_fields(run).expect("a summary line");
        assert_eq!(fields["vanished"], warnings.to_string(), "{}", run.stderr);
        assert_eq!(fields["failed"], "0");
        assert_eq!(run.code() == Some(24), warnings > 0, "{}", run.stderr);
        for d in 0..self.dirs {
            let dir = dst.join(format!("d{d:02}"));
            let Ok(names) = fs::read_dir(&dir) else {
                assert!(d >= self.dirs / 2, "{} was not copied", dir.display());
                continue;
            };
            let mut count = 0;
            for name in names {
                let path = name.unwrap().path();
                let rel = format!("d{d:02}/{}", path.file_name().unwrap().to_string_lossy());
                assert_eq!(fs::read_to_string(&path).unwrap(), rel);
                count += 1;
            }
            if d < self.dirs / 2 {
                assert_eq!(count, self.per_dir, "{}", dir.display());
            }
        }
        assert_no_temp_files(dst);
    }
}
