//! Fault injection: byte budgets per open file, and errors for paths matching a pattern.

use std::sync::atomic::{AtomicU64, Ordering};

use fuser::Errno;

use crate::stats::Op;

/// A path rule from `--fail-path`.
#[derive(Debug, Clone)]
enum Rule {
    /// No glob characters: matches if it occurs anywhere in "/rel/path".
    Substring(Vec<u8>),
    /// Glob without '/': matched against the file name only.
    BaseGlob(Vec<u8>),
    /// Glob with '/': matched against the whole path below the mount root.
    PathGlob(Vec<u8>),
}

impl Rule {
    fn parse(pattern: &str) -> Rule {
        let p = pattern.as_bytes();
        if !p.iter().any(|c| matches!(c, b'*' | b'?' | b'[')) {
            Rule::Substring(p.to_vec())
        } else if p.contains(&b'/') {
            Rule::PathGlob(p.strip_prefix(b"/").unwrap_or(p).to_vec())
        } else {
            Rule::BaseGlob(p.to_vec())
        }
    }

    /// `rel` is relative to the backing root, without a leading '/'.
    fn matches(&self, rel: &[u8]) -> bool {
        match self {
            Rule::Substring(s) => {
                let mut full = Vec::with_capacity(rel.len() + 1);
                full.push(b'/');
                full.extend_from_slice(rel);
                full.windows(s.len().max(1)).any(|w| w == s.as_slice()) || s.is_empty()
            }
            Rule::BaseGlob(g) => {
                let base = rel.rsplit(|&c| c == b'/').next().unwrap_or(rel);
                glob_match(g, base)
            }
            Rule::PathGlob(g) => glob_match(g, rel),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Faults {
    eio_after: Option<u64>,
    enospc_after: Option<u64>,
    rules: Vec<Rule>,
    errno: Errno,
    ops: Vec<Op>,
}

impl Faults {
    pub fn new(
        eio_after: Option<u64>,
        enospc_after: Option<u64>,
        patterns: &[String],
        errno: Errno,
        ops: Vec<Op>,
    ) -> Self {
        Self {
            eio_after,
            enospc_after,
            rules: patterns.iter().map(|p| Rule::parse(p)).collect(),
            errno,
            ops,
        }
    }

    /// Whether any path rule exists, so callers can skip building paths otherwise.
    pub fn has_path_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The errno to fail `op` on `rel` with, if a rule says so.
    pub fn path_fault(&self, op: Op, rel: &[u8]) -> Option<Errno> {
        if self.rules.is_empty() || !self.ops.contains(&op) {
            return None;
        }
        self.rules
            .iter()
            .any(|r| r.matches(rel))
            .then_some(self.errno)
    }

    /// Reserves up to `len` bytes of an open file's write budget.
    ///
    /// Returns how many bytes may be written (a short write when the budget runs out in
    /// the middle, like a disk filling up) or the error once nothing is left.
    pub fn reserve_write(&self, written: &AtomicU64, len: u64) -> Result<u64, Errno> {
        let limit = match (self.eio_after, self.enospc_after) {
            (None, None) => {
                written.fetch_add(len, Ordering::Relaxed);
                return Ok(len);
            }
            (Some(e), None) => (e, Errno::EIO),
            (None, Some(s)) => (s, Errno::ENOSPC),
            (Some(e), Some(s)) if e <= s => (e, Errno::EIO),
            (Some(_), Some(s)) => (s, Errno::ENOSPC),
        };
        let mut cur = written.load(Ordering::Relaxed);
        loop {
            if cur >= limit.0 && len > 0 {
                return Err(limit.1);
            }
            let allowed = len.min(limit.0 - cur.min(limit.0));
            match written.compare_exchange(cur, cur + allowed, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(allowed),
                Err(now) => cur = now,
            }
        }
    }
}

/// Shell-style glob over bytes: `*` and `?` do not cross '/', `**` does, `[a-z]`/`[!x]`
/// are character classes, `\` escapes the next character.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => {
            if p.get(1) == Some(&b'*') {
                let rest = &p[p.iter().take_while(|&&c| c == b'*').count()..];
                // "**/" also matches zero directories, as in most glob dialects.
                if let Some(after) = rest.strip_prefix(b"/")
                    && glob_match(after, s)
                {
                    return true;
                }
                (0..=s.len()).any(|i| glob_match(rest, &s[i..]))
            } else {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if glob_match(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob_match(&p[1..], &s[1..]),
        Some(b'[') => match class_match(&p[1..], s.first().copied()) {
            Some((true, consumed)) => glob_match(&p[1 + consumed..], &s[1..]),
            Some((false, _)) => false,
            // No closing ']': treat '[' as a literal.
            None => s.first() == Some(&b'[') && glob_match(&p[1..], &s[1..]),
        },
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob_match(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob_match(&p[1..], &s[1..]),
    }
}

/// Matches one character against the class starting after '['. Returns (matched, bytes
/// of pattern consumed including ']'), or None if the class is not closed.
fn class_match(p: &[u8], c: Option<u8>) -> Option<(bool, usize)> {
    let (negate, start) = match p.first() {
        Some(b'!') | Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut i = start;
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            let ok = match c {
                Some(c) if c != b'/' => hit != negate,
                _ => false,
            };
            return Some((ok, i + 1));
        }
        first = false;
        let lo = p[i];
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if let Some(c) = c {
                hit |= lo <= c && c <= p[i + 2];
            }
            i += 3;
        } else {
            hit |= c == Some(lo);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.txt", b"a.txt"));
        assert!(!glob_match(b"*.txt", b"d/a.txt"));
        assert!(glob_match(b"**/*.txt", b"d/e/a.txt"));
        assert!(glob_match(b"**/*.txt", b"a.txt"));
        assert!(glob_match(b"d/*/x", b"d/e/x"));
        assert!(!glob_match(b"d/*/x", b"d/e/f/x"));
        assert!(glob_match(b"f?[0-9][!a]", b"fo7b"));
        assert!(!glob_match(b"f?[0-9][!a]", b"fo7a"));
        assert!(glob_match(b"a\\*", b"a*"));
        assert!(glob_match(b"[x", b"[x"));
    }

    #[test]
    fn rules() {
        assert!(Rule::parse("bad").matches(b"dir/very_bad_file"));
        assert!(Rule::parse("/dir/").matches(b"dir/x"));
        assert!(!Rule::parse("/dir/").matches(b"subdir/x"));
        assert!(Rule::parse("*.iso").matches(b"a/b/c.iso"));
        assert!(Rule::parse("/a/*/c.iso").matches(b"a/b/c.iso"));
        assert!(!Rule::parse("a/*.iso").matches(b"a/b/c.iso"));
    }

    #[test]
    fn write_budget() {
        let f = Faults::new(None, Some(10), &[], Errno::EIO, vec![]);
        let w = AtomicU64::new(0);
        assert_eq!(f.reserve_write(&w, 6), Ok(6));
        assert_eq!(f.reserve_write(&w, 6), Ok(4));
        assert_eq!(f.reserve_write(&w, 6), Err(Errno::ENOSPC));
        let f = Faults::new(Some(0), Some(10), &[], Errno::EIO, vec![]);
        assert_eq!(f.reserve_write(&AtomicU64::new(0), 1), Err(Errno::EIO));
    }

    #[test]
    fn path_faults_only_for_listed_ops() {
        let f = Faults::new(None, None, &["*.bad".into()], Errno::EACCES, vec![Op::Open]);
        assert_eq!(f.path_fault(Op::Open, b"x/y.bad"), Some(Errno::EACCES));
        assert_eq!(f.path_fault(Op::Lookup, b"x/y.bad"), None);
        assert_eq!(f.path_fault(Op::Open, b"x/y.good"), None);
    }
}
