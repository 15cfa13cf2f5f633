//! Hard links: names that share an inode in SRC share one in DST. The first name of a group to
//! be reached is copied and committed like any file; every other name waits for that commit
//! and is then linked to it. If the first name fails, the others fail too, by name, rather
//! than silently becoming separate copies.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// The source inode of a group: (st_dev, st_ino).
pub type InodeKey = (u64, u64);

enum State<T> {
    /// The first name is being copied.
    Copying,
    /// The first name is committed at `target` in the destination; `left` more names are
    /// expected.
    Committed { target: T, left: u64 },
    Failed {
        left: u64,
        /// The source changed or vanished during the copy: a warning, not a failure.
        soft: bool,
    },
}

/// What a name of a hard-linked file does.
pub enum Claim<'a, T> {
    /// Copy it, then call `First::committed`.
    First(First<'a, T>),
    /// Link it to this already committed destination entry.
    LinkTo(T),
    /// The group's first name could not be copied; `soft`: because the source changed or
    /// vanished meanwhile.
    FirstFailed { soft: bool },
}

/// The groups of hard-linked source files reached so far. Only files with st_nlink > 1 enter,
/// and a group is forgotten once all its names were seen, so memory follows the links that
/// are still open, not the tree. `T` says where a committed first name is.
pub struct HardLinks<T> {
    groups: Mutex<HashMap<InodeKey, State<T>>>,
    settled: Condvar,
}

impl<T> Default for HardLinks<T> {
    fn default() -> Self {
        HardLinks {
            groups: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
        }
    }
}

impl<T: Clone> HardLinks<T> {
    /// Claims a name of the group `key`, whose inode has `nlink` names. Blocks while the first
    /// name is being copied: that copy is already running on another worker and needs nothing
    /// from this one, so waiting cannot deadlock.
    pub fn claim(&self, key: InodeKey, nlink: u64) -> Claim<'_, T> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match groups.get_mut(&key) {
                None => {
                    groups.insert(key, State::Copying);
                    return Claim::First(First {
                        links: self,
                        key,
                        nlink,
                        done: false,
                    });
                }
                Some(State::Copying) => {
                    groups = self.settled.wait(groups).unwrap_or_else(|e| e.into_inner());
                }
                Some(State::Committed { target, left }) => {
                    let claim = Claim::LinkTo(target.clone());
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        groups.remove(&key);
                    }
                    return claim;
                }
                Some(State::Failed { left, soft }) => {
                    let soft = *soft;
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        groups.remove(&key);
                    }
                    return Claim::FirstFailed { soft };
                }
            }
        }
    }
}

/// The duty of copying a group's first name. Dropped without `committed`, the group fails.
pub struct First<'a, T> {
    links: &'a HardLinks<T>,
    key: InodeKey,
    nlink: u64,
    done: bool,
}

impl<T> First<'_, T> {
    pub fn committed(mut self, target: T) {
        self.settle(Some(target), false);
    }

    /// Not copied because the source changed or vanished meanwhile.
    pub fn failed_softly(mut self) {
        self.settle(None, true);
    }

    fn settle(&mut self, target: Option<T>, soft: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let left = self.nlink.saturating_sub(1);
        let mut groups = self.links.groups.lock().unwrap_or_else(|e| e.into_inner());
        let state = match target {
            Some(target) => State::Committed { target, left },
            None => State::Failed { left, soft },
        };
        groups.insert(self.key, state);
        self.links.settled.notify_all();
    }
}

impl<T> Drop for First<'_, T> {
    fn drop(&mut self) {
        self.settle(None, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn later_names_link_to_the_first_and_the_group_is_forgotten() {
        let links = HardLinks::<PathBuf>::default();
        let Claim::First(first) = links.claim((1, 7), 3) else {
            panic!("the first name must be copied");
        };
        first.committed(PathBuf::from("/d/a"));
        for _ in 0..2 {
            match links.claim((1, 7), 3) {
                Claim::LinkTo(path) => assert_eq!(path, Path::new("/d/a")),
                _ => panic!("later names link"),
            }
        }
        assert!(links.groups.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failed_first_name_fails_the_others() {
        let links = HardLinks::<PathBuf>::default();
        match links.claim((1, 8), 2) {
            Claim::First(first) => drop(first),
            _ => panic!("the first name must be copied"),
        }
        assert!(matches!(links.claim((1, 8), 2), Claim::FirstFailed { .. }));
        assert!(links.groups.lock().unwrap().is_empty());
    }

    #[test]
    fn a_waiting_name_is_released_by_the_commit() {
        let links = HardLinks::<PathBuf>::default();
        let Claim::First(first) = links.claim((2, 9), 2) else {
            panic!("the first name must be copied");
        };
        std::thread::scope(|s| {
            let waiter = s.spawn(|| matches!(links.claim((2, 9), 2), Claim::LinkTo(_)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            first.committed(PathBuf::from("/d/x"));
            assert!(waiter.join().unwrap());
        });
    }
}
