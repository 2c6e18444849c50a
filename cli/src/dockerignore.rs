//! `.dockerignore` patterns, matched the way Docker matches them.
//!
//! This mirrors moby's `patternmatcher` package and BuildKit's `dockerignore.ReadAll`, which both the
//! classic builder and BuildKit use:
//!
//! - each line is trimmed; a line that *starts* with `#` is a comment, a blank line is skipped;
//! - a leading `!` makes an exception (re-includes what earlier lines excluded);
//! - the pattern is cleaned like Go's `filepath.Clean` and a leading `/` is dropped, so `/foo`,
//!   `./foo` and `foo/` all mean `foo`;
//! - the glob is Go's `filepath.Match` (`*` and `?` never cross `/`, `[...]` classes negated with
//!   `^`) plus `**`, which matches any number of directories, including none; but, as moby turns
//!   the glob into a Go regular expression by copying `\` and the character after it, a
//!   backslash outside a class is a regular-expression escape: `\*` and `\.` are literal, `\d`
//!   is a digit, `\w` a word character, `\b` a word boundary, `\x41` an `A`, and an escape Go does
//!   not know (`\k`, `\8`) is refused, as `docker build` refuses it ("syntax error in pattern");
//! - a pattern matches a path when it matches the path itself or any of its parent directories, so
//!   `node_modules` excludes everything under it;
//! - the last pattern that matches decides.
//!
//! No crate on crates.io implements these exact semantics (the `ignore` crate follows gitignore,
//! where a pattern without `/` matches at any depth, which Docker's does not), hence this module.

use regex::Regex;

/// A `.dockerignore` line Docker itself would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern `{pattern}`{}: {reason}", line_suffix(*.line))]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// Its 1-based line in the `.dockerignore` file, when it came from one.
    pub line: Option<usize>,
    /// What is wrong with it.
    pub reason: String,
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" on line {l}")).unwrap_or_default()
}

/// The compiled patterns of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern without its `!`.
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

/// moby compiles patterns into one of these; the shortcuts are part of its observable behaviour
/// (`**foo` is a plain suffix test, so it also matches `barfoo`), so they are kept.
#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// `prefix**`: the cleaned pattern without its trailing `**` is a string prefix.
    Prefix,
    /// `**suffix` with no other wildcard: the cleaned pattern without its leading `**`.
    Suffix,
    Regex(Regex),
}

impl Matcher {
    /// Reads the text of a `.dockerignore` file (BuildKit's `ReadAll`) and compiles its patterns.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            // Comments are recognised before trimming, as Docker does: ` #x` is a pattern.
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let (exclusion, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = Pattern::compile(body, exclusion).map_err(|reason| PatternError {
                pattern: line.to_owned(),
                line: Some(index + 1),
                reason,
            })?;
            patterns.push(pattern);
        }
        Ok(Self::from_patterns(patterns))
    }

    /// Compiles patterns given one per item, with `!` for exceptions (moby's `NewPatternMatcher`).
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut compiled = Vec::new();
        for p in patterns {
            let line = p.as_ref().trim();
            if line.is_empty() {
                continue;
            }
            let (exclusion, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = Pattern::compile(body, exclusion).map_err(|reason| PatternError {
                pattern: line.to_owned(),
                line: None,
                reason,
            })?;
            compiled.push(pattern);
        }
        Ok(Self::from_patterns(compiled))
    }

    fn from_patterns(patterns: Vec<Pattern>) -> Self {
        let exclusions = patterns.iter().any(|p| p.exclusion);
        Self {
            patterns,
            exclusions,
        }
    }

    /// Whether the matcher has no patterns at all (no `.dockerignore`, or only comments).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is an exception (`!pattern`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (relative to the context root, `/`-separated, no leading `./`) is excluded:
    /// moby's `MatchesOrParentMatches`.
    pub fn matches(&self, path: &str) -> bool {
        let parent = parent_dir(path);
        let parent_dirs: Vec<&str> = match parent {
            Some(p) => p.split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change a path already excluded, nor an exception one not
            // excluded yet.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit && parent.is_some() {
                let mut prefix = String::with_capacity(path.len());
                for dir in &parent_dirs {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(dir);
                    if pattern.matches(&prefix) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Whether an exception could re-include something strictly under the excluded directory
    /// `dir`, so that a walker must still descend into it. Conservative: true when unsure.
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            // `**` crosses any number of directories and a class may match `/`: assume it can.
            if p.cleaned.contains("**") || p.cleaned.contains('[') {
                return true;
            }
            let parts: Vec<&str> = p.cleaned.split('/').collect();
            // A pattern of no more components than `dir` matches a path under `dir` only through
            // an ancestor, which `dir` shares: it decided `dir` the same way.
            parts.len() > dir_parts.len()
                && parts
                    .iter()
                    .zip(&dir_parts)
                    .all(|(pat, name)| has_wildcard(pat) || pat == name)
        })
    }
}

fn has_wildcard(component: &str) -> bool {
    component.contains(['*', '?', '[', '\\'])
}

/// The parent of a relative `/`-separated path, or None at the top level.
fn parent_dir(path: &str) -> Option<&str> {
    path.rfind('/')
        .map(|i| &path[..i])
        .filter(|p| !p.is_empty())
}

impl Pattern {
    fn compile(body: &str, exclusion: bool) -> Result<Self, String> {
        if body.is_empty() {
            return Err(if exclusion {
                "`!` must be followed by a pattern".to_owned()
            } else {
                "the pattern is empty".to_owned()
            });
        }
        let mut cleaned = clean(body);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        let kind = compile_kind(&cleaned)?;
        Ok(Self {
            cleaned,
            exclusion,
            kind,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            MatchKind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }
}

/// Translates a cleaned pattern into moby's match kinds (its `Pattern.compile`).
fn compile_kind(pattern: &str) -> Result<MatchKind, String> {
    #[derive(PartialEq)]
    enum Ty {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut ty = Ty::Exact;
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    let mut first = true;
    while let Some(ch) = chars.next() {
        let at_start = std::mem::replace(&mut first, false);
        match ch {
            '*' if !in_class => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    // `**/` is the same as `**`.
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        // A trailing `**` accepts everything, as in .gitignore.
                        if ty == Ty::Exact {
                            ty = Ty::Prefix;
                        } else {
                            re.push_str(".*");
                            ty = Ty::Regex;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        ty = Ty::Regex;
                    }
                    if at_start {
                        ty = Ty::Suffix;
                    }
                } else {
                    re.push_str("[^/]*");
                    ty = Ty::Regex;
                }
            }
            '?' if !in_class => {
                re.push_str("[^/]");
                ty = Ty::Regex;
            }
            '\\' if in_class => match chars.next() {
                Some(next) => {
                    re.push_str(&regex::escape(&next.to_string()));
                    ty = Ty::Regex;
                }
                None => return Err("it ends with a lone `\\`".to_owned()),
            },
            '\\' => {
                if chars.peek().is_none() {
                    return Err("it ends with a lone `\\`".to_owned());
                }
                re.push_str(&go_escape(&mut chars)?);
                ty = Ty::Regex;
            }
            '[' if !in_class => {
                in_class = true;
                re.push('[');
                ty = Ty::Regex;
                // `^` negates as in Go; a `]` right after the opening is a member in Go's regexp.
                if chars.peek() == Some(&'^') {
                    chars.next();
                    re.push('^');
                }
            }
            ']' if in_class => {
                in_class = false;
                re.push(']');
            }
            // Characters the Rust regex engine gives a meaning inside classes that Go's does not.
            '[' | '&' | '~' if in_class => {
                re.push('\\');
                re.push(ch);
            }
            _ if in_class => re.push(ch),
            _ => re.push_str(&regex::escape(&ch.to_string())),
        }
    }
    if in_class {
        return Err("a `[` character class is not closed".to_owned());
    }
    re.push('$');
    Ok(match ty {
        Ty::Exact => MatchKind::Exact,
        Ty::Prefix => MatchKind::Prefix,
        Ty::Suffix => MatchKind::Suffix,
        Ty::Regex => MatchKind::Regex(Regex::new(&re).map_err(|e| {
            let e = e.to_string();
            let last = e.lines().last().unwrap_or(&e).trim().to_owned();
            format!(
                "it is not a valid glob ({})",
                last.trim_start_matches("error: ")
            )
        })?),
    })
}

/// The regular expression for `\X` outside a class, as moby builds it: it copies `\` and the next
/// character into a Go regular expression, so `\.` is a dot, `\d` a digit, `\w` a word character,
/// `\b` a word boundary, `\t` a tab, `\x41` an `A`, `\101` (octal) an `A`, `\pL` a letter, and an
/// escape Go's regexp does not know (`\k`, `\8`, `\Q` quoting) fails every build ("syntax error in
/// pattern").
fn go_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let c = chars.next().expect("the caller checked");
    let unknown = |c: char| {
        Err(format!(
            "`\\{c}` is not an escape Docker knows: Docker reads `\\` in a pattern as a regular-expression escape (`\\d` a digit, `\\.` a dot), and `docker build` fails with \"syntax error in pattern\"; write `[{c}]` to mean the character"
        ))
    };
    Ok(match c {
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => regex::escape(&c.to_string()),
        'd' => "[0-9]".into(),
        'D' => "[^0-9]".into(),
        's' => "[\\t\\n\\x0C\\r ]".into(),
        'S' => "[^\\t\\n\\x0C\\r ]".into(),
        'w' => "[0-9A-Za-z_]".into(),
        'W' => "[^0-9A-Za-z_]".into(),
        'b' => "(?-u:\\b)".into(),
        'B' => "(?-u:\\B)".into(),
        'A' => "\\A".into(),
        'z' => "\\z".into(),
        'a' => "\\x07".into(),
        'f' => "\\x0C".into(),
        't' => "\\t".into(),
        'n' => "\\n".into(),
        'r' => "\\r".into(),
        'v' => "\\x0B".into(),
        'x' => {
            let hex: String = (0..2)
                .filter_map(|_| chars.next_if(char::is_ascii_hexdigit))
                .collect();
            if hex.len() != 2 {
                return Err(format!(
                    "`\\x{hex}` is not a hex escape: Docker reads `\\x` as a regular-expression escape needing two hex digits, and `docker build` fails with \"syntax error in pattern\""
                ));
            }
            format!("\\x{hex}")
        }
        'p' | 'P' => match chars.next_if(char::is_ascii_alphabetic) {
            Some(class) => format!("\\{c}{class}"),
            None => return unknown(c),
        },
        '0'..='7' => {
            let mut digits = c.to_string();
            while digits.len() < 3 {
                match chars.next_if(|d| ('0'..='7').contains(d)) {
                    Some(d) => digits.push(d),
                    None => break,
                }
            }
            if c != '0' && digits.len() == 1 {
                return unknown(c);
            }
            let value = u32::from_str_radix(&digits, 8).expect("octal digits");
            regex::escape(&char::from_u32(value).expect("below 512").to_string())
        }
        other => return unknown(other),
    })
}

/// Go's `path.Clean`: the shortest lexically equivalent path (`a/./b/../c/` → `a/c`).
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pattern, one path: mirrors the table of moby's `TestMatches`.
    #[track_caller]
    fn check(pattern: &str, path: &str, excluded: bool) {
        let m = Matcher::new([pattern]).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_eq!(
            m.matches(path),
            excluded,
            "pattern `{pattern}` on path `{path}`"
        );
    }

    /// A whole `.dockerignore` text against several paths.
    #[track_caller]
    fn check_file(text: &str, cases: &[(&str, bool)]) {
        let m = Matcher::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        for (path, excluded) in cases {
            assert_eq!(
                m.matches(path),
                *excluded,
                ".dockerignore {text:?} on path `{path}`"
            );
        }
    }

    #[test]
    fn single_patterns_match_like_moby() {
        // The cases of moby/patternmatcher's TestMatches that apply to clean relative paths.
        let table = [
            ("**", "file", true),
            ("**", "dir/file", true),
            ("**/", "file", true),
            ("**/", "dir/file", true),
            ("**/**", "dir/file", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/dir2/file", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("a\\\\", "a\\", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            // moby's suffix shortcut: `**foo` is a plain string suffix.
            ("**file", "dir/myfile", true),
        ];
        for (pattern, path, excluded) in table {
            check(pattern, path, excluded);
        }
    }

    #[test]
    fn backslashes_are_regular_expression_escapes_as_in_moby() {
        check("file\\d.txt", "file1.txt", true);
        check("file\\d.txt", "filed.txt", false);
        check("a\\wc", "a_c", true);
        check("a\\wc", "a-c", false);
        check("a\\Wc", "a-c", true);
        check("a\\sb", "a b", true);
        check("\\bfoo", "foo", true);
        check("x\\x41", "xA", true);
        check("x\\101", "xA", true);
        check("x\\.y", "x.y", true);
        check("x\\.y", "xzy", false);
        check("a\\pLc", "abc", true);
        check("a\\pLc", "a1c", false);
        for (pattern, names) in [
            ("dir\\keep.txt", "`\\k`"),
            ("a\\8", "`\\8`"),
            ("a\\1", "`\\1`"),
            ("a\\Qb", "`\\Q`"),
            ("a\\xg", "`\\x`"),
        ] {
            let err = Matcher::new([pattern]).unwrap_err().to_string();
            assert!(err.contains(names), "{pattern}: {err}");
            assert!(err.contains("syntax error in pattern"), "{pattern}: {err}");
        }
    }

    #[test]
    fn star_and_question_mark_never_cross_a_slash() {
        check("*", "file", true);
        // `*` matches the top-level directory, and so everything under it.
        check("*", "dir/file", true);
        check("*/file", "dir/file", true);
        check("*/file", "a/b/file", false);
        check("*.go", "main.go", true);
        check("*.go", "cmd/main.go", false);
        check("?/x", "a/x", true);
        check("?/x", "ab/x", false);
        check("a?b", "a/b", false);
    }

    #[test]
    fn a_directory_pattern_matches_everything_under_it() {
        check("node_modules", "node_modules", true);
        check("node_modules", "node_modules/a/b/c.js", true);
        check("node_modules", "src/node_modules/a.js", false);
        check("node_modules/", "node_modules/a.js", true);
        check("docs/*", "docs/build/index.html", true);
        check("target", "targets", false);
    }

    #[test]
    fn patterns_are_cleaned_and_anchored_at_the_root() {
        check("/foo", "foo", true);
        check("./foo", "foo/bar", true);
        check("foo/../bar", "bar", true);
        check("foo/./bar/", "foo/bar/baz", true);
        check("  spaced  ", "spaced", true);
        // Anchored at the root, unlike gitignore.
        check("foo", "dir/foo", false);
    }

    #[test]
    fn exceptions_re_include_and_the_last_match_wins() {
        check_file(
            "*.md\n!README.md\n",
            &[
                ("CHANGES.md", true),
                ("README.md", false),
                ("main.rs", false),
            ],
        );
        check_file(
            "!README.md\n*.md\n",
            &[("README.md", true), ("CHANGES.md", true)],
        );
        check_file(
            "docs\n!docs/keep\n",
            &[
                ("docs", true),
                ("docs/drop.txt", true),
                ("docs/keep", false),
                ("docs/keep/inner.txt", false),
            ],
        );
        // The moby multi-pattern table.
        let cases: [(&[&str], &str, bool); 4] = [
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for (patterns, path, excluded) in cases {
            let m = Matcher::new(patterns).unwrap();
            assert_eq!(m.matches(path), excluded, "{patterns:?} on {path}");
        }
    }

    #[test]
    fn comments_blank_lines_and_byte_order_marks_are_skipped() {
        check_file(
            "\u{feff}# a comment\n\n   \ntarget\r\n #notacomment\n",
            &[
                ("# a comment", false),
                ("target/debug/x", true),
                ("#notacomment", true),
            ],
        );
        assert!(Matcher::parse("# only\n\n").unwrap().is_empty());
    }

    #[test]
    fn exceptions_are_reported_for_the_walker() {
        let m = Matcher::parse("vendor\n!vendor/keep.txt\n").unwrap();
        assert!(m.has_exclusions());
        assert!(m.may_reinclude_under("vendor"));
        assert!(!m.may_reinclude_under("other"));
        let m = Matcher::parse("vendor\n!**/*.go\n").unwrap();
        assert!(m.may_reinclude_under("vendor"));
        let m = Matcher::parse("vendor\n").unwrap();
        assert!(!m.has_exclusions());
        assert!(!m.may_reinclude_under("vendor"));
    }

    #[test]
    fn invalid_patterns_name_themselves_and_their_line() {
        let err = Matcher::parse("ok\n!\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(
            err.to_string(),
            "invalid .dockerignore pattern `!` on line 2: `!` must be followed by a pattern"
        );
        let err = Matcher::parse("a[bc\n").unwrap_err();
        assert!(err.to_string().contains("`a[bc` on line 1"), "{err}");
        assert!(err.to_string().contains("not closed"), "{err}");
        let err = Matcher::new(["x\\"]).unwrap_err();
        assert!(err.to_string().contains("lone `\\`"), "{err}");
    }

    #[test]
    fn clean_follows_go() {
        for (input, expected) in [
            ("", "."),
            (".", "."),
            ("a/", "a"),
            ("./a", "a"),
            ("a//b", "a/b"),
            ("a/./b/../c", "a/c"),
            ("../a", "../a"),
            ("a/../..", ".."),
            ("/", "/"),
            ("/../a", "/a"),
            ("/a/b/", "/a/b"),
        ] {
            assert_eq!(clean(input), expected, "clean({input:?})");
        }
    }
}
