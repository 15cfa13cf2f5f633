//! Hard links: names that share an inode in SRC share one in DST. The first name of a group to
//! be reached is copied and committed like any file; every other name waits for that commit
//! and is then linked to it. If the first name fails, the others fail too, by name, rather
//! than silently becoming separate copies.
//!
//! A name new to the destination may be put off (`put_off`): another name of its group may
//! already be up to date there, and linking to it beats copying the data again. A put-off name
//! is handed back when a name of its group commits (to be linked), when it is the group's last
//! name (all new: one of them is copied), or at the end of the walk (`take_put_off`).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// The source inode of a group: (st_dev, st_ino).
pub type InodeKey = (u64, u64);

enum State<T, D> {
    /// Only names new to the destination were reached, and put off; `seen` names so far.
    PutOff { names: Vec<D>, seen: u64 },
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
pub enum Claim<'a, T, D> {
    /// Copy it, then call `First::committed`.
    First(First<'a, T, D>),
    /// Link it to this already committed destination entry.
    LinkTo(T),
    /// The group's first name could not be copied; `soft`: because the source changed or
    /// vanished meanwhile.
    FirstFailed { soft: bool },
    /// Kept by the group (from `put_off` only): nothing to do now.
    PutOff,
    /// Every name of the group was new and put off, this one last (from `put_off` only):
    /// claim them all again, one of them first. The group is forgotten.
    AllNew(Vec<D>),
}

/// The groups of hard-linked source files reached so far. Only files with st_nlink > 1 enter,
/// and a group is forgotten once all its names were seen, so memory follows the links that
/// are still open, not the tree. `T` says where a committed first name is; `D` is a put-off
/// name.
pub struct HardLinks<T, D = ()> {
    groups: Mutex<HashMap<InodeKey, State<T, D>>>,
    settled: Condvar,
    /// Put-off names whose group's first name failed: claimed again, they learn it.
    orphans: Mutex<Vec<D>>,
}

impl<T, D> Default for HardLinks<T, D> {
    fn default() -> Self {
        HardLinks {
            groups: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
            orphans: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Clone, D> HardLinks<T, D> {
    /// Claims a name of the group `key`, whose inode has `nlink` names. Blocks while the first
    /// name is being copied: that copy is already running on another worker and needs nothing
    /// from this one, so waiting cannot deadlock.
    pub fn claim(&self, key: InodeKey, nlink: u64) -> Claim<'_, T, D> {
        self.enter(key, nlink, None).0
    }

    /// Claims a name new to the destination, which the group keeps (`Claim::PutOff`) unless
    /// it is settled already or this is its last name.
    pub fn put_off(&self, key: InodeKey, nlink: u64, name: D) -> Claim<'_, T, D> {
        // A name the group did not keep is dropped here, out of the lock: dropping it may
        // finish (or publish) its directory.
        let (claim, _not_kept) = self.enter(key, nlink, Some(name));
        claim
    }

    /// Claims a name; `put_off` is handed back unless the group kept it.
    fn enter(
        &self,
        key: InodeKey,
        nlink: u64,
        mut put_off: Option<D>,
    ) -> (Claim<'_, T, D>, Option<D>) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let claim = loop {
            match groups.get_mut(&key) {
                None => match put_off.take() {
                    Some(name) if nlink > 1 => {
                        groups.insert(
                            key,
                            State::PutOff {
                                names: vec![name],
                                seen: 1,
                            },
                        );
                        return (Claim::PutOff, None);
                    }
                    name => {
                        put_off = name;
                        groups.insert(key, State::Copying);
                        break Claim::First(First::new(self, key, nlink, Vec::new()));
                    }
                },
                Some(State::PutOff { names, seen }) => {
                    if let Some(name) = put_off.take() {
                        names.push(name);
                        *seen += 1;
                        if *seen < nlink {
                            return (Claim::PutOff, None);
                        }
                        let names = std::mem::take(names);
                        groups.remove(&key);
                        return (Claim::AllNew(names), None);
                    }
                    // A name that is in the destination decides.
                    let names = std::mem::take(names);
                    groups.insert(key, State::Copying);
                    break Claim::First(First::new(self, key, nlink, names));
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
                    break claim;
                }
                Some(State::Failed { left, soft }) => {
                    let soft = *soft;
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        groups.remove(&key);
                    }
                    break Claim::FirstFailed { soft };
                }
            }
        };
        (claim, put_off)
    }

    /// At the end of the walk: the groups still only put off (their other names are outside
    /// SRC, or excluded), each to be claimed again name by name, and the put-off names of
    /// groups that failed. The groups are forgotten.
    pub fn take_put_off(&self) -> Vec<Vec<D>> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<InodeKey> = groups
            .iter()
            .filter(|(_, state)| matches!(state, State::PutOff { .. }))
            .map(|(key, _)| *key)
            .collect();
        let mut taken: Vec<Vec<D>> = keys
            .iter()
            .filter_map(|key| match groups.remove(key) {
                Some(State::PutOff { names, .. }) => Some(names),
                _ => None,
            })
            .collect();
        drop(groups);
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        taken.extend(orphans.into_iter().map(|name| vec![name]));
        taken
    }
}

/// The duty of copying a group's first name. Dropped without `committed`, the group fails.
pub struct First<'a, T, D> {
    links: &'a HardLinks<T, D>,
    key: InodeKey,
    nlink: u64,
    /// Names reached before this one, and put off: claimed again once this one is settled.
    put_off: Vec<D>,
    done: bool,
}

impl<'a, T, D> First<'a, T, D> {
    fn new(links: &'a HardLinks<T, D>, key: InodeKey, nlink: u64, put_off: Vec<D>) -> Self {
        First {
            links,
            key,
            nlink,
            put_off,
            done: false,
        }
    }

    /// Committed at `target`: returns the put-off names, to be claimed again (and so linked).
    #[must_use = "put-off names must be claimed again"]
    pub fn committed(mut self, target: T) -> Vec<D> {
        self.settle(Some(target), false);
        std::mem::take(&mut self.put_off)
    }

    /// Left as it is though it may not be the source's (--ignore-existing, --update): not a
    /// copy other names may be linked to. The group is forgotten, so its next name is
    /// claimed as a first one. Returns the put-off names, to be claimed again.
    #[must_use = "put-off names must be claimed again"]
    pub fn pass(mut self) -> Vec<D> {
        self.done = true;
        let mut groups = self.links.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.remove(&self.key);
        self.links.settled.notify_all();
        drop(groups);
        std::mem::take(&mut self.put_off)
    }

    /// Not copied because the source changed or vanished meanwhile. Returns the put-off names,
    /// to be claimed again (and so told).
    #[must_use = "put-off names must be claimed again"]
    pub fn failed_softly(mut self) -> Vec<D> {
        self.settle(None, true);
        std::mem::take(&mut self.put_off)
    }

    fn settle(&mut self, target: Option<T>, soft: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // The put-off names are claimed again, so they too are still to come.
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

impl<T, D> Drop for First<'_, T, D> {
    fn drop(&mut self) {
        self.settle(None, false);
        let put_off = std::mem::take(&mut self.put_off);
        if !put_off.is_empty() {
            self.links
                .orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(put_off);
        }
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
        let _ = first.committed(PathBuf::from("/d/a"));
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
            let _ = first.committed(PathBuf::from("/d/x"));
            assert!(waiter.join().unwrap());
        });
    }

    #[test]
    fn put_off_names_wait_for_a_name_the_destination_has() {
        let links = HardLinks::<PathBuf, &str>::default();
        assert!(matches!(links.put_off((3, 1), 3, "new1"), Claim::PutOff));
        let Claim::First(first) = links.claim((3, 1), 3) else {
            panic!("a name in the destination decides");
        };
        assert_eq!(first.committed(PathBuf::from("/d/old")), vec!["new1"]);
        // Claimed again, the put-off name links, as does the last one.
        assert!(matches!(links.claim((3, 1), 3), Claim::LinkTo(_)));
        assert!(matches!(links.put_off((3, 1), 3, "new2"), Claim::LinkTo(_)));
        assert!(links.groups.lock().unwrap().is_empty());
    }

    #[test]
    fn a_group_of_new_names_is_handed_back_whole_by_its_last_name() {
        let links = HardLinks::<PathBuf, &str>::default();
        assert!(matches!(links.put_off((4, 1), 2, "a"), Claim::PutOff));
        match links.put_off((4, 1), 2, "b") {
            Claim::AllNew(names) => assert_eq!(names, vec!["a", "b"]),
            _ => panic!("the last new name hands the group back"),
        }
        assert!(links.groups.lock().unwrap().is_empty());
        // A group with names outside the tree is handed back at the end of the walk.
        assert!(matches!(links.put_off((4, 2), 5, "c"), Claim::PutOff));
        assert_eq!(links.take_put_off(), vec![vec!["c"]]);
        assert!(links.groups.lock().unwrap().is_empty());
    }

    #[test]
    fn put_off_names_of_a_failed_group_are_handed_back_and_fail() {
        let links = HardLinks::<PathBuf, &str>::default();
        assert!(matches!(links.put_off((5, 1), 3, "new"), Claim::PutOff));
        match links.claim((5, 1), 3) {
            Claim::First(first) => drop(first),
            _ => panic!("a name in the destination decides"),
        }
        assert_eq!(links.take_put_off(), vec![vec!["new"]]);
        assert!(matches!(
            links.claim((5, 1), 3),
            Claim::FirstFailed { soft: false }
        ));
        assert!(matches!(
            links.claim((5, 1), 3),
            Claim::FirstFailed { soft: false }
        ));
        assert!(links.groups.lock().unwrap().is_empty());
    }

    #[test]
    fn a_passed_first_name_leaves_the_group_to_the_next() {
        let links = HardLinks::<PathBuf, &str>::default();
        let Claim::First(first) = links.claim((6, 1), 2) else {
            panic!("the first name must be copied");
        };
        assert!(first.pass().is_empty());
        assert!(matches!(links.claim((6, 1), 2), Claim::First(_)));
    }
}
