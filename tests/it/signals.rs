//! Interruption and visibility: SIGINT/SIGTERM mid-copy exit with 128+signal and leave neither
//! temp files nor partial files (unfinished new directories stay staged for the next run); a concurrent reader never sees a final name with a partial size.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    TMP_PREFIX, Ts, assert_no_temp_files, assert_present_files_complete, bin, drain,
    find_temp_files, first_difference, set_mode, set_times, tempdir, write_big_file,
    write_random_file,
};

/// A copy of `src` to `dst` with the given -j, its output discarded.
fn spawn_quiet(jobs: &str, src: &Path, dst: &Path) -> std::process::Child {
    spawn_with(jobs, src, dst, Stdio::null)
}

/// A copy of `src` to `dst` with the given -j, its output piped (for `drain`).
fn spawn_piped(jobs: &str, src: &Path, dst: &Path) -> std::process::Child {
    spawn_with(jobs, src, dst, Stdio::piped)
}

fn spawn_with(jobs: &str, src: &Path, dst: &Path, out: fn() -> Stdio) -> std::process::Child {
    Command::new(bin())
        .args([jobs.as_ref(), src.as_os_str(), dst.as_os_str()])
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("spawn treecopy")
}

/// One big non-sparse file: a copy interrupted inside it must not leave it (or its temp file).
const BIG: u64 = 1 << 30;

/// Small files added per round: with -j1 each costs tens of microseconds (create, write, set
/// metadata, rename), which paces the copy where data alone goes at GiB/s from the page cache.
const SMALL_PER_ROUND: u64 = 8000;

/// Adds one round of small files (in 40 directories) to the source.
fn add_small_files(src: &Path, round: u64) {
    for i in 0..SMALL_PER_ROUND {
        let dir = src.join(format!("r{round}_d{:02}", i % 40));
        if i < 40 {
            fs::create_dir_all(&dir).unwrap();
        }
        write_random_file(&dir.join(format!("f{i:05}")), 1024, round * 1_000_000 + i);
    }
}

/// Starts a copy with `jobs` workers, sends `sig` after 300 ms while it is still running, and checks the exit
/// code and that DST holds only complete files and no temp files. If the copy finished within
/// 300 ms (a fast machine) the source grows and the attempt is repeated, a bounded number of times.
fn interrupt_mid_copy(sig: libc::c_int, jobs: &str, seed: u64) {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    write_big_file(&src.join("big.bin"), BIG, seed);
    for round in 0..4 {
        add_small_files(&src, round);
        let dst = tmp.path().join(format!("dst{round}"));
        let mut child = spawn_piped(&format!("-j{jobs}"), &src, &dst);
        let (_out, err) = drain(&mut child);
        thread::sleep(Duration::from_millis(300));
        if let Some(st) = child.try_wait().unwrap() {
            let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            eprintln!(
                "round {round}: copy finished ({st}) before the signal, growing the source\n{err}"
            );
            continue;
        }
        // SAFETY: plain kill(2) on our own, still running (not yet reaped) child.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("treecopy still running 60 s after signal {sig}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "after signal {sig}: status {status} (killed by signal: {:?}); want exit code {}\n{stderr}",
            status.signal(),
            128 + sig
        );
        // What may be left: new directories still staged, in the staged mode, for the next
        // run to resume (published, their contents would be taken as complete). No temp file.
        let left = find_temp_files(&dst);
        for path in &left {
            let meta = fs::symlink_metadata(path).unwrap();
            assert!(
                meta.is_dir() && meta.mode() & 0o7777 == 0o700,
                "{} left behind, not a staged directory (mode {:o})\n{stderr}",
                path.display(),
                meta.mode()
            );
            for entry in fs::read_dir(path).unwrap().flatten() {
                let name = entry.file_name();
                assert!(
                    !name.as_bytes().starts_with(TMP_PREFIX.as_bytes()),
                    "temp file {name:?} left in {}",
                    path.display()
                );
            }
        }
        // A directory under its final name got its metadata, even though the run stopped.
        let mut published = vec![dst.clone()];
        while let Some(dir) = published.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let name = entry.file_name();
                if !entry.file_type().unwrap().is_dir()
                    || name.as_bytes().starts_with(TMP_PREFIX.as_bytes())
                {
                    continue;
                }
                let rel = entry.path().strip_prefix(&dst).unwrap().to_path_buf();
                let want = fs::metadata(src.join(&rel)).unwrap().mode();
                let got = entry.metadata().unwrap().mode();
                assert_eq!(
                    got,
                    want,
                    "{} has mode {got:o}, its source {want:o}",
                    rel.display()
                );
                published.push(entry.path());
            }
        }
        let complete = assert_present_files_complete(&src, &dst);
        eprintln!(
            "interrupted with {complete} complete files in DST, {} directories staged",
            left.len()
        );
        let rerun = Command::new(bin())
            .args(["-q".as_ref(), src.as_os_str(), dst.as_os_str()])
            .status()
            .unwrap();
        assert!(rerun.success(), "the rerun after signal {sig}: {rerun}");
        assert_no_temp_files(&dst);
        crate::util::compare_trees(&src, &dst);
        return;
    }
    panic!("the copy always finished within 300 ms, even with a bigger source");
}

#[test]
fn sigint_mid_copy_exits_130_and_cleans_up() {
    interrupt_mid_copy(libc::SIGINT, "1", 0x1A7);
}

#[test]
fn sigterm_mid_copy_exits_143_and_cleans_up() {
    // Several workers, so several temp files may be open at once when the signal lands.
    interrupt_mid_copy(libc::SIGTERM, "4", 0x7E4);
}

/// The final name only appears by rename of a complete temp file, so a reader polling it sees
/// either nothing or the full size (with mode and mtime already set, as `--help` promises),
/// never a growing file; meanwhile a `.treecopy-tmp.` file exists beside it.
#[test]
fn concurrent_reader_never_sees_partial_final_file() {
    // 1 GiB at page-cache speed takes a few hundred ms: enough for thousands of polls.
    let tmp = tempdir();
    let src = tmp.path().join("big.bin");
    write_big_file(&src, BIG, 0xB16);
    // Distinctive metadata: it must already be in place when the final name appears.
    let (mode, mtime) = (0o640, Ts(1_234_567_890, 123_456_789));
    set_mode(&src, mode);
    set_times(&src, Ts(1_300_000_000, 5), mtime);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let dst = out.join("big-copy.bin");

    let mut child = spawn_quiet("-j1", &src, &dst);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut polls, mut saw_temp, mut saw_final) = (0u64, false, false);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        polls += 1;
        if let Ok(m) = fs::symlink_metadata(&dst) {
            saw_final = true;
            let seen = (m.len(), m.mode() & 0o7777, Ts(m.mtime(), m.mtime_nsec()));
            if seen != (BIG, mode, mtime) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "final name visible as (size, mode, mtime) {seen:?}, want {:?}, after {polls} polls",
                    (BIG, mode, mtime)
                );
            }
        }
        if !saw_temp && let Ok(rd) = fs::read_dir(&out) {
            saw_temp = rd
                .flatten()
                .any(|e| e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("copy of 1 GiB still running after 120 s");
        }
    };
    assert_eq!(status.code(), Some(0), "copy failed: {status}");
    assert_eq!(fs::metadata(&dst).unwrap().len(), BIG);
    assert!(polls > 10, "copy too quick to observe ({polls} polls)");
    assert!(
        saw_temp,
        "no `{TMP_PREFIX}` file seen beside the target during a {polls}-poll copy"
    );
    eprintln!("polled {polls} times; final name seen before exit: {saw_final}");
    assert_eq!(
        first_difference(&src, &dst).unwrap(),
        None,
        "copy differs from source"
    );
}

/// A new directory is filled under a temp name and appears under its final name only with
/// every file in it complete: a reader polling it sees nothing, or all of it.
#[test]
fn new_directory_appears_only_with_its_files_complete() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    let sub = src.join("fields");
    fs::create_dir_all(&sub).unwrap();
    write_big_file(&sub.join("big.bin"), BIG, 0xD1);
    for i in 0..20 {
        write_random_file(&sub.join(format!("small{i:02}")), 4096, i);
    }
    let dst = tmp.path().join("dst");
    let final_dir = dst.join("fields");
    let mut child = spawn_quiet("-j2", &src, &dst);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut polls, mut saw_staged) = (0u64, false);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        polls += 1;
        if let Ok(rd) = fs::read_dir(&final_dir) {
            let mut seen: Vec<(String, u64)> = rd
                .flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect();
            seen.sort();
            let complete = seen.len() == 21
                && seen
                    .iter()
                    .all(|(name, len)| *len == if name == "big.bin" { BIG } else { 4096 });
            if !complete {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} visible with {seen:?} after {polls} polls",
                    final_dir.display()
                );
            }
        }
        if !saw_staged && let Ok(rd) = fs::read_dir(&dst) {
            saw_staged = rd.flatten().any(|e| {
                e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes())
                    && e.file_type().is_ok_and(|t| t.is_dir())
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("copy of 1 GiB still running after 120 s");
        }
    };
    assert_eq!(status.code(), Some(0), "copy failed: {status}");
    assert!(polls > 10, "copy too quick to observe ({polls} polls)");
    assert!(
        saw_staged,
        "no staged `{TMP_PREFIX}` directory seen in {polls} polls"
    );
    assert_no_temp_files(&dst);
    assert_eq!(
        first_difference(&sub.join("big.bin"), &final_dir.join("big.bin")).unwrap(),
        None
    );
}

/// Copies `src` into a new, existing `dst` under `tmp` and, as soon as a staged directory
/// shows up there, runs `intrude` (which makes `dst/x` meanwhile). Tries up to three times,
/// since the copy may publish `x` before the intrusion can happen, and panics if it always
/// does. Returns the destination, the run's status and its stderr.
fn copy_while_x_appears(
    tmp: &Path,
    src: &Path,
    intrude: impl Fn(&Path) -> std::io::Result<()>,
) -> (std::path::PathBuf, std::process::ExitStatus, String) {
    for attempt in 0..3 {
        let dst = tmp.join(format!("dst{attempt}"));
        fs::create_dir(&dst).unwrap();
        let mut child = spawn_piped("-j2", src, &dst);
        let (_out, err) = drain(&mut child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut intruded = false;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            let staged = fs::read_dir(&dst).unwrap().flatten().any(|e| {
                e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes())
                    && e.file_type().is_ok_and(|t| t.is_dir())
            });
            if staged {
                intruded = intrude(&dst.join("x")).is_ok();
                break;
            }
        }
        let status = child.wait().unwrap();
        let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        if intruded {
            return (dst, status, stderr);
        }
        eprintln!("attempt {attempt}: x was published before it could be made");
    }
    panic!("the directory was always published before another could take its name");
}

fn source_with_a_slow_directory(tmp: &Path) -> std::path::PathBuf {
    let src = tmp.join("src");
    fs::create_dir_all(src.join("x")).unwrap();
    write_big_file(&src.join("x/big.bin"), BIG, 0x5A);
    write_random_file(&src.join("x/small"), 4096, 1);
    src
}

/// Someone else creates the directory's final name while it is staged: the staged entries
/// are moved into that directory, beside what it holds, and no temp entry is left.
#[test]
fn a_directory_made_meanwhile_under_the_final_name_is_merged_into() {
    let tmp = tempdir();
    let src = source_with_a_slow_directory(tmp.path());
    let (dst, status, stderr) = copy_while_x_appears(tmp.path(), &src, |x| {
        fs::create_dir(x)?;
        fs::write(x.join("precious"), b"mine")
    });
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(fs::read(dst.join("x/precious")).unwrap(), b"mine");
    assert_eq!(
        first_difference(&src.join("x/big.bin"), &dst.join("x/big.bin")).unwrap(),
        None
    );
    assert_eq!(
        first_difference(&src.join("x/small"), &dst.join("x/small")).unwrap(),
        None
    );
    assert_no_temp_files(&dst);
}

/// A file made meanwhile under a staged directory's final name is not replaced: the
/// directory fails by name, its staged copy is removed, the file stays.
#[test]
fn a_file_made_meanwhile_under_the_final_name_is_kept_and_reported() {
    let tmp = tempdir();
    let src = source_with_a_slow_directory(tmp.path());
    let (dst, status, stderr) = copy_while_x_appears(tmp.path(), &src, |x| fs::write(x, b"mine"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: a non-directory", dst.join("x").display())),
        "{stderr}"
    );
    assert_eq!(fs::read(dst.join("x")).unwrap(), b"mine");
    assert_no_temp_files(&dst);
}
