//! The table mapping FUSE node ids to backing paths, with kernel lookup counts.
//!
//! Node ids: fuser replies to LOOKUP/CREATE/... with `attr.ino` as the node id, and the
//! kernel also shows `attr.ino` as st_ino. To pass the backing inode numbers through
//! unchanged (copy tools use st_ino to detect hard links), the node id *is* the backing
//! st_ino whenever that is unambiguous: same device as the backing root and not 1 (which
//! FUSE reserves for the root). Anything else (a file on another filesystem mounted
//! inside the backing dir, or st_ino 1) gets a synthetic id from a high range.
//!
//! Paths: instead of storing full paths (which a directory rename would invalidate for
//! the whole subtree) each node stores the names it is known under as (parent id, name)
//! links, and a path is rebuilt by walking parents up to the root. A rename then only
//! moves one link. A node may have several links (hard links); any of them works.
//!
//! Lifetime: a node lives while the kernel holds lookups on it (`nlookup`, decremented by
//! FORGET) or while other nodes hang below it (`child_links`), so that paths of
//! remembered children can always be rebuilt.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use fuser::Errno;

pub const ROOT: u64 = 1;
/// Synthetic ids start here; real inode numbers never get anywhere near it.
const SYNTHETIC_BASE: u64 = 1 << 62;
/// Guards against a corrupted parent chain looping forever.
const MAX_DEPTH: usize = 4096;

/// (st_dev, st_ino) of a backing file.
pub type Key = (u64, u64);

#[derive(Debug)]
struct Node {
    key: Key,
    nlookup: u64,
    links: Vec<(u64, OsString)>,
    child_links: u64,
}

#[derive(Debug)]
pub struct InodeTable {
    root_key: Key,
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, OsString), u64>,
    synthetic: HashMap<Key, u64>,
    next_synthetic: u64,
}

impl InodeTable {
    pub fn new(root_key: Key) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                key: root_key,
                // The root is never forgotten by the kernel; keep it pinned.
                nlookup: u64::MAX / 2,
                links: Vec::new(),
                child_links: 0,
            },
        );
        Self {
            root_key,
            nodes,
            by_name: HashMap::new(),
            synthetic: HashMap::new(),
            next_synthetic: SYNTHETIC_BASE,
        }
    }

    /// The node id for a backing file (allocating a synthetic one if needed).
    pub fn id_for(&mut self, key: Key) -> u64 {
        if key == self.root_key {
            return ROOT;
        }
        if key.0 == self.root_key.0 && key.1 != ROOT && key.1 < SYNTHETIC_BASE {
            return key.1;
        }
        if let Some(&id) = self.synthetic.get(&key) {
            return id;
        }
        let id = self.next_synthetic;
        self.next_synthetic += 1;
        self.synthetic.insert(key, id);
        id
    }

    /// The (dev, ino) a known node stands for, to detect that a path now names a
    /// different file than the one the kernel asked about.
    pub fn key_of(&self, id: u64) -> Option<Key> {
        self.nodes.get(&id).map(|n| n.key)
    }

    /// Path of a node relative to the backing root ("" for the root itself).
    pub fn rel_path(&self, id: u64) -> Result<Vec<u8>, Errno> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let node = self.nodes.get(&cur).ok_or(Errno::ESTALE)?;
            // A node with no link left was unlinked (maybe still open via a handle).
            let (parent, name) = node.links.first().ok_or(Errno::ENOENT)?;
            parts.push(name);
            cur = *parent;
            if parts.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
        }
        let mut out = Vec::new();
        for (i, part) in parts.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(part.as_bytes());
        }
        Ok(out)
    }

    /// Records that the kernel now holds one more lookup on `id`, known as `name` in
    /// `parent` (every LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE reply and every
    /// READDIRPLUS entry other than "." and ".." counts as one).
    pub fn remember(&mut self, parent: u64, name: &OsStr, id: u64, key: Key) {
        let node = self.nodes.entry(id).or_insert_with(|| Node {
            key,
            nlookup: 0,
            links: Vec::new(),
            child_links: 0,
        });
        // An inode number reused by the backing fs for a new file: the kernel treats it as
        // the same node id too, so just track the new identity.
        node.key = key;
        node.nlookup += 1;
        if id != ROOT {
            self.attach(id, parent, name);
        }
    }

    fn attach(&mut self, id: u64, parent: u64, name: &OsStr) {
        let k = (parent, name.to_os_string());
        match self.by_name.get(&k) {
            Some(&cur) if cur == id => return,
            Some(&cur) => {
                // The name now refers to a different file (changed behind our back).
                self.drop_link(cur, parent, name);
                self.maybe_remove(cur);
            }
            None => {}
        }
        if !self.nodes.contains_key(&parent) {
            // Should not happen (the kernel only asks about children of nodes it knows),
            // and a link to an unknown parent could never be resolved anyway.
            return;
        }
        self.by_name.insert(k, id);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.links.push((parent, name.to_os_string()));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.child_links += 1;
        }
    }

    /// Removes one name link without freeing anything (callers run `maybe_remove`).
    fn drop_link(&mut self, id: u64, parent: u64, name: &OsStr) {
        self.by_name.remove(&(parent, name.to_os_string()));
        if let Some(node) = self.nodes.get_mut(&id) {
            node.links.retain(|(p, n)| !(*p == parent && n == name));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.child_links = p.child_links.saturating_sub(1);
        }
    }

    /// Frees nodes nobody refers to any more, walking up as parents lose children.
    fn maybe_remove(&mut self, id: u64) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            if id == ROOT {
                continue;
            }
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            if node.nlookup > 0 || node.child_links > 0 {
                continue;
            }
            let node = self.nodes.remove(&id).expect("checked above");
            if id >= SYNTHETIC_BASE {
                self.synthetic.remove(&node.key);
            }
            for (parent, name) in node.links {
                self.by_name.remove(&(parent, name));
                if let Some(p) = self.nodes.get_mut(&parent) {
                    p.child_links = p.child_links.saturating_sub(1);
                }
                work.push(parent);
            }
        }
    }

    /// FORGET / BATCH_FORGET.
    pub fn forget(&mut self, id: u64, n: u64) {
        if id == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.nlookup = node.nlookup.saturating_sub(n);
        }
        self.maybe_remove(id);
    }

    /// After a successful unlink/rmdir of `name` in `parent`.
    pub fn unlinked(&mut self, parent: u64, name: &OsStr) {
        if let Some(&id) = self.by_name.get(&(parent, name.to_os_string())) {
            self.drop_link(id, parent, name);
            self.maybe_remove(id);
            self.maybe_remove(parent);
        }
    }

    /// After a successful rename(2)/renameat2(2).
    pub fn renamed(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        exchange: bool,
    ) {
        let src = self.by_name.get(&(parent, name.to_os_string())).copied();
        let dst = self
            .by_name
            .get(&(newparent, newname.to_os_string()))
            .copied();
        if src.is_some() && src == dst {
            // Two hard links to the same inode: rename(2) does nothing in that case.
            return;
        }
        if let Some(d) = dst {
            self.drop_link(d, newparent, newname);
        }
        if let Some(s) = src {
            self.drop_link(s, parent, name);
        }
        if let Some(s) = src {
            self.attach(s, newparent, newname);
        }
        if exchange && let Some(d) = dst {
            self.attach(d, parent, name);
        }
        for id in [dst, src].into_iter().flatten() {
            self.maybe_remove(id);
        }
        self.maybe_remove(parent);
        self.maybe_remove(newparent);
    }

    /// Nodes currently tracked (root included), reported in the stats to show that
    /// FORGETs are honoured.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn ids_follow_backing_inodes() {
        let mut t = InodeTable::new((7, 2));
        assert_eq!(t.id_for((7, 2)), ROOT);
        assert_eq!(t.id_for((7, 1234)), 1234);
        let other_fs = t.id_for((8, 1234));
        assert!(other_fs >= SYNTHETIC_BASE);
        assert_eq!(t.id_for((8, 1234)), other_fs);
        assert!(t.id_for((7, 1)) >= SYNTHETIC_BASE);
    }

    #[test]
    fn paths_rename_and_forget() {
        let mut t = InodeTable::new((7, 2));
        t.remember(ROOT, os("a"), 10, (7, 10));
        t.remember(10, os("f"), 11, (7, 11));
        assert_eq!(t.rel_path(11).unwrap(), b"a/f");
        // Renaming the directory moves the child's path along with it.
        t.renamed(ROOT, os("a"), ROOT, os("b"), false);
        assert_eq!(t.rel_path(11).unwrap(), b"b/f");
        // Exchange swaps two names.
        t.remember(ROOT, os("c"), 12, (7, 12));
        t.renamed(ROOT, os("b"), ROOT, os("c"), true);
        assert_eq!(t.rel_path(10).unwrap(), b"c");
        assert_eq!(t.rel_path(12).unwrap(), b"b");
        assert_eq!(t.rel_path(11).unwrap(), b"c/f");
        // The parent is kept while its child is known even if the kernel forgot it.
        t.forget(10, 1);
        assert_eq!(t.rel_path(11).unwrap(), b"c/f");
        t.forget(11, 1);
        assert!(t.rel_path(10).is_err());
        t.forget(12, 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn hard_links_and_unlink() {
        let mut t = InodeTable::new((7, 2));
        t.remember(ROOT, os("x"), 20, (7, 20));
        t.remember(ROOT, os("y"), 20, (7, 20));
        t.unlinked(ROOT, os("x"));
        assert_eq!(t.rel_path(20).unwrap(), b"y");
        t.unlinked(ROOT, os("y"));
        assert_eq!(t.rel_path(20), Err(Errno::ENOENT));
        t.forget(20, 2);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rename_over_existing_detaches_victim() {
        let mut t = InodeTable::new((7, 2));
        t.remember(ROOT, os("src"), 30, (7, 30));
        t.remember(ROOT, os("dst"), 31, (7, 31));
        t.renamed(ROOT, os("src"), ROOT, os("dst"), false);
        assert_eq!(t.rel_path(30).unwrap(), b"dst");
        assert_eq!(t.rel_path(31), Err(Errno::ENOENT));
    }
}
