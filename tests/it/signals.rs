//! Interruption and visibility: SIGINT/SIGTERM mid-copy exit with 128+signal and leave neither
//! temp files nor partial files; a concurrent reader never sees a final name with a partial size.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    TMP_PREFIX, assert_no_temp_files, assert_present_files_complete, bin, drain, first_difference,
    tempdir, write_big_file, write_random_file,
};

/// Large enough that a copy on this disk takes well over a second (measured ~1.5 GiB/s).
const BIG: u64 = 1 << 30;

/// A source that takes seconds to copy: one 1 GiB non-sparse file plus many small files.
fn slow_source(src: &Path, seed: u64) {
    fs::create_dir_all(src.join("many")).unwrap();
    write_big_file(&src.join("big.bin"), BIG, seed);
    for i in 0..300 {
        write_random_file(
            &src.join("many").join(format!("f{i:03}")),
            32 * 1024,
            seed + i,
        );
    }
}

/// Starts a copy, sends `sig` after 300 ms while it is still running, and checks the exit code
/// and that DST holds only complete files and no temp files.
fn interrupt_mid_copy(sig: libc::c_int, seed: u64) {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    slow_source(&src, seed);
    let mut child = Command::new(bin())
        .args(["-j2".as_ref(), src.as_os_str(), dst.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn treecopy");
    let (_out, err) = drain(&mut child);
    thread::sleep(Duration::from_millis(300));
    if let Some(st) = child.try_wait().unwrap() {
        let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        panic!("copy already finished ({st}) before the signal: make the workload bigger\n{err}");
    }
    // SAFETY: plain kill(2) on our own child's pid.
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
    assert_no_temp_files(&dst);
    assert_present_files_complete(&src, &dst);
    assert!(
        fs::symlink_metadata(dst.join("big.bin")).is_err()
            || fs::metadata(dst.join("big.bin")).unwrap().len() == BIG,
        "big.bin present with a partial size"
    );
}

#[test]
fn sigint_mid_copy_exits_130_and_cleans_up() {
    interrupt_mid_copy(libc::SIGINT, 0x1A7);
}

#[test]
fn sigterm_mid_copy_exits_143_and_cleans_up() {
    interrupt_mid_copy(libc::SIGTERM, 0x7E4);
}

/// The final name only appears by rename of a complete temp file, so a reader polling it sees
/// either nothing or the full size, never a growing file; meanwhile a `.treecopy-tmp.` file
/// exists beside it.
#[test]
fn concurrent_reader_never_sees_partial_final_file() {
    let tmp = tempdir();
    let src = tmp.path().join("big.bin");
    write_big_file(&src, BIG, 0xB16);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let dst = out.join("big-copy.bin");

    let mut child = Command::new(bin())
        .args(["-j1".as_ref(), src.as_os_str(), dst.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn treecopy");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut polls, mut saw_temp, mut saw_final) = (0u64, false, false);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        polls += 1;
        if let Ok(m) = fs::symlink_metadata(&dst) {
            saw_final = true;
            if m.len() != BIG {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "final name visible with size {} (final size {BIG}) after {polls} polls",
                    m.len()
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
