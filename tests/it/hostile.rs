//! The hostile tree: one of everything `cp -a` and `rsync -aHAX` preserve (hard links, holes,
//! owners, mode bits, nanosecond times, xattrs, ACLs, special files, odd names, depth, paths
//! longer than PATH_MAX), and `check_copy`, which says everything in which a copy of it is not
//! exact.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, lchown, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::util::{
    ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, ACL_USER_OBJ, Rng, Run, Ts,
    compare_exact, fiemap, find_temp_files, lstat_deep, posix_acl, random_ts, rsync_changes,
    set_mode, set_times, set_xattr, short_path, summary_fields,
};

const MIB: u64 = 1 << 20;

/// Which of the costly or exotic parts to include.
#[derive(Clone)]
pub struct HostileSpec {
    /// Size of the big sparse file (1 MiB of data at each of two offsets); 0 leaves it out.
    pub big_sparse: u64,
    /// Levels of the plain deep directory chain; 0 leaves it out.
    pub deep_levels: usize,
    /// A chain of 255-byte directory names 20 levels deep (paths over 5,000 bytes), with
    /// files, hard links, a symlink and a FIFO at the bottom. rsync cannot walk it.
    pub long_path: bool,
    pub seed: u64,
}

impl HostileSpec {
    /// Everything, at the sizes the acceptance test asks for.
    pub fn full(seed: u64) -> Self {
        HostileSpec {
            big_sparse: 1 << 30,
            deep_levels: 1000,
            long_path: true,
            seed,
        }
    }
}

/// A file with holes, and how many of its bytes are data.
pub struct SparseFile {
    pub rel: PathBuf,
    pub size: u64,
    pub data: u64,
}

/// What a correct copy's summary line must say.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Regular-file inodes (each hard-link group once).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Names beyond the first of every hard-link group, whatever the file type.
    pub hardlinks: u64,
    /// Data bytes: holes do not count, a hard-linked file counts once.
    pub bytes: u64,
}

/// The generated tree and what the checks need to know about it.
pub struct Hostile {
    pub root: PathBuf,
    /// Every hard-link group, by relative name (regular files, a FIFO and a symlink).
    pub groups: Vec<Vec<PathBuf>>,
    pub sparse: Vec<SparseFile>,
    /// The atime the generator set on every inode: reading the source moves it, so only this
    /// list knows what the copy must carry.
    pub atimes: Vec<(PathBuf, Ts)>,
    /// Files checked byte for byte directly (the bottoms of the deep and long chains).
    pub contents: Vec<(PathBuf, Vec<u8>)>,
    pub long_path: bool,
    /// xattrs the source filesystem refused, so the tree lacks them (reported, not fatal).
    pub refused: BTreeSet<String>,
    pub counts: Counts,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Special,
}

/// Metadata applied after the whole tree exists: owner first (chown clears setuid/setgid),
/// then xattrs and ACLs, then the mode; times come last of all.
struct Meta {
    rel: PathBuf,
    kind: Kind,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn own(&mut self, uid: u32, gid: u32) -> &mut Self {
        self.owner = Some((uid, gid));
        self
    }

    fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = Some(mode);
        self
    }

    fn x(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
        self
    }

    fn acl(&mut self, entries: &[(u16, u32, u16)]) -> &mut Self {
        self.x("system.posix_acl_access", &posix_acl(entries))
    }

    fn default_acl(&mut self, entries: &[(u16, u32, u16)]) -> &mut Self {
        self.x("system.posix_acl_default", &posix_acl(entries))
    }
}

/// A relative path from raw bytes (names need not be UTF-8).
pub fn b(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

struct Builder {
    root: PathBuf,
    rng: Rng,
    metas: Vec<Meta>,
    h: Hostile,
}

impl Builder {
    /// A usable path for ROOT/REL, however long (valid while the returned value lives).
    fn at(&self, rel: &Path) -> crate::util::ShortPath {
        short_path(&self.root, rel)
            .unwrap_or_else(|e| panic!("reach {}: {e}", self.root.join(rel).display()))
    }

    fn push(&mut self, rel: PathBuf, kind: Kind) -> &mut Meta {
        self.metas.push(Meta {
            rel,
            kind,
            owner: None,
            mode: None,
            xattrs: Vec::new(),
        });
        self.metas.last_mut().unwrap()
    }

    fn dir(&mut self, rel: impl AsRef<Path>) -> &mut Meta {
        let rel = rel.as_ref().to_path_buf();
        let p = self.at(&rel);
        fs::create_dir(&p.path).unwrap_or_else(|e| panic!("mkdir {}: {e}", rel.display()));
        self.h.counts.dirs += 1;
        self.push(rel, Kind::Dir)
    }

    fn file(&mut self, rel: impl AsRef<Path>, content: &[u8]) -> &mut Meta {
        let rel = rel.as_ref().to_path_buf();
        let p = self.at(&rel);
        fs::write(&p.path, content).unwrap_or_else(|e| panic!("write {}: {e}", rel.display()));
        self.h.counts.files += 1;
        self.h.counts.bytes += content.len() as u64;
        self.push(rel, Kind::File)
    }

    /// A file of `len` random bytes.
    fn random_file(&mut self, rel: impl AsRef<Path>, len: usize) -> &mut Meta {
        let mut buf = vec![0u8; len];
        self.rng.fill(&mut buf);
        self.file(rel, &buf)
    }

    /// A file of `size` bytes whose only data is random bytes at `extents` (offset, length).
    fn sparse(&mut self, rel: impl AsRef<Path>, size: u64, extents: &[(u64, u64)]) -> &mut Meta {
        let rel = rel.as_ref().to_path_buf();
        let p = self.at(&rel);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p.path)
            .unwrap_or_else(|e| panic!("create {}: {e}", rel.display()));
        let mut data = 0;
        for &(off, len) in extents {
            let mut buf = vec![0u8; len as usize];
            self.rng.fill(&mut buf);
            f.write_all_at(&buf, off).unwrap();
            data += len;
        }
        f.set_len(size).unwrap();
        self.h.counts.files += 1;
        self.h.counts.bytes += data;
        self.h.sparse.push(SparseFile {
            rel: rel.clone(),
            size,
            data,
        });
        self.push(rel, Kind::File)
    }

    fn symlink(&mut self, rel: impl AsRef<Path>, target: &[u8]) -> &mut Meta {
        let rel = rel.as_ref().to_path_buf();
        let p = self.at(&rel);
        symlink(OsStr::from_bytes(target), &p.path)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", rel.display()));
        self.h.counts.symlinks += 1;
        self.push(rel, Kind::Symlink)
    }

    /// A FIFO, character or block device (`kind` is S_IFIFO, S_IFCHR or S_IFBLK).
    fn node(&mut self, rel: impl AsRef<Path>, kind: u32, major: u32, minor: u32) -> &mut Meta {
        let rel = rel.as_ref().to_path_buf();
        let p = self.at(&rel);
        let c = CString::new(p.path.as_os_str().as_bytes()).unwrap();
        let dev = libc::makedev(major, minor);
        // SAFETY: `c` is a NUL-terminated path.
        if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) } != 0 {
            panic!("mknod {}: {}", rel.display(), io::Error::last_os_error());
        }
        self.h.counts.specials += 1;
        self.push(rel, Kind::Special)
    }

    /// A unix socket as a server leaves it: bound, then the listener dropped (the socket file
    /// stays). sun_path holds 107 bytes; a longer path gets the node from mknod instead.
    fn socket(&mut self, rel: impl AsRef<Path>) -> &mut Meta {
        let rel = rel.as_ref().to_path_buf();
        let p = self.at(&rel);
        match UnixListener::bind(&p.path) {
            Ok(listener) => drop(listener),
            Err(_) => {
                let c = CString::new(p.path.as_os_str().as_bytes()).unwrap();
                // SAFETY: `c` is a NUL-terminated path.
                if unsafe { libc::mknod(c.as_ptr(), libc::S_IFSOCK | 0o600, 0) } != 0 {
                    panic!(
                        "mknod socket {}: {}",
                        rel.display(),
                        io::Error::last_os_error()
                    );
                }
            }
        }
        self.h.counts.specials += 1;
        self.push(rel, Kind::Special)
    }

    /// A hard-link group: `names[0]` exists already, the others become names of its inode.
    fn group(&mut self, names: &[PathBuf]) {
        for name in &names[1..] {
            let (a, z) = (self.at(&names[0]), self.at(name));
            fs::hard_link(&a.path, &z.path)
                .unwrap_or_else(|e| panic!("link {}: {e}", name.display()));
            self.h.counts.hardlinks += 1;
        }
        self.h.groups.push(names.to_vec());
    }

    /// Owners, xattrs, ACLs and modes; then times: files, symlinks and nodes first, then
    /// directories deepest first and the root last, so nothing changes a time once it is set.
    fn finish(mut self, root_ts: (Ts, Ts)) -> Hostile {
        for m in &self.metas {
            let p = short_path(&self.root, &m.rel).unwrap();
            if let Some((u, g)) = m.owner {
                lchown(&p.path, Some(u), Some(g))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", m.rel.display()));
            }
            for (name, value) in &m.xattrs {
                match set_xattr(&p.path, name, value) {
                    Ok(()) => {}
                    // tmpfs before 6.6 has no user.*; report rather than fail the fixture.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) => {
                        self.h.refused.insert(format!(
                            "{} on {}: {e}",
                            String::from_utf8_lossy(name),
                            m.rel.display()
                        ));
                    }
                    Err(e) => panic!(
                        "setxattr {} on {}: {e}",
                        String::from_utf8_lossy(name),
                        m.rel.display()
                    ),
                }
            }
            if let (Some(mode), true) = (m.mode, m.kind != Kind::Symlink) {
                set_mode(&p.path, mode);
            }
        }
        let mut rng = Rng::new(self.h.counts.files ^ 0x7173);
        let mut stamp = |rel: &Path, i: usize, root: &Path, atimes: &mut Vec<(PathBuf, Ts)>| {
            let a = random_ts(&mut rng);
            let m = match i % 13 {
                // before the epoch and past 2038, with nanoseconds, on every kind of entry
                3 => Ts(-1_234_567_890, 987_654_321),
                7 => Ts(4_102_444_800, 1),
                _ => random_ts(&mut rng),
            };
            let p = short_path(root, rel).unwrap();
            set_times(&p.path, a, m);
            atimes.push((rel.to_path_buf(), a));
        };
        let mut atimes = Vec::new();
        for (i, m) in self.metas.iter().enumerate() {
            if m.kind != Kind::Dir {
                stamp(&m.rel, i, &self.root, &mut atimes);
            }
        }
        let mut dirs: Vec<(usize, &Meta)> = self
            .metas
            .iter()
            .enumerate()
            .filter(|(_, m)| m.kind == Kind::Dir)
            .collect();
        dirs.sort_by_key(|(_, m)| std::cmp::Reverse(m.rel.components().count()));
        for (i, m) in dirs {
            stamp(&m.rel, i, &self.root, &mut atimes);
        }
        set_mode(&self.root, 0o755);
        set_times(&self.root, root_ts.0, root_ts.1);
        atimes.push((PathBuf::new(), root_ts.0));
        self.h.atimes = atimes;
        self.h
    }
}

/// ACL entries: (tag, qualifier, rwx bits).
const FILE_ACL: [(u16, u32, u16); 6] = [
    (ACL_USER_OBJ, 0, 6),
    (ACL_USER, 1234, 6),
    (ACL_GROUP_OBJ, 0, 4),
    (ACL_GROUP, 2345, 4),
    (ACL_MASK, 0, 6),
    (ACL_OTHER, 0, 0),
];
const DIR_ACL: [(u16, u32, u16); 5] = [
    (ACL_USER_OBJ, 0, 7),
    (ACL_USER, 1234, 5),
    (ACL_GROUP_OBJ, 0, 5),
    (ACL_MASK, 0, 5),
    (ACL_OTHER, 0, 0),
];
const DIR_DEFAULT_ACL: [(u16, u32, u16); 7] = [
    (ACL_USER_OBJ, 0, 7),
    (ACL_USER, 4321, 7),
    (ACL_GROUP_OBJ, 0, 5),
    (ACL_GROUP, 2345, 5),
    (ACL_GROUP, 6789, 1),
    (ACL_MASK, 0, 7),
    (ACL_OTHER, 0, 5),
];

/// Builds the hostile tree at `root` (which must not exist). Needs root (chown, mknod,
/// trusted.* xattrs).
pub fn gen_hostile(root: &Path, spec: &HostileSpec) -> Hostile {
    fs::create_dir(root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    let mut g = Builder {
        root: root.to_path_buf(),
        rng: Rng::new(spec.seed),
        metas: Vec::new(),
        h: Hostile {
            root: root.to_path_buf(),
            groups: Vec::new(),
            sparse: Vec::new(),
            atimes: Vec::new(),
            contents: Vec::new(),
            long_path: spec.long_path,
            refused: BTreeSet::new(),
            counts: Counts {
                dirs: 1,
                ..Counts::default()
            },
        },
    };

    // Plain files of telling sizes and modes.
    g.dir("files");
    g.file("files/empty", b"");
    g.random_file("files/one", 1);
    g.random_file("files/page", 4096);
    g.random_file("files/odd", 12_345);
    g.random_file("files/mib3", 3 * MIB as usize + 7);
    g.random_file("files/zero_mode", 100).mode(0o000);
    g.random_file("files/read_only", 10).mode(0o444);

    // Names are bytes: anything but '/' and NUL, up to 255 of them.
    g.dir("names");
    let long_ascii = vec![b'n'; 255];
    let long_utf8: Vec<u8> = "\u{e9}".repeat(127).bytes().chain(*b"x").collect();
    let odd: Vec<&[u8]> = vec![
        b"\xff\xfe\x80 not utf-8",
        b"new\nline",
        b"-rf",
        b"--help",
        b" leading space",
        b"trailing space ",
        b"tab\there",
        b"*?[glob]",
        b"back\\slash",
        b"\x01\x1b[31mcontrol",
        "\u{65e5}\u{672c}\u{8a9e}".as_bytes(),
        b"...",
        b".hidden",
        &long_ascii,
        &long_utf8,
    ];
    for name in &odd {
        g.file(Path::new("names").join(b(name)), name);
    }
    let long_dir = Path::new("names").join(b(&[b'D'; 255]));
    g.dir(&long_dir);
    g.random_file(long_dir.join(b(&[b'f'; 255])), 300);
    g.dir(long_dir.join(b(b"\xfe dir\nwith newline")));
    g.random_file(long_dir.join(b(b"\xfe dir\nwith newline/-")), 5);

    // setuid, setgid and sticky bits on files and directories, owners that keep them.
    g.dir("modes");
    g.random_file("modes/suid", 50).own(4242, 4343).mode(0o4755);
    g.random_file("modes/sgid", 50).own(0, 5555).mode(0o2755);
    g.random_file("modes/both", 50).own(1000, 1000).mode(0o6711);
    g.random_file("modes/sticky_file", 50).mode(0o1644);
    g.random_file("modes/all_bits", 50)
        .own(65534, 65534)
        .mode(0o7777);
    g.dir("modes/sgid_dir").own(0, 5555).mode(0o2775);
    g.random_file("modes/sgid_dir/f", 20).mode(0o640);
    g.dir("modes/sticky_dir").mode(0o1777);
    g.random_file("modes/sticky_dir/f", 20);
    g.dir("modes/both_dir").mode(0o3770);
    g.dir("modes/both_dir/e");
    g.dir("modes/suid_dir").mode(0o4755);

    // Restrictive directories with contents, nested both ways: their modes must be applied
    // after they are filled.
    g.dir("locked").mode(0o000);
    g.random_file("locked/secret", 99).mode(0o600);
    g.dir("locked/ro_inside").mode(0o500);
    g.random_file("locked/ro_inside/f", 10);
    g.dir("locked/ro_inside/empty").mode(0o000);
    g.dir("ro").mode(0o500);
    g.random_file("ro/f", 10).mode(0o444);
    g.dir("ro/locked_inside").mode(0o000);
    g.random_file("ro/locked_inside/f", 11);
    g.dir("ro/sub");
    g.random_file("ro/sub/f", 12);

    // Owners, numeric only: most have no passwd or group entry.
    g.dir("owners");
    g.random_file("owners/no_passwd", 10).own(4242, 4343);
    g.random_file("owners/huge_ids", 10)
        .own(3_000_000_000, 4_000_000_000);
    g.random_file("owners/nobody", 10).own(65534, 65534);
    g.random_file("owners/root_nogroup", 10).own(0, 65534);
    g.random_file("owners/user", 10).own(1000, 1000);
    g.symlink("owners/link", b"no_passwd").own(4242, 4343);
    g.node("owners/fifo", libc::S_IFIFO, 0, 0)
        .own(1000, 2000)
        .mode(0o640);
    g.dir("owners/dir").own(7777, 8888);
    g.random_file("owners/dir/root_file", 10).own(0, 0);

    // Extended attributes in every namespace the kernel lets root write, on every kind of
    // entry that can carry them (user.* only on files and directories).
    g.dir("xattrs");
    let mut big = vec![0u8; 1500];
    g.rng.fill(&mut big);
    g.random_file("xattrs/file", 64)
        .x("user.plain", b"hello")
        .x("user.binary", b"\0\xff\x01\0")
        .x("user.empty", b"")
        .x("user.big", &big)
        .x("user.spaced name", b"v")
        .x("trusted.t", b"secret")
        .x("security.test", b"sec")
        .mode(0o640);
    g.dir("xattrs/dir")
        .x("user.d", b"dir")
        .x("trusted.d", b"\0")
        .x("security.d", b"s");
    g.random_file("xattrs/dir/no_xattrs", 5);
    g.symlink("xattrs/sym", b"file")
        .x("trusted.sym", b"1")
        .x("security.sym", b"2");
    g.node("xattrs/fifo", libc::S_IFIFO, 0, 0)
        .x("trusted.fifo", b"1");
    g.node("xattrs/null", libc::S_IFCHR, 1, 3)
        .x("trusted.dev", b"1")
        .mode(0o666);
    g.socket("xattrs/sock").x("trusted.sock", b"1");

    // POSIX ACLs: an access ACL on a file and a FIFO, access and default ACLs on directories,
    // entries without ACLs inside a directory with a default ACL (a copier that creates them
    // after giving the directory its default ACL makes them inherit one).
    g.dir("acl");
    g.random_file("acl/file_acl", 30).acl(&FILE_ACL).mode(0o660);
    g.node("acl/fifo_acl", libc::S_IFIFO, 0, 0)
        .acl(&FILE_ACL)
        .mode(0o660);
    g.random_file("acl/acl_and_xattr", 30)
        .acl(&FILE_ACL)
        .x("user.with_acl", b"1")
        .own(4242, 4343)
        .mode(0o660);
    g.dir("acl/dir_acl")
        .acl(&DIR_ACL)
        .default_acl(&DIR_DEFAULT_ACL)
        .mode(0o750);
    g.random_file("acl/dir_acl/plain", 7).mode(0o644);
    g.dir("acl/dir_acl/sub").mode(0o755);
    g.random_file("acl/dir_acl/sub/f", 7).mode(0o600);
    g.dir("acl/default_only").default_acl(&DIR_DEFAULT_ACL);

    // Special files are recreated, never opened (a FIFO would block a reader).
    g.dir("special");
    g.node("special/fifo", libc::S_IFIFO, 0, 0).mode(0o644);
    g.node("special/fifo_0000", libc::S_IFIFO, 0, 0).mode(0o000);
    g.socket("special/sock").mode(0o755);
    g.node("special/null", libc::S_IFCHR, 1, 3).mode(0o666);
    g.node("special/loop200", libc::S_IFBLK, 7, 200)
        .own(0, 6)
        .mode(0o660);
    // Numbers past the old 8-bit major / 8-bit minor encoding.
    g.node("special/big_numbers", libc::S_IFCHR, 300, 70_000)
        .mode(0o600);

    // Symlinks: their target bytes are copied, never followed or rewritten.
    g.dir("links");
    g.symlink("links/rel", b"../files/odd");
    g.symlink("links/abs", b"/etc/passwd");
    g.symlink("links/dangling", b"no/such/file");
    g.symlink("links/to_dir", b"../files");
    g.symlink("links/weird", b"\xff\xfe weird\ntarget");
    // Linux allows 4095 bytes; XFS stores at most 1023, so it gets the longest it can hold.
    let long_target = "x/".repeat(2000);
    let p = g.at(Path::new("links/long_target"));
    let fits = match symlink(&long_target, &p.path) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => false,
        Err(e) => panic!("symlink links/long_target: {e}"),
    };
    drop(p);
    if fits {
        fs::remove_file(root.join("links/long_target")).unwrap();
        g.symlink("links/long_target", long_target.as_bytes());
    } else {
        eprintln!("NOTE: a 4000-byte symlink target does not fit; using 1023 bytes");
        g.symlink("links/long_target", &long_target.as_bytes()[..1023]);
    }
    g.symlink("links/loop", b"loop");

    // Holes.
    g.dir("sparse");
    if spec.big_sparse > 0 {
        let size = spec.big_sparse;
        let (a, z) = ((size / 10) & !(MIB - 1), (size / 10 * 9) & !(MIB - 1));
        g.sparse("sparse/big", size, &[(a, MIB), (z, MIB)]);
    }
    g.sparse("sparse/tail_hole", 16 * MIB, &[(0, MIB)]);
    g.sparse("sparse/all_hole", 64 * MIB, &[]);
    g.sparse(
        "sparse/middle_hole",
        8 * MIB,
        &[(0, 64 << 10), (8 * MIB - (64 << 10), 64 << 10)],
    );

    // Hard links: groups of 2 to 4 names; in one directory, across directories (one inside
    // restrictive ones), on an inode with owner, setuid and xattrs, sparse, empty, a FIFO and
    // a symlink (both link()-able, and cp -a and rsync -H keep them linked).
    g.dir("hl");
    g.dir("hl/sub");
    g.random_file("hl/a1", 1000);
    g.group(&[b(b"hl/a1"), b(b"hl/a2")]);
    g.random_file("hl/b1", 2000);
    g.group(&[b(b"hl/b1"), b(b"hl/sub/b2"), b(b"locked/ro_inside/b3")]);
    g.random_file("hl/meta1", 77)
        .own(4242, 4343)
        .x("user.linked", b"yes")
        .acl(&FILE_ACL)
        .mode(0o4750);
    g.group(&[b(b"hl/meta1"), b(b"xattrs/meta2")]);
    g.group(&[b(b"sparse/tail_hole"), b(b"hl/tail_hole_link")]);
    g.file("hl/empty1", b"");
    g.group(&[b(b"hl/empty1"), b(b"hl/empty2"), b(b"hl/sub/empty3")]);
    g.node("special/fifo_l1", libc::S_IFIFO, 0, 0);
    g.group(&[b(b"special/fifo_l1"), b(b"hl/fifo_l2")]);
    g.symlink("links/sym_l1", b"target of a hard-linked symlink");
    g.group(&[b(b"links/sym_l1"), b(b"hl/sym_l2")]);

    // Eight sibling directories with fillers, so that -j8 lists them on different workers;
    // two groups of four names spread across them.
    for w in 0..8 {
        g.dir(format!("w{w}"));
        for f in 0..6 {
            g.random_file(format!("w{w}/f{f}"), 100 + 37 * f);
        }
    }
    g.random_file("w0/c", 4321);
    g.group(&[b(b"w0/c"), b(b"w2/c"), b(b"w5/c"), b(b"w7/c")]);
    g.random_file("w1/d", 1234);
    g.group(&[b(b"w1/d"), b(b"w3/d"), b(b"w4/d"), b(b"w6/d")]);

    // Empty directories, one of them unreadable, two with xattrs or a default ACL only.
    g.dir("empty");
    g.dir("empty/nested_empty");
    g.dir("empty_0000").mode(0o000);
    g.dir("empty_x").x("user.e", b"1").mode(0o700);

    if spec.deep_levels > 0 {
        let mut rel = PathBuf::from("deep");
        g.dir(&rel);
        for _ in 0..spec.deep_levels {
            rel.push("d");
            g.dir(&rel);
        }
        rel.push("bottom");
        let content = format!("{} levels down\n", spec.deep_levels).into_bytes();
        g.file(&rel, &content).mode(0o600);
        g.h.contents.push((rel, content));
    }

    if spec.long_path {
        let mut rel = PathBuf::from("longpath");
        g.dir(&rel);
        for level in 0..20u8 {
            let mut name = format!("{level:02}").into_bytes();
            name.resize(255, b'L');
            rel.push(b(&name));
            g.dir(&rel);
        }
        assert!(
            rel.as_os_str().len() > 5000,
            "the long chain must exceed PATH_MAX"
        );
        g.dir(rel.join("leaf")).mode(0o500);
        g.random_file(rel.join("leaf/f"), 33);
        let mut content = vec![0u8; 10_000];
        g.rng.fill(&mut content);
        g.file(rel.join("bottom"), &content)
            .x("user.deep", b"1")
            .own(4242, 4343)
            .mode(0o640);
        g.h.contents.push((rel.join("bottom"), content));
        g.symlink(rel.join("sym"), b"bottom");
        g.node(rel.join("fifo"), libc::S_IFIFO, 0, 0);
        // Both names deep: linking the second to the first must not go through a path.
        g.random_file(rel.join("hl1"), 500);
        g.group(&[rel.join("hl1"), rel.join("hl2")]);
        g.random_file("longpath/top_link", 600);
        g.group(&[b(b"longpath/top_link"), rel.join("hl3")]);
    }

    let mut trng = Rng::new(spec.seed ^ 0x5eed);
    let root_ts = (random_ts(&mut trng), random_ts(&mut trng));
    g.finish(root_ts)
}

/// The atimes a copy made now must carry: the generator's, except on symlinks. Reading a
/// symlink moves its atime (readlink has no O_NOATIME; cp -a and rsync move it too), so after
/// a first copy a source symlink's atime is whatever that copy's readlink left: taken here,
/// with lstat, which moves nothing. Files and directories keep the generator's value: a
/// copier that opens them without O_NOATIME would move those, which the second copy catches.
pub fn expected_atimes(h: &Hostile) -> Vec<(PathBuf, Ts)> {
    h.atimes
        .iter()
        .map(|(rel, ts)| match lstat_deep(&h.root, rel) {
            Ok(m) if m.file_type().is_symlink() => (rel.clone(), Ts(m.atime(), m.atime_nsec())),
            _ => (rel.clone(), *ts),
        })
        .collect()
}

/// DST's atimes against `expected_atimes` taken just before the copy, read with lstat only
/// (reading or listing would move them). Call before anything else reads DST.
pub fn check_atimes(expected: &[(PathBuf, Ts)], dst: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, want) in expected {
        match lstat_deep(dst, rel) {
            Ok(m) if (m.atime(), m.atime_nsec()) != (want.0, want.1) => out.push(format!(
                "{}: atime {}.{:09} want {}.{:09}",
                rel.display(),
                m.atime(),
                m.atime_nsec(),
                want.0,
                want.1
            )),
            Ok(_) => {}
            Err(e) => out.push(format!("{}: {e}", rel.display())),
        }
    }
    out
}

/// Everything in which DST is not an exact copy of the hostile tree, as readable lines:
/// the rsync oracle (the long chain excluded: rsync cannot walk it) and, for what rsync cannot
/// see, the long chain by `compare_exact`, inode sharing and link counts of every hard-link
/// group, allocated blocks of sparse files, the bottoms of the deep chains, temp files.
pub fn check_copy(h: &Hostile, dst: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let exclude: &[&str] = if h.long_path { &["/longpath"] } else { &[] };
    match rsync_changes(&h.root, dst, exclude) {
        Ok(changes) => {
            let lines: Vec<&str> = changes.lines().collect();
            if !lines.is_empty() {
                out.push(format!(
                    "rsync -aHAXn --checksum --modify-window=-1 lists {} change(s):\n    {}",
                    lines.len(),
                    lines
                        .iter()
                        .take(60)
                        .map(|l| l.escape_debug().to_string())
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
        Err(why) => {
            // No rsync: the second oracle walks the whole tree instead.
            eprintln!("NOTE: {why}; comparing with compare_exact only");
            out.extend(compare_exact(&h.root, dst, Path::new("")));
        }
    }
    if h.long_path {
        out.extend(
            compare_exact(&h.root, dst, Path::new("longpath"))
                .into_iter()
                .map(|d| format!("beyond PATH_MAX: {d}")),
        );
    }
    out.extend(check_groups(h, dst, false));
    out.extend(check_sparse(h, dst));
    for (rel, want) in &h.contents {
        let got = short_path(dst, rel).and_then(|p| fs::read(&p.path));
        match got {
            Ok(got) if &got == want => {}
            Ok(got) => out.push(format!(
                "{}: {} bytes, not the {} written",
                rel.display(),
                got.len(),
                want.len()
            )),
            Err(e) => out.push(format!("{}: {e}", rel.display())),
        }
    }
    let temps = find_temp_files(dst);
    if !temps.is_empty() {
        out.push(format!("temp files left: {temps:?}"));
    }
    out
}

/// Every group is one inode in DST, with as many links as names, and no two groups share one.
/// `files_only` leaves out the groups of FIFOs and symlinks.
pub fn check_groups(h: &Hostile, dst: &Path, files_only: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut owner_of: HashMap<u64, usize> = HashMap::new();
    for (i, group) in h.groups.iter().enumerate() {
        if files_only && !lstat_deep(&h.root, &group[0]).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let stats: Vec<(String, io::Result<fs::Metadata>)> = group
            .iter()
            .map(|rel| (rel.display().to_string(), lstat_deep(dst, rel)))
            .collect();
        let names: Vec<&str> = stats.iter().map(|(n, _)| n.as_str()).collect();
        let inodes: Vec<Option<(u64, u64)>> = stats
            .iter()
            .map(|(_, m)| m.as_ref().ok().map(|m| (m.ino(), m.nlink())))
            .collect();
        if inodes.iter().any(Option::is_none) {
            out.push(format!("hard-link group {names:?}: names missing in DST"));
            continue;
        }
        let distinct: BTreeSet<u64> = inodes.iter().flatten().map(|(ino, _)| *ino).collect();
        if distinct.len() != 1 {
            out.push(format!(
                "hard-link group {names:?}: {} inodes in DST (inode, links) {:?}",
                distinct.len(),
                inodes.iter().flatten().collect::<Vec<_>>()
            ));
            continue;
        }
        let (ino, nlink) = inodes[0].unwrap();
        if nlink != group.len() as u64 {
            out.push(format!(
                "hard-link group {names:?}: link count {nlink} in DST, want {}",
                group.len()
            ));
        }
        if let Some(other) = owner_of.insert(ino, i) {
            out.push(format!(
                "hard-link groups {:?} and {names:?} share inode {ino} in DST",
                h.groups[other]
            ));
        }
    }
    out
}

/// Holes stay holes: DST holds as much written data as SRC (FIEMAP, where the filesystem
/// has it), and allocates far below the size. Allocation may exceed the data: XFS keeps the
/// speculative preallocation past EOF of each data extent (as unwritten extents, which read
/// as holes) once the size is extended over it, as it does for `cp`; that is noted, and
/// allowed up to twice the data.
pub fn check_sparse(h: &Hostile, dst: &Path) -> Vec<String> {
    // Allocation granularity and filesystem metadata differ between filesystems.
    const SLACK: u64 = MIB;
    const UNWRITTEN: u32 = 0x800;
    let mut out = Vec::new();
    for s in &h.sparse {
        let (src, got) = (lstat_deep(&h.root, &s.rel), lstat_deep(dst, &s.rel));
        let (src, got) = match (src, got) {
            (Ok(src), Ok(got)) => (src, got),
            (Err(e), _) | (_, Err(e)) => {
                out.push(format!("{}: {e}", s.rel.display()));
                continue;
            }
        };
        let (sa, da) = (src.blocks() * 512, got.blocks() * 512);
        let data = sa.max(s.data);
        let r = s.rel.display();
        if da > 2 * data + SLACK {
            out.push(format!(
                "{r}: sparse file of {} bytes with {} data bytes allocates {da} bytes in DST, \
                 {sa} in SRC: holes were filled",
                s.size, s.data
            ));
            continue;
        }
        let written = short_path(dst, &s.rel)
            .and_then(|p| fiemap(&p.path))
            .map(|ext| {
                ext.iter()
                    .filter(|e| e.flags & UNWRITTEN == 0)
                    .map(|e| e.length)
                    .sum::<u64>()
            });
        match written {
            Ok(w) if w > data + SLACK => out.push(format!(
                "{r}: {w} bytes of written extents in DST for {} data bytes: holes were \
                 written as zeros",
                s.data
            )),
            _ if da > data + SLACK => eprintln!(
                "NOTE: {r}: DST allocates {da} bytes for {} data bytes ({sa} in SRC); the \
                 excess is unwritten preallocation, not data",
                s.data
            ),
            _ => {}
        }
    }
    out
}

/// The run itself: exit 0, no error or warning line, and a summary that counts the tree
/// (files, dirs, symlinks, special files, hard links, data bytes, failed=0).
pub fn check_run(h: &Hostile, run: &Run) -> Vec<String> {
    let c = &h.counts;
    check_run_fields(
        run,
        &[
            ("files", c.files),
            ("dirs", c.dirs),
            ("symlinks", c.symlinks),
            ("specials", c.specials),
            ("hardlinks", c.hardlinks),
            ("bytes", c.bytes),
            ("failed", 0),
        ],
    )
}

/// What a run over a complete copy must say: nothing written, every non-directory entry
/// found up to date, nothing fixed.
pub fn check_rerun(h: &Hostile, run: &Run) -> Vec<String> {
    let c = &h.counts;
    check_run_fields(
        run,
        &[
            ("files", 0),
            ("dirs", c.dirs),
            ("symlinks", 0),
            ("specials", 0),
            ("hardlinks", 0),
            ("bytes", 0),
            ("copied", 0),
            ("updated", 0),
            ("skipped", c.files + c.symlinks + c.specials + c.hardlinks),
            ("failed", 0),
        ],
    )
}

/// Exit 0, no error or warning line, and these summary fields.
fn check_run_fields(run: &Run, want: &[(&str, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    if run.code() != Some(0) {
        out.push(format!("exit status {:?}, want 0", run.status));
    }
    let bad: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("treecopy: error") || l.starts_with("treecopy: warning"))
        .collect();
    if !bad.is_empty() {
        out.push(format!(
            "{} error/warning line(s):\n    {}",
            bad.len(),
            bad.iter()
                .take(30)
                .map(|l| l.escape_debug().to_string())
                .collect::<Vec<_>>()
                .join("\n    ")
        ));
    }
    match summary_fields(run) {
        None => out.push("no summary line".into()),
        Some(fields) => {
            let wrong: Vec<String> = want
                .iter()
                .filter(|(k, v)| fields.get(*k).map(String::as_str) != Some(&v.to_string()))
                .map(|(k, v)| format!("{k}={} (want {v})", fields.get(*k).map_or("?", |s| s)))
                .collect();
            if !wrong.is_empty() {
                out.push(format!("summary line: {}", wrong.join(" ")));
            }
        }
    }
    out
}

/// Shortens runs of one repeated character (the 255-byte names of the long chain) to
/// `L{x253}`, so a report naming paths of 5,000 bytes stays readable.
pub fn abbreviate(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let mut n = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            n += 1;
        }
        if n > 12 {
            out.push_str(&format!("{c}{{x{n}}}"));
        } else {
            out.extend(std::iter::repeat_n(c, n));
        }
    }
    out
}

/// Panics listing every problem found, grouped by what was checked.
#[track_caller]
pub fn assert_no_problems(problems: &[(String, Vec<String>)]) {
    let failed: Vec<String> = problems
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(what, p)| abbreviate(&format!("== {what}:\n  {}", p.join("\n  "))))
        .collect();
    assert!(
        failed.is_empty(),
        "the copy is not exact:\n{}",
        failed.join("\n")
    );
}
