//! What differs between a source entry and the destination entry of the same name, and what
//! a run does about it: create, replace the data, fix metadata in place, or leave it. The
//! decision is a pure function over the two stats (a table-tested rule, like rsync's quick
//! check), and so is the itemized line that tells the user what changed.

use crate::sys::{Kind, Stat};

/// How a run decides that a destination entry is up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Compare file content (by hash) instead of size and mtime.
    pub checksum: bool,
    /// Leave every existing destination entry alone.
    pub ignore_existing: bool,
    /// Leave regular files whose destination is newer than the source.
    pub update: bool,
    /// Modification times this many nanoseconds apart count as equal (--modify-window).
    pub modify_window_ns: u64,
}

/// What to do with one non-directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing of that name in the destination.
    Create,
    /// The destination holds something else there: write the entry anew, atomically.
    Replace,
    /// Same type, and by the policy the same data: at most metadata needs fixing.
    Same,
    /// Sizes agree and --checksum asks for the content to decide.
    CompareContent,
    /// Left alone by --ignore-existing or --update.
    Kept,
}

/// Whether two timestamps agree within the window.
pub fn same_time(a: (i64, i64), b: (i64, i64), window_ns: u64) -> bool {
    let ns = |(s, n): (i64, i64)| s as i128 * 1_000_000_000 + n as i128;
    (ns(a) - ns(b)).unsigned_abs() <= window_ns as u128
}

fn newer(dst: (i64, i64), src: (i64, i64), window_ns: u64) -> bool {
    dst > src && !same_time(dst, src, window_ns)
}

/// Decides the fate of a non-directory `src` given what the destination holds. Symlink
/// targets and device numbers are compared by the caller (a symlink's target needs a
/// readlink): here a symlink or special of the same type and size counts as `Same`.
pub fn decide(src: &Stat, dst: Option<&Stat>, policy: &Policy) -> Verdict {
    let Some(dst) = dst else {
        return Verdict::Create;
    };
    if policy.ignore_existing {
        return Verdict::Kept;
    }
    let kind = src.kind();
    if kind != dst.kind() || src.mode & libc::S_IFMT != dst.mode & libc::S_IFMT {
        return Verdict::Replace;
    }
    match kind {
        Kind::File => {
            if policy.update && newer(dst.mtime, src.mtime, policy.modify_window_ns) {
                return Verdict::Kept;
            }
            if src.size != dst.size {
                Verdict::Replace
            } else if policy.checksum {
                Verdict::CompareContent
            } else if same_time(src.mtime, dst.mtime, policy.modify_window_ns) {
                Verdict::Same
            } else {
                Verdict::Replace
            }
        }
        Kind::Special if src.rdev != dst.rdev => Verdict::Replace,
        Kind::Symlink | Kind::Special => Verdict::Same,
        Kind::Dir => Verdict::Same,
    }
}

/// The metadata of an up-to-date entry that needs fixing in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaDiff {
    pub perms: bool,
    pub owner: bool,
    pub group: bool,
    pub mtime: bool,
    pub acls: bool,
    pub xattrs: bool,
}

impl MetaDiff {
    pub fn any(&self) -> bool {
        self.perms || self.owner || self.group || self.mtime || self.acls || self.xattrs
    }
}

/// How far apart two filesystems' clocks (SRC's and DST's servers) may be for the ctime
/// ordering below to hold.
pub const CLOCK_SLACK_NS: i128 = 120 * 1_000_000_000;

/// Whether an up-to-date entry's xattrs (and ACLs) must be read on both sides to know they
/// agree. They need not be when the source's inode has not changed since the copy's last did
/// (its ctime, which only the kernel sets, is older): the copy was written or fixed after the
/// source's last metadata change and carries what the source had then, which it still has.
/// An xattr removed from the source moves its ctime (not its mtime), so it is found. What
/// this cannot see is a change made to the copy alone; `thorough` (--checksum) reads them
/// always. The slack covers clocks of different servers for SRC and DST.
pub fn must_read_xattrs(src: &Stat, dst: &Stat, thorough: bool) -> bool {
    let ns = |(s, n): (i64, i64)| s as i128 * 1_000_000_000 + n as i128;
    thorough || ns(src.ctime) + CLOCK_SLACK_NS >= ns(dst.ctime)
}

/// What the destination's owner, group and mode should be, given who we are: root keeps
/// everything; others cannot give files away, keep only groups they are in, and lose
/// setuid/setgid with the owner or group (as the copy itself does).
#[derive(Debug, Clone, Copy)]
pub struct Expect<'g> {
    pub root: bool,
    pub euid: u32,
    /// Groups an unprivileged run may chown to.
    pub groups: &'g [u32],
}

impl Expect<'_> {
    pub fn perm(&self, src: &Stat) -> u32 {
        let mut perm = src.perm();
        if !self.root {
            if src.uid != self.euid {
                perm &= !libc::S_ISUID;
            }
            if !self.groups.contains(&src.gid) {
                perm &= !libc::S_ISGID;
            }
        }
        perm
    }

    /// Owner, group, mode and mtime differences (xattrs are compared by the caller).
    /// Symlinks have no mode of their own.
    pub fn diff(&self, src: &Stat, dst: &Stat, window_ns: u64) -> MetaDiff {
        let owner = self.root && src.uid != dst.uid;
        let group = src.gid != dst.gid && (self.root || self.groups.contains(&src.gid));
        let perms = src.kind() != Kind::Symlink && self.perm(src) != dst.perm();
        MetaDiff {
            perms,
            owner,
            group,
            mtime: !same_time(src.mtime, dst.mtime, window_ns),
            acls: false,
            xattrs: false,
        }
    }
}

/// One line of --itemize, in rsync's `YXcstpoguax` notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new entry.
    Created,
    /// Data (or a symlink's target, a device number) written anew; `content`: decided by
    /// --checksum; `size`: the size differed.
    Data {
        content: bool,
        size: bool,
        meta: MetaDiff,
    },
    /// Only metadata fixed in place.
    Meta(MetaDiff),
    /// A name linked to an earlier name of the same source inode.
    HardLink,
    Deleted,
}

/// The rsync type letter of an entry.
pub fn type_letter(st_mode: u32) -> char {
    match st_mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'L',
        libc::S_IFCHR | libc::S_IFBLK => 'D',
        _ => 'S',
    }
}

/// The 11-character change code of an itemized line.
pub fn itemize_code(change: Change, st_mode: u32) -> String {
    let letter = type_letter(st_mode);
    let is_file = letter == 'f';
    let flags = |first: char, c: bool, s: bool, m: &MetaDiff| {
        let on = |b: bool, ch: char| if b { ch } else { '.' };
        [
            first,
            letter,
            on(c, 'c'),
            on(s, 's'),
            on(m.mtime, 't'),
            on(m.perms, 'p'),
            on(m.owner, 'o'),
            on(m.group, 'g'),
            '.',
            on(m.acls, 'a'),
            on(m.xattrs, 'x'),
        ]
        .iter()
        .collect::<String>()
    };
    match change {
        Change::Created if is_file => format!(">{letter}+++++++++"),
        Change::Created => format!("c{letter}+++++++++"),
        Change::HardLink => format!("h{letter}+++++++++"),
        Change::Deleted => "*deleting  ".to_string(),
        Change::Data {
            content,
            size,
            meta,
        } => {
            // Symlinks and devices changed their value. A file's `t` shows only when its mtime
            // differed, as rsync shows it: new content found by --checksum under the same
            // size and mtime is `>fc........`.
            let first = if is_file { '>' } else { 'c' };
            flags(first, content || !is_file, size, &meta)
        }
        Change::Meta(meta) => flags('.', false, false, &meta),
    }
}

/// Escapes a path's bytes for a line of output: control bytes, backslash and bytes that are
/// not UTF-8 become `\#ooo`, as rsync writes them, so that every entry takes exactly one line
/// and the output is text a script can decode.
pub fn escape_path(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let escape = |out: &mut Vec<u8>, b: u8| out.extend_from_slice(format!("\\#{b:03o}").as_bytes());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                let mut buf = [0; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    escape(&mut out, b);
                }
            } else {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        for &b in chunk.invalid() {
            escape(&mut out, b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mode: u32, size: u64, mtime: (i64, i64)) -> Stat {
        Stat {
            dev: 1,
            ino: 1,
            mode,
            nlink: 1,
            uid: 1000,
            gid: 1000,
            rdev: 0,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
        }
    }

    const F: u32 = libc::S_IFREG | 0o644;
    const L: u32 = libc::S_IFLNK | 0o777;
    const D: u32 = libc::S_IFDIR | 0o755;
    const P: u32 = libc::S_IFIFO | 0o644;

    #[test]
    fn decision_table() {
        let t = (1_700_000_000, 500);
        let later = (1_700_000_001, 500);
        let plain = Policy::default();
        let checksum = Policy {
            checksum: true,
            ..plain
        };
        let update = Policy {
            update: true,
            ..plain
        };
        let ignore = Policy {
            ignore_existing: true,
            ..plain
        };
        let window = Policy {
            modify_window_ns: 2_000_000_000,
            ..plain
        };
        use Verdict::*;
        // (policy, src, dst, verdict)
        let table: &[(Policy, Stat, Option<Stat>, Verdict)] = &[
            (plain, stat(F, 10, t), None, Create),
            (plain, stat(F, 10, t), Some(stat(F, 10, t)), Same),
            (plain, stat(F, 10, t), Some(stat(F, 11, t)), Replace),
            (plain, stat(F, 10, t), Some(stat(F, 10, later)), Replace),
            (
                plain,
                stat(F, 10, t),
                Some(stat(F, 10, (t.0, t.1 + 1))),
                Replace,
            ),
            (window, stat(F, 10, t), Some(stat(F, 10, later)), Same),
            (window, stat(F, 10, t), Some(stat(F, 11, later)), Replace),
            (
                checksum,
                stat(F, 10, t),
                Some(stat(F, 10, later)),
                CompareContent,
            ),
            (checksum, stat(F, 10, t), Some(stat(F, 11, t)), Replace),
            (update, stat(F, 10, t), Some(stat(F, 99, later)), Kept),
            (update, stat(F, 10, later), Some(stat(F, 99, t)), Replace),
            (update, stat(F, 10, t), Some(stat(F, 99, t)), Replace),
            (ignore, stat(F, 10, t), Some(stat(L, 3, t)), Kept),
            (ignore, stat(F, 10, t), None, Create),
            (plain, stat(F, 10, t), Some(stat(L, 10, t)), Replace),
            (plain, stat(L, 10, t), Some(stat(L, 10, t)), Same),
            (plain, stat(L, 10, t), Some(stat(D, 10, t)), Replace),
            (plain, stat(P, 0, t), Some(stat(P, 0, later)), Same),
            // --update does not keep a destination of another type.
            (update, stat(F, 10, t), Some(stat(P, 0, later)), Replace),
        ];
        for (policy, src, dst, want) in table {
            assert_eq!(
                decide(src, dst.as_ref(), policy),
                *want,
                "{policy:?}\n src {src:?}\n dst {dst:?}"
            );
        }
    }

    #[test]
    fn xattrs_are_read_when_the_source_changed_since_the_copy() {
        let copied_at = (1_800_000_000, 0);
        let dst = Stat {
            ctime: copied_at,
            ..stat(F, 1, (5, 0))
        };
        let old_src = Stat {
            ctime: (copied_at.0 - 86_400, 0),
            ..stat(F, 1, (5, 0))
        };
        assert!(!must_read_xattrs(&old_src, &dst, false));
        assert!(must_read_xattrs(&old_src, &dst, true));
        // Changed after the copy (an ACL removed), or too close to it to tell apart.
        for later in [copied_at.0 + 3600, copied_at.0 - 60] {
            let src = Stat {
                ctime: (later, 0),
                ..old_src
            };
            assert!(must_read_xattrs(&src, &dst, false), "source ctime {later}");
        }
    }

    #[test]
    fn device_numbers_decide_specials() {
        let t = (5, 0);
        let mut a = stat(libc::S_IFCHR | 0o600, 0, t);
        let mut b = a;
        a.rdev = 0x0103;
        b.rdev = 0x0105;
        assert_eq!(decide(&a, Some(&b), &Policy::default()), Verdict::Replace);
        b.rdev = a.rdev;
        assert_eq!(decide(&a, Some(&b), &Policy::default()), Verdict::Same);
        let block = stat(libc::S_IFBLK | 0o600, 0, t);
        assert_eq!(
            decide(&a, Some(&block), &Policy::default()),
            Verdict::Replace
        );
    }

    #[test]
    fn metadata_differences_depend_on_who_runs() {
        let t = (5, 0);
        let src = Stat {
            uid: 0,
            gid: 50,
            mode: F | libc::S_ISUID | libc::S_ISGID,
            ..stat(F, 1, t)
        };
        let dst = Stat {
            uid: 1000,
            gid: 1000,
            mode: F,
            ..stat(F, 1, (6, 0))
        };
        let root = Expect {
            root: true,
            euid: 0,
            groups: &[],
        };
        let d = root.diff(&src, &dst, 0);
        assert!(d.owner && d.group && d.perms && d.mtime, "{d:?}");
        // An unprivileged user cannot keep the owner, nor group 50, nor the setid bits: the
        // destination already is what such a run would make, apart from the time.
        let user = Expect {
            root: false,
            euid: 1000,
            groups: &[1000],
        };
        let d = user.diff(&src, &dst, 0);
        assert_eq!(
            d,
            MetaDiff {
                mtime: true,
                ..MetaDiff::default()
            }
        );
        assert!(!user.diff(&src, &Stat { mtime: t, ..dst }, 0).any());
        let link = stat(L, 3, t);
        let other_mode = Stat {
            mode: libc::S_IFLNK | 0o700,
            ..link
        };
        assert!(!root.diff(&link, &other_mode, 0).perms);
    }

    #[test]
    fn itemized_codes_read_like_rsync() {
        let none = MetaDiff::default();
        assert_eq!(itemize_code(Change::Created, F), ">f+++++++++");
        assert_eq!(itemize_code(Change::Created, D), "cd+++++++++");
        assert_eq!(itemize_code(Change::Created, L), "cL+++++++++");
        assert_eq!(itemize_code(Change::HardLink, F), "hf+++++++++");
        assert_eq!(itemize_code(Change::Deleted, F), "*deleting  ");
        let data = Change::Data {
            content: false,
            size: true,
            meta: none,
        };
        assert_eq!(itemize_code(data, F), ">f.s.......");
        let by_checksum = Change::Data {
            content: true,
            size: false,
            meta: none,
        };
        assert_eq!(itemize_code(by_checksum, F), ">fc........");
        let perms = MetaDiff {
            perms: true,
            ..none
        };
        assert_eq!(itemize_code(Change::Meta(perms), F), ".f...p.....");
        let all = MetaDiff {
            perms: true,
            owner: true,
            group: true,
            mtime: true,
            acls: true,
            xattrs: true,
        };
        assert_eq!(itemize_code(Change::Meta(all), D), ".d..tpog.ax");
        let target = Change::Data {
            content: false,
            size: false,
            meta: none,
        };
        assert_eq!(itemize_code(target, L), "cLc........");
        for code in [itemize_code(Change::Deleted, F), itemize_code(data, P)] {
            assert_eq!(code.len(), 11);
        }
    }

    #[test]
    fn paths_stay_on_one_line() {
        assert_eq!(
            escape_path(b"a\nb\\c\x7f"),
            b"a\\#012b\\#134c\\#177".to_vec()
        );
        assert_eq!(escape_path("é/x".as_bytes()), "é/x".as_bytes().to_vec());
        assert_eq!(escape_path(b"\xff\xfe"), b"\\#377\\#376".to_vec());
        assert_eq!(escape_path(b"\xc3\xa9\xc3"), b"\xc3\xa9\\#303".to_vec());
    }
}
