//! What goes where: resolving SRC and DST into a plan (the path rules are a pure function with
//! unit tests) and the checks that refuse a run before it touches anything.

use crate::error::shown;
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The copy a run performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Copy the contents of directory `src` into directory `dst` (created if missing).
    Tree {
        src: PathBuf,
        dst: PathBuf,
        dst_exists: bool,
    },
    /// Copy the regular file `src` to `dst_dir/dst_name`.
    File {
        src: PathBuf,
        dst_dir: PathBuf,
        dst_name: OsString,
    },
}

/// What the filesystem says about the two operands, gathered once before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operands {
    /// SRC with every symlink resolved (SRC itself is followed if it is a symlink).
    pub src_real: PathBuf,
    pub src_kind: OperandKind,
    /// DST resolved as far as it exists, the missing rest appended.
    pub dst_real: PathBuf,
    /// None when DST does not exist.
    pub dst_kind: Option<OperandKind>,
    /// DST or one of its existing ancestors is SRC's inode: DST is inside SRC even where the
    /// paths differ (a bind mount of SRC).
    pub dst_under_src_inode: bool,
    /// SRC's last component as given (a single file keeps the name the user typed, not its
    /// symlink target's).
    pub src_name: Option<OsString>,
    /// DST was written with a trailing slash: it must be a directory.
    pub dst_is_dir_syntax: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperandKind {
    Dir,
    File,
    Other,
}

impl OperandKind {
    fn of(meta: &std::fs::Metadata) -> Self {
        if meta.is_dir() {
            OperandKind::Dir
        } else if meta.is_file() {
            OperandKind::File
        } else {
            OperandKind::Other
        }
    }
}

/// Looks at SRC and DST. Errors here are fatal: the run has not started.
pub fn inspect(src: &Path, dst: &Path) -> Result<Operands> {
    let src_meta = std::fs::metadata(src).with_context(|| format!("source {}", shown(src)))?;
    let src_real = src
        .canonicalize()
        .with_context(|| format!("source {}", shown(src)))?;
    let dst_kind = match std::fs::metadata(dst) {
        Ok(meta) => Some(OperandKind::of(&meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("destination {}", shown(dst))),
    };
    let dst_real =
        resolve_existing_prefix(dst).with_context(|| format!("destination {}", shown(dst)))?;
    use std::os::unix::fs::MetadataExt;
    let src_id = (src_meta.dev(), src_meta.ino());
    let dst_under_src_inode = dst_real
        .ancestors()
        .filter_map(|p| std::fs::metadata(p).ok())
        .any(|m| (m.dev(), m.ino()) == src_id);
    let src_name = match src.components().next_back() {
        Some(Component::Normal(name)) => Some(name.to_os_string()),
        _ => None,
    };
    let dst_is_dir_syntax = dst.as_os_str().as_encoded_bytes().ends_with(b"/")
        || matches!(
            dst.components().next_back(),
            Some(Component::CurDir | Component::ParentDir)
        );
    Ok(Operands {
        src_real,
        src_kind: OperandKind::of(&src_meta),
        dst_real,
        dst_kind,
        dst_under_src_inode,
        src_name,
        dst_is_dir_syntax,
    })
}

/// Canonicalizes the longest existing ancestor of `path` and appends the rest, so that a DST
/// that does not exist yet can still be compared with SRC.
fn resolve_existing_prefix(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let parts: Vec<Component<'_>> = absolute.components().collect();
    for split in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..split].iter().collect();
        match prefix.canonicalize() {
            Ok(mut out) => {
                for part in &parts[split..] {
                    push_lexically(&mut out, part);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

fn push_lexically(out: &mut PathBuf, part: &Component<'_>) {
    match part {
        Component::ParentDir => {
            out.pop();
        }
        Component::CurDir => {}
        other => out.push(other.as_os_str()),
    }
}

/// Creates the destination directory of a tree copy (and its missing parents). One that
/// appeared meanwhile is fine.
pub fn create_destination(dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("create directory {}", shown(parent)))?;
    }
    match std::fs::create_dir(dst) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("create directory {}", shown(dst)))
        }
        _ => Ok(()),
    }
}

/// Decides what the run copies where, or refuses. Pure: all facts come in `ops`.
pub fn plan(src: &Path, dst: &Path, ops: &Operands) -> Result<Plan> {
    match ops.src_kind {
        OperandKind::Dir => {
            if ops.dst_real == ops.src_real {
                bail!("destination {} is the source directory", shown(dst));
            }
            if ops.dst_real.starts_with(&ops.src_real) || ops.dst_under_src_inode {
                bail!(
                    "destination {} is inside the source {}",
                    shown(dst),
                    shown(src)
                );
            }
            match ops.dst_kind {
                Some(OperandKind::Dir) | None => Ok(Plan::Tree {
                    src: ops.src_real.clone(),
                    dst: ops.dst_real.clone(),
                    dst_exists: ops.dst_kind.is_some(),
                }),
                Some(_) => bail!(
                    "cannot copy directory {} onto {}: {}",
                    shown(src),
                    shown(dst),
                    io::Error::from_raw_os_error(libc::ENOTDIR)
                ),
            }
        }
        OperandKind::File => {
            let name = match &ops.src_name {
                Some(name) => name.as_os_str(),
                None => ops
                    .src_real
                    .file_name()
                    .context("the source file has no name")?,
            };
            let target = match ops.dst_kind {
                Some(OperandKind::Dir) => ops.dst_real.join(name),
                None if ops.dst_is_dir_syntax => bail!(
                    "destination {}: {}",
                    shown(dst),
                    io::Error::from_raw_os_error(libc::ENOTDIR)
                ),
                _ => ops.dst_real.clone(),
            };
            if target == ops.src_real {
                bail!("{} and {} are the same file", shown(src), shown(dst));
            }
            let (Some(dst_dir), Some(dst_name)) = (target.parent(), target.file_name()) else {
                bail!("destination {} names no file", shown(dst));
            };
            Ok(Plan::File {
                src: ops.src_real.clone(),
                dst_dir: dst_dir.to_path_buf(),
                dst_name: dst_name.to_os_string(),
            })
        }
        OperandKind::Other => bail!(
            "source {} is neither a directory nor a regular file",
            shown(src)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(src: &str, src_kind: OperandKind, dst: &str, dst_kind: Option<OperandKind>) -> Operands {
        Operands {
            src_real: PathBuf::from(src),
            src_kind,
            dst_real: PathBuf::from(dst),
            dst_kind,
            dst_under_src_inode: false,
            src_name: None,
            dst_is_dir_syntax: false,
        }
    }

    fn plan_of(o: &Operands) -> Result<Plan> {
        plan(&o.src_real, &o.dst_real, o)
    }

    #[test]
    fn directory_into_new_or_existing_directory() {
        use OperandKind::*;
        let new = ops("/data/a", Dir, "/data/b", None);
        assert_eq!(
            plan_of(&new).unwrap(),
            Plan::Tree {
                src: "/data/a".into(),
                dst: "/data/b".into(),
                dst_exists: false
            }
        );
        let existing = ops("/data/a", Dir, "/data/b", Some(Dir));
        assert!(matches!(
            plan_of(&existing).unwrap(),
            Plan::Tree {
                dst_exists: true,
                ..
            }
        ));
    }

    #[test]
    fn directory_refusals() {
        use OperandKind::*;
        let same = plan_of(&ops("/data/a", Dir, "/data/a", Some(Dir))).unwrap_err();
        assert!(same.to_string().contains("is the source"), "{same}");
        let inside = plan_of(&ops("/data/a", Dir, "/data/a/b/c", None)).unwrap_err();
        assert!(inside.to_string().contains("inside the source"), "{inside}");
        let onto_file = plan_of(&ops("/data/a", Dir, "/data/f", Some(File))).unwrap_err();
        assert!(
            onto_file.to_string().contains("Not a directory"),
            "{onto_file}"
        );
        // A sibling whose name merely starts with the source's name is not inside it.
        assert!(plan_of(&ops("/data/a", Dir, "/data/ab", None)).is_ok());
        // A bind mount of SRC: other path, same inode.
        let bound = Operands {
            dst_under_src_inode: true,
            ..ops("/data/a", Dir, "/mnt/bind/copy", None)
        };
        let err = plan_of(&bound).unwrap_err();
        assert!(err.to_string().contains("inside the source"), "{err}");
    }

    #[test]
    fn single_file_targets() {
        use OperandKind::*;
        let into_dir = plan_of(&ops("/s/f.grib", File, "/d", Some(Dir))).unwrap();
        assert_eq!(
            into_dir,
            Plan::File {
                src: "/s/f.grib".into(),
                dst_dir: "/d".into(),
                dst_name: "f.grib".into()
            }
        );
        let renamed = plan_of(&ops("/s/f.grib", File, "/d/g.grib", None)).unwrap();
        assert_eq!(
            renamed,
            Plan::File {
                src: "/s/f.grib".into(),
                dst_dir: "/d".into(),
                dst_name: "g.grib".into()
            }
        );
        let replace = plan_of(&ops("/s/f.grib", File, "/d/g.grib", Some(File))).unwrap();
        assert!(matches!(replace, Plan::File { .. }));
        assert!(plan_of(&ops("/s/f", File, "/s/f", Some(File))).is_err());
        assert!(plan_of(&ops("/s/f", File, "/s", Some(Dir))).is_err());
        assert!(plan_of(&ops("/dev/null", Other, "/d", None)).is_err());
        // A symlink to a file is copied under the name it was given by.
        let alias = Operands {
            src_name: Some("alias.txt".into()),
            ..ops("/s/real.txt", File, "/d", Some(Dir))
        };
        assert!(
            matches!(plan_of(&alias).unwrap(), Plan::File { dst_name, .. } if dst_name == "alias.txt")
        );
        // `treecopy f missing/` names a directory that is not there.
        let slash = Operands {
            dst_is_dir_syntax: true,
            ..ops("/s/f", File, "/d/missing", None)
        };
        assert!(plan_of(&slash).is_err());
    }

    #[test]
    fn missing_destination_is_resolved_through_its_existing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        let got = resolve_existing_prefix(&tmp.path().join("x/../y/z")).unwrap();
        assert_eq!(got, real.join("y/z"));
    }
}
