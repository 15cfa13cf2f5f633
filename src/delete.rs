//! Removing destination entries that the source no longer has (--delete): a whole subtree,
//! depth first, through directory handles, never following a symlink and never entering
//! another filesystem mounted inside the destination. Iterative, so depth costs no stack.

use crate::error::{Context, EntryError};
use crate::sys::{self, Kind};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One entry about to be removed.
pub struct Doomed<'a> {
    /// Relative to the destination root.
    pub rel: &'a Path,
    pub mode: u32,
    /// (st_dev, st_ino) of a non-directory with other names: their link count drops by one.
    pub inode: Option<(u64, u64)>,
}

/// How a removal goes: what it may do and whom it tells.
pub struct Removal<'a> {
    pub dry_run: bool,
    /// Unprivileged runs open up directories they own but cannot write (a 0500 left behind).
    pub root: bool,
    /// Called before each entry is removed (children before their directory). Returning false
    /// stops the removal: the budget of --max-delete is spent.
    pub visit: &'a (dyn Fn(&Doomed<'_>) -> bool + Sync),
    /// Called once an entry is removed (or, in a dry run, would be): only then is it reported.
    pub removed: &'a (dyn Fn(&Doomed<'_>) + Sync),
    /// Called for each entry inside the tree that could not be removed; its siblings still
    /// are, and the directories above it are left.
    pub failed: &'a (dyn Fn(EntryError) + Sync),
    /// (st_dev, st_ino) of a directory never to remove or enter: the source tree, should it
    /// be reachable from the destination (a bind mount, SRC inside DST).
    pub protect: Option<(u64, u64)>,
}

struct Frame {
    fd: OwnedFd,
    dev: u64,
    mount: Option<u64>,
    mode: u32,
    name: CString,
    rel: PathBuf,
    path: PathBuf,
    pending: Vec<(CString, Option<Kind>)>,
    /// Something below could not be removed, so this directory cannot be either.
    kept: bool,
}

/// Why a removal stopped before the end.
pub enum Stop {
    /// The visitor refused (the deletion budget is spent).
    Budget,
    Failed(EntryError),
    /// Entries inside could not be removed (each was passed to `failed`), so the tree is
    /// partly left.
    Kept,
}

impl From<EntryError> for Stop {
    fn from(e: EntryError) -> Self {
        Stop::Failed(e)
    }
}

fn join(base: &Path, name: &CStr) -> PathBuf {
    base.join(OsStr::from_bytes(name.to_bytes()))
}

impl Removal<'_> {
    /// Removes `name` in `parent` (whatever it is, recursively). `rel` and `path` name it for
    /// reports: relative to the destination root, and in full.
    pub fn remove(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        path: &Path,
    ) -> Result<(), Stop> {
        let st = sys::lstat_at(parent, name).ctx("stat", path)?;
        if st.kind() != Kind::Dir {
            return self.remove_leaf(parent, name, rel, path, &st);
        }
        let parent_fs = (
            sys::fstat(parent).ctx("stat", path)?.dev,
            sys::mount_id(parent),
        );
        let mut stack = vec![self.open(parent, name, rel, path, parent_fs)?];
        while let Some(top) = stack.last_mut() {
            let Some((child, kind)) = top.pending.pop() else {
                let done = stack.pop().expect("the stack is not empty");
                if done.kept {
                    match stack.last_mut() {
                        Some(above) => above.kept = true,
                        None => return Err(Stop::Kept),
                    }
                    continue;
                }
                let above = stack.last().map(|f| f.fd.as_fd()).unwrap_or(parent);
                match self.finish_dir(above, done) {
                    Err(Stop::Failed(e)) if !stack.is_empty() => self.keep(&mut stack, e),
                    done => done?,
                }
                continue;
            };
            let (child_rel, child_path) = (join(&top.rel, &child), join(&top.path, &child));
            let dir = top.fd.as_fd();
            let st = match sys::lstat_at(dir, child.as_c_str()).ctx("stat", &child_path) {
                Ok(st) => st,
                Err(e) => {
                    self.keep(&mut stack, e);
                    continue;
                }
            };
            let step = if kind.unwrap_or(st.kind()) == Kind::Dir {
                let fs = (top.dev, top.mount);
                self.open(dir, &child, &child_rel, &child_path, fs)
                    .map(|frame| stack.push(frame))
            } else {
                self.remove_leaf(dir, &child, &child_rel, &child_path, &st)
            };
            match step {
                Ok(()) => {}
                Err(Stop::Failed(e)) => self.keep(&mut stack, e),
                Err(stop) => return Err(stop),
            }
        }
        Ok(())
    }

    /// An entry below the top of `stack` could not be removed: reported, and its directory
    /// is kept.
    fn keep(&self, stack: &mut [Frame], e: EntryError) {
        (self.failed)(e);
        if let Some(top) = stack.last_mut() {
            top.kept = true;
        }
    }

    fn remove_leaf(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        path: &Path,
        st: &sys::Stat,
    ) -> Result<(), Stop> {
        let doomed = Doomed {
            rel,
            mode: st.mode,
            inode: (st.nlink > 1).then_some((st.dev, st.ino)),
        };
        if !(self.visit)(&doomed) {
            return Err(Stop::Budget);
        }
        if !self.dry_run {
            sys::unlink_at(dir, name).ctx("delete", path)?;
        }
        (self.removed)(&doomed);
        Ok(())
    }

    fn open(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        path: &Path,
        (parent_dev, parent_mount): (u64, Option<u64>),
    ) -> Result<Frame, Stop> {
        let fd = sys::open_dir(parent, name).ctx("open directory", path)?;
        let st = sys::fstat(fd.as_fd()).ctx("stat", path)?;
        if self.protect == Some((st.dev, st.ino)) {
            return Err(Stop::Failed(EntryError::new(
                "delete",
                path,
                std::io::Error::other("this is the source directory; not deleted"),
            )));
        }
        let mount = sys::mount_id(fd.as_fd());
        // A bind mount of the same filesystem keeps st_dev: only its mount id differs.
        let mounted_over = parent_mount.is_some() && mount.is_some() && mount != parent_mount;
        if st.dev != parent_dev || mounted_over {
            return Err(Stop::Failed(EntryError::new(
                "delete",
                path,
                std::io::Error::other("a filesystem is mounted there; not entered"),
            )));
        }
        if !self.root && !self.dry_run && st.perm() & 0o700 != 0o700 {
            sys::fchmod(fd.as_fd(), st.perm() | 0o700).ctx("chmod", path)?;
        }
        let pending = sys::list_dir(fd.as_fd()).ctx("read directory", path)?;
        Ok(Frame {
            fd,
            dev: st.dev,
            mount,
            mode: st.mode,
            name: name.to_owned(),
            rel: rel.to_path_buf(),
            path: path.to_path_buf(),
            pending,
            kept: false,
        })
    }

    fn finish_dir(&self, parent: BorrowedFd<'_>, frame: Frame) -> Result<(), Stop> {
        let doomed = Doomed {
            rel: &frame.rel,
            mode: frame.mode,
            inode: None,
        };
        if !(self.visit)(&doomed) {
            return Err(Stop::Budget);
        }
        drop(frame.fd);
        if !self.dry_run {
            sys::rmdir_at(parent, &frame.name).ctx("delete", &frame.path)?;
        }
        (self.removed)(&doomed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::Mutex;

    #[test]
    fn removes_a_tree_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("dst"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("gone/a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"keep").unwrap();
        std::fs::write(root.join("gone/a/b/f"), b"x").unwrap();
        symlink(&outside, root.join("gone/a/link")).unwrap();
        std::fs::write(root.join("kept"), b"y").unwrap();
        let seen = Mutex::new(Vec::new());
        let removed = |d: &Doomed<'_>| seen.lock().unwrap().push(d.rel.to_path_buf());
        let dir = sys::open_dir_path(&root).unwrap();
        for dry_run in [true, false] {
            seen.lock().unwrap().clear();
            let removal = Removal {
                dry_run,
                root: sys::is_root(),
                visit: &|_| true,
                removed: &removed,
                failed: &|e| panic!("{e}"),
                protect: None,
            };
            let ok = removal
                .remove(dir.as_fd(), c"gone", Path::new("gone"), &root.join("gone"))
                .is_ok();
            assert!(ok);
            let mut seen = seen.lock().unwrap().clone();
            seen.sort();
            let want: Vec<PathBuf> = ["gone", "gone/a", "gone/a/b", "gone/a/b/f", "gone/a/link"]
                .iter()
                .map(PathBuf::from)
                .collect();
            assert_eq!(seen, want);
            assert_eq!(root.join("gone").exists(), dry_run);
        }
        assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
        assert!(root.join("kept").exists());
    }

    #[test]
    fn a_refused_visit_stops_the_removal() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d")).unwrap();
        for i in 0..5 {
            std::fs::write(tmp.path().join(format!("d/{i}")), b"").unwrap();
        }
        let budget = std::sync::atomic::AtomicUsize::new(2);
        let visit = |_: &Doomed<'_>| {
            budget
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |b| b.checked_sub(1),
                )
                .is_ok()
        };
        let removal = Removal {
            dry_run: false,
            root: true,
            visit: &visit,
            removed: &|_| {},
            failed: &|e| panic!("{e}"),
            protect: None,
        };
        let dir = sys::open_dir_path(tmp.path()).unwrap();
        let got = removal.remove(dir.as_fd(), c"d", Path::new("d"), &tmp.path().join("d"));
        assert!(matches!(got, Err(Stop::Budget)));
        assert_eq!(std::fs::read_dir(tmp.path().join("d")).unwrap().count(), 3);
    }
}
