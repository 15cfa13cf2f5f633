//! The command-line contract: `--help` matches the golden file (UPDATE_GOLDEN=1 rewrites it),
//! `--version`, and usage errors exit 2.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::args;
use crate::util::{RUN_TIMEOUT, bin, run_cmd, tempdir, treecopy};

fn golden_help() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/help.txt")
}

#[test]
fn help_matches_golden_file() {
    let mut cmd = Command::new(bin());
    // clap wraps help to the terminal width; pin it so the output is the same everywhere.
    cmd.arg("--help").env("COLUMNS", "100").env_remove("LINES");
    let run = run_cmd(cmd, RUN_TIMEOUT);
    run.assert_code(0);
    assert!(run.stdout.contains("Usage:"), "help lacks a usage line");
    let path = golden_help();
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &run.stdout).unwrap();
        eprintln!("rewrote {}", path.display());
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); create it with UPDATE_GOLDEN=1 cargo test --test it help",
            path.display()
        )
    });
    assert!(
        run.stdout == want,
        "--help differs from {} (rerun with UPDATE_GOLDEN=1 if the change is intended)\n--- golden ---\n{want}\n--- actual ---\n{}",
        path.display(),
        run.stdout
    );
}

#[test]
fn help_mentions_every_contract_option() {
    let run = treecopy(args!["--help"]);
    run.assert_code(0);
    for opt in [
        "--jobs",
        "-j",
        "--verbose",
        "-v",
        "--quiet",
        "-q",
        "--progress",
        "--no-progress",
    ] {
        assert!(run.stdout.contains(opt), "--help does not mention {opt}");
    }
}

#[test]
fn version_prints_name_and_version() {
    let run = treecopy(args!["--version"]);
    run.assert_code(0);
    let line = run.stdout.trim();
    assert!(
        line.starts_with("treecopy") && line.contains(env!("CARGO_PKG_VERSION")),
        "unexpected --version output: {line:?}"
    );
}

#[test]
fn unknown_option_is_a_usage_error() {
    let tmp = tempdir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let run = treecopy(args!["--no-such-option", &src, &dst]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("--no-such-option"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(!dst.exists(), "a usage error still copied");
}

#[test]
fn missing_operands_and_bad_job_count_are_usage_errors() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    treecopy(args![]).assert_code(2);
    treecopy(args![&src]).assert_code(2);
    treecopy(args!["-j", "lots", &src, tmp.path().join("d")]).assert_code(2);
}

#[test]
fn progress_flags_are_accepted() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    for (i, flag) in ["--progress", "--no-progress", "--verbose", "--quiet"]
        .iter()
        .enumerate()
    {
        let dst = tmp.path().join(format!("dst{i}"));
        let run = treecopy(args![flag, &src, &dst]);
        run.assert_code(0);
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"x", "with {flag}");
    }
}
