//! Which source paths take part in a run: --include/--exclude globs matched on the path
//! relative to SRC, with rsync's rules (first matching rule wins; a pattern without a slash
//! matches the name at any depth; a leading slash anchors it at SRC; a trailing slash matches
//! directories only). Pure: no I/O but reading an --exclude-from file.

use crate::error::shown;
use anyhow::{Context, Result, bail};
use globset::{GlobBuilder, GlobMatcher};
use std::path::Path;

/// Whether a rule keeps or drops what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Include,
    Exclude,
}

/// One rule as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub effect: Effect,
    pub pattern: String,
}

struct Rule {
    effect: Effect,
    dirs_only: bool,
    matcher: GlobMatcher,
}

/// The compiled rules of a run. An empty filter includes everything at no cost.
#[derive(Default)]
pub struct Filter {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} rules)", self.rules.len())
    }
}

impl Filter {
    pub fn new(specs: &[RuleSpec]) -> Result<Self> {
        let rules = specs.iter().map(compile).collect::<Result<Vec<_>>>()?;
        Ok(Filter { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the entry at `rel` (relative to SRC, no leading slash) is excluded.
    pub fn excludes(&self, rel: &Path, is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        self.rules
            .iter()
            .find(|rule| (is_dir || !rule.dirs_only) && rule.matcher.is_match(rel))
            .is_some_and(|rule| rule.effect == Effect::Exclude)
    }
}

fn compile(spec: &RuleSpec) -> Result<Rule> {
    let mut pattern = spec.pattern.as_str();
    if pattern.is_empty() || pattern == "/" {
        bail!("empty filter pattern");
    }
    let dirs_only = pattern.len() > 1 && pattern.ends_with('/');
    if dirs_only {
        pattern = pattern.trim_end_matches('/');
    }
    // Anchored at SRC: the whole relative path must match. Otherwise it may match any tail of
    // whole components: `b/c` matches `b/c` and `a/b/c`, and a bare name matches at any depth.
    let glob = match pattern.strip_prefix('/') {
        Some(anchored) => anchored.to_string(),
        None => format!("{{{pattern},**/{pattern}}}"),
    };
    let matcher = GlobBuilder::new(&glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .with_context(|| format!("invalid pattern {:?}", spec.pattern))?
        .compile_matcher();
    Ok(Rule {
        effect: spec.effect,
        dirs_only,
        matcher,
    })
}

/// Reads an --exclude-from file: one pattern per line; blank lines and lines starting with
/// `#` or `;` are comments; a line `+ PATTERN` is an include and `- PATTERN` an exclude, as in
/// rsync's filter files. `-` reads standard input.
pub fn read_rules_file(path: &Path) -> Result<Vec<RuleSpec>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("read exclude patterns from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("read exclude patterns {}", shown(path)))?
    };
    Ok(parse_rules(&text))
}

pub fn parse_rules(text: &str) -> Vec<RuleSpec> {
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .map(|line| {
            let (effect, pattern) = if let Some(p) = line.strip_prefix("+ ") {
                (Effect::Include, p)
            } else if let Some(p) = line.strip_prefix("- ") {
                (Effect::Exclude, p)
            } else {
                (Effect::Exclude, line)
            };
            RuleSpec {
                effect,
                pattern: pattern.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(specs: &[(&str, &str)]) -> Filter {
        let specs: Vec<RuleSpec> = specs
            .iter()
            .map(|(kind, pattern)| RuleSpec {
                effect: if *kind == "+" {
                    Effect::Include
                } else {
                    Effect::Exclude
                },
                pattern: pattern.to_string(),
            })
            .collect();
        Filter::new(&specs).unwrap()
    }

    /// Rules, a path, whether it is a directory, whether the rules exclude it.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, bool, bool);

    #[test]
    fn rules_match_as_in_rsync() {
        let table: &[Case] = &[
            (&[("-", "*.tmp")], "a.tmp", false, true),
            (&[("-", "*.tmp")], "x/y/a.tmp", false, true),
            (&[("-", "*.tmp")], "a.tmpx", false, false),
            (&[("-", "/top")], "top", false, true),
            (&[("-", "/top")], "x/top", false, false),
            (&[("-", "b/c")], "b/c", false, true),
            (&[("-", "b/c")], "a/b/c", false, true),
            (&[("-", "b/c")], "ab/c", false, false),
            (&[("-", "cache/")], "x/cache", true, true),
            (&[("-", "cache/")], "x/cache", false, false),
            (&[("-", "/data/**")], "data/a/b/c", false, true),
            (&[("-", "/data/*")], "data/a/b", false, false),
            (&[("-", "?.grib")], "a.grib", false, true),
            (&[("-", "?.grib")], "ab.grib", false, false),
            (&[("-", "[ab].x")], "b.x", false, true),
            // First match wins: an earlier include beats a later exclude.
            (&[("+", "*.grib"), ("-", "*")], "t2m.grib", false, false),
            (&[("+", "*.grib"), ("-", "*")], "t2m.nc", false, true),
            (&[("-", "*"), ("+", "*.grib")], "t2m.grib", false, true),
            (&[("+", "*/"), ("-", "*")], "dir", true, false),
            (&[], "anything", false, false),
        ];
        for (specs, path, is_dir, want) in table {
            let got = rules(specs).excludes(Path::new(path), *is_dir);
            assert_eq!(got, *want, "rules {specs:?} on {path} (dir: {is_dir})");
        }
    }

    #[test]
    fn rules_file_syntax() {
        let parsed = parse_rules("# comment\n\n*.tmp\n+ keep.tmp\n- /cache/\n; also a comment\r\n");
        assert_eq!(
            parsed,
            vec![
                RuleSpec {
                    effect: Effect::Exclude,
                    pattern: "*.tmp".into()
                },
                RuleSpec {
                    effect: Effect::Include,
                    pattern: "keep.tmp".into()
                },
                RuleSpec {
                    effect: Effect::Exclude,
                    pattern: "/cache/".into()
                },
            ]
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        let bad = |p: &str| {
            Filter::new(&[RuleSpec {
                effect: Effect::Exclude,
                pattern: p.into(),
            }])
            .is_err()
        };
        assert!(bad(""));
        assert!(bad("[unclosed"));
        assert!(!bad("ok/**"));
    }
}
