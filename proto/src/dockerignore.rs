//! `.dockerignore`, applied byte for byte as `docker build` (BuildKit) applies it.
//!
//! The CLI packs a context with these rules and the worker applies them again to the context tar
//! (to leave out the Dockerfile and `.dockerignore` that the tar always carries), so both use
//! this one module. What Docker does, step by step, and what this module ports:
//!
//! 1. **Reading the file** (BuildKit's `dockerignore.ReadAll`, in the Dockerfile frontend): lines
//!    split at `\n` (a `\r` before it dropped), a UTF-8 byte order mark dropped from the first
//!    line; a line that *starts* with `#` is a comment (before trimming: ` #x` is a pattern);
//!    the line is trimmed of Unicode white space; a leading `!` makes an exception; the rest is
//!    cleaned like Go's `filepath.Clean` and a leading `/` dropped, so `/foo`, `./foo` and `foo/`
//!    all mean `foo`.
//! 2. **Crossing to the client**: the frontend hands the patterns to the client's file sender as
//!    JSON, which replaces every byte that is not UTF-8 with U+FFFD, one per byte. So a Latin-1
//!    `caf\xe9` in a pattern means `caf` + U+FFFD.
//! 3. **Compiling** (moby's `patternmatcher`): each pattern is checked with Go's
//!    `filepath.Match` syntax (an unclosed `[`, a trailing `\`, `[]`, `[a-]` fail the build:
//!    "syntax error in pattern"), then turned into a Go regular expression by copying it
//!    character by character: `*` is `[^/]*`, `?` is `[^/]`, `**` any number of directories
//!    (including none), `.+()|{}$` are escaped, `[` and `]` are copied, and `\` is copied *with
//!    the character after it*, so `\*` and `\.` are literal, `\d` is a digit, `\w` a word
//!    character, `\b` a word boundary, `\x41` an `A`, and an escape Go's regexp does not know
//!    (`\k`, `\8`) fails the build. Patterns with no wildcard are compared as bytes, `foo**` as a
//!    byte prefix and `**foo` as a byte suffix (moby's shortcuts: `**foo` also matches `barfoo`).
//! 4. **Matching names** (Go strings are bytes): exact, prefix and suffix patterns compare bytes;
//!    a regular expression reads a byte that is not UTF-8 as U+FFFD, so `caf?` matches `caf\xe9`
//!    and `caf\xe8` alike, while the exact pattern `caf\xe9` (U+FFFD after step 2) matches only a
//!    file whose name holds U+FFFD itself.
//! 5. **Walking the context** (fsutil's filter, in the client): entries in walk order, each
//!    matched against the patterns with its parent directory's per-pattern results; the last
//!    matching pattern decides; a pattern matching a directory excludes everything under it
//!    unless an exception re-includes it. An excluded directory is entered only when an
//!    exception could re-include something under it: when every exception is a plain path
//!    (no `*?[]^\` apart from a trailing `/*` or `/**`), only if one starts with the directory;
//!    otherwise always. An excluded directory is sent only when something under it is.
//!
//! The Dockerfile and `.dockerignore` get no special treatment in the context: excluded, they
//! are absent from what `COPY . /x` sees (BuildKit reads the Dockerfile through a source of its
//! own). No crate on crates.io implements these semantics (the `ignore` crate follows gitignore,
//! where a pattern without `/` matches at any depth), hence this module.

use regex::Regex;

/// Longest `.dockerignore` line Docker reads: Go's `bufio.Scanner` fails the build on a longer one.
pub const MAX_LINE_BYTES: usize = 64 * 1024 - 1;

/// A `.dockerignore` line Docker itself would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern `{pattern}`{}: {reason}", line_suffix(*.line))]
pub struct PatternError {
    /// The pattern as written (bytes that are not UTF-8 shown as U+FFFD).
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
    /// fsutil's `onlyPrefixExcludeExceptions`: every exception is a plain path, so an excluded
    /// directory needs entering only when an exception starts with it.
    only_prefix_exceptions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern without its `!`.
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

/// moby compiles patterns into one of these; the shortcuts are part of its observable behaviour.
#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// `prefix**`: the cleaned pattern without its trailing `**` is a byte prefix.
    Prefix,
    /// `**suffix`: the cleaned pattern without its leading `**` is a byte suffix.
    Suffix,
    Regex(Regex),
}

impl Matcher {
    /// Reads the bytes of a `.dockerignore` file as Docker does (steps 1 to 3 of the module doc).
    pub fn parse(bytes: &[u8]) -> Result<Self, PatternError> {
        let mut lines: Vec<(usize, String)> = Vec::new();
        for (index, raw) in split_lines(bytes).enumerate() {
            let raw = if index == 0 {
                raw.strip_prefix(b"\xef\xbb\xbf".as_slice()).unwrap_or(raw)
            } else {
                raw
            };
            let text = go_lossy(raw);
            if raw.len() > MAX_LINE_BYTES {
                return Err(PatternError {
                    pattern: shorten(&text),
                    line: Some(index + 1),
                    reason: format!(
                        "the line is {} bytes long and Docker reads at most {MAX_LINE_BYTES} (\"token too long\")",
                        raw.len()
                    ),
                });
            }
            // Comments are recognised before trimming, as Docker does: ` #x` is a pattern.
            if text.starts_with('#') {
                continue;
            }
            let line = text.trim();
            if line.is_empty() {
                continue;
            }
            let (exclusion, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let mut pattern = String::new();
            if !body.is_empty() {
                pattern = clean(body);
                if pattern.len() > 1 && pattern.starts_with('/') {
                    pattern.remove(0);
                }
            }
            if exclusion {
                pattern.insert(0, '!');
            }
            lines.push((index + 1, pattern));
        }
        Self::compile_all(lines.into_iter().map(|(n, p)| (Some(n), p)))
    }

    /// Compiles patterns given one per item, `!` for exceptions (moby's `patternmatcher.New`).
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::compile_all(patterns.into_iter().map(|p| (None, p.as_ref().to_owned())))
    }

    fn compile_all(
        patterns: impl Iterator<Item = (Option<usize>, String)>,
    ) -> Result<Self, PatternError> {
        let mut compiled = Vec::new();
        for (line, p) in patterns {
            let written = p.trim();
            if written.is_empty() {
                continue;
            }
            let error = |reason: String| PatternError {
                pattern: shorten(written),
                line,
                reason,
            };
            let mut p = clean(written);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(error(
                        "`!` must be followed by a pattern (Docker: illegal exclusion pattern)"
                            .to_owned(),
                    ));
                }
                p.remove(0);
            }
            check_glob(&p).map_err(|why| {
                error(format!(
                    "{why}; `docker build` fails on it with \"syntax error in pattern\""
                ))
            })?;
            let kind = compile(&p).map_err(error)?;
            compiled.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        let exclusions = compiled.iter().any(|p| p.exclusion);
        let only_prefix_exceptions = !compiled.iter().any(|p| {
            p.exclusion && trim_trailing_glob(&p.cleaned).contains(['*', '[', ']', '?', '^', '\\'])
        });
        Ok(Self {
            patterns: compiled,
            exclusions,
            only_prefix_exceptions,
        })
    }

    /// Whether the matcher has no patterns at all (no `.dockerignore`, or only comments).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is an exception (`!pattern`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (relative to the context root, `/`-separated, its own bytes) is excluded,
    /// judged alone: moby's `MatchesOrParentMatches`. A walk decides with [`Walk`] instead,
    /// which also knows which directories Docker does not enter.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.matches_using_parent(path, None).0
    }

    /// moby's `MatchesUsingParentResults`: the verdict on `path` and, per pattern, whether it
    /// matched (for the entries under `path`). Without the parent's results, the parent
    /// directories are tried one by one instead.
    fn matches_using_parent(&self, path: &[u8], parent: Option<&[bool]>) -> (bool, Vec<bool>) {
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|p| p[i]);
            if !hit {
                // An inclusion cannot change a path already excluded, nor an exception one not
                // excluded yet.
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && parent.is_none() {
                    hit = parent_prefixes(path).any(|prefix| pattern.matches(prefix));
                }
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }

    fn may_reinclude_under(&self, dir: &[u8]) -> bool {
        if !self.exclusions {
            return false;
        }
        if !self.only_prefix_exceptions {
            return true;
        }
        let mut dir_slash = dir.to_vec();
        dir_slash.push(b'/');
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let mut pat = trim_trailing_glob(&p.cleaned).as_bytes().to_vec();
            pat.push(b'/');
            pat.starts_with(&dir_slash)
        })
    }
}

/// What a walk does with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sent (after any of its directories not sent yet).
    Keep,
    /// Not sent; a directory is still walked, and sent if something under it is.
    Drop,
    /// Not sent, and nothing under it is looked at (a directory Docker does not enter, or an
    /// entry under one).
    Prune,
}

/// fsutil's filtered walk: feed it every entry of the context in walk order (depth first,
/// a directory before its contents, names sorted bytewise), it says what Docker sends.
#[derive(Debug)]
pub struct Walk<'m> {
    matcher: &'m Matcher,
    /// The directories the next entry may be in: path with a trailing `/`, per-pattern results.
    dirs: Vec<(Vec<u8>, Vec<bool>)>,
    /// A directory not entered, with a trailing `/`.
    pruned: Option<Vec<u8>>,
}

impl<'m> Walk<'m> {
    /// A walk of a context whose `.dockerignore` is `matcher`.
    pub fn new(matcher: &'m Matcher) -> Self {
        Self {
            matcher,
            dirs: Vec::new(),
            pruned: None,
        }
    }

    /// Decides on the entry `path` (relative, `/`-separated, no trailing `/`).
    pub fn visit(&mut self, path: &[u8], is_dir: bool) -> Step {
        if let Some(pruned) = &self.pruned {
            if path.starts_with(pruned) {
                return Step::Prune;
            }
            self.pruned = None;
        }
        while let Some((dir, _)) = self.dirs.last() {
            if path.starts_with(dir) {
                break;
            }
            self.dirs.pop();
        }
        let parent = self.dirs.last().map(|(_, info)| info.as_slice());
        let (excluded, info) = self.matcher.matches_using_parent(path, parent);
        let with_slash = || {
            let mut p = path.to_vec();
            p.push(b'/');
            p
        };
        if excluded && is_dir && !self.matcher.may_reinclude_under(path) {
            self.pruned = Some(with_slash());
            return Step::Prune;
        }
        if is_dir {
            self.dirs.push((with_slash(), info));
        }
        if excluded { Step::Drop } else { Step::Keep }
    }
}

/// The prefixes of `path`'s parent directory: `a`, `a/b` for `a/b/c`.
fn parent_prefixes(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let parent_len = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let parent = &path[..parent_len];
    parent
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| i)
        .chain((parent_len > 0).then_some(parent_len))
        .map(move |end| &path[..end])
}

/// fsutil's `patternWithoutTrailingGlob`.
fn trim_trailing_glob(p: &str) -> &str {
    let p = p.strip_suffix("/**").unwrap_or(p);
    p.strip_suffix("/*").unwrap_or(p)
}

/// Go's `bufio.ScanLines`: split at `\n`, drop one `\r` before it; no empty last line.
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trailing = bytes.last() == Some(&b'\n');
    let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if trailing || bytes.is_empty() {
        parts.pop();
    }
    parts
        .into_iter()
        .map(|l| l.strip_suffix(b"\r".as_slice()).unwrap_or(l))
}

/// The text Go makes of bytes where UTF-8 is required (JSON, a regexp reading a string): each
/// byte that does not start a valid UTF-8 sequence becomes one U+FFFD.
pub fn go_lossy(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("checked valid"));
                // A maximal invalid run has a lead byte and continuation bytes only, so Go,
                // reading one byte at a time, replaces each of its bytes.
                let bad = e.error_len().unwrap_or(after.len());
                out.extend(std::iter::repeat_n('\u{fffd}', bad));
                rest = &after[bad..];
            }
        }
    }
}

impl Pattern {
    fn matches(&self, path: &[u8]) -> bool {
        let p = self.cleaned.as_bytes();
        match &self.kind {
            MatchKind::Exact => path == p,
            MatchKind::Prefix => path.starts_with(&p[..p.len() - 2]),
            MatchKind::Suffix => {
                let suffix = &p[2..];
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            MatchKind::Regex(re) => match std::str::from_utf8(path) {
                Ok(text) => re.is_match(text),
                Err(_) => re.is_match(&go_lossy(path)),
            },
        }
    }
}

/// moby's `Pattern.compile`: the Go regular expression a cleaned pattern becomes, and which
/// shortcut moby takes instead when there is one.
fn compile(pattern: &str) -> Result<MatchKind, String> {
    #[derive(PartialEq)]
    enum Ty {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    // Go's text/scanner skips a byte order mark at the very start.
    let mut i = usize::from(chars.first() == Some(&'\u{feff}'));
    let mut ty = Ty::Exact;
    let mut go = String::from("^");
    let mut token = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        let peek = chars.get(i).copied();
        match ch {
            '*' if peek == Some('*') => {
                i += 1;
                // `**/` is the same as `**`.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    // A trailing `**` accepts everything, as in .gitignore.
                    if ty == Ty::Exact {
                        ty = Ty::Prefix;
                    } else {
                        go.push_str(".*");
                        ty = Ty::Regex;
                    }
                } else {
                    go.push_str("(.*/)?");
                    ty = Ty::Regex;
                }
                if token == 0 {
                    ty = Ty::Suffix;
                }
            }
            '*' => {
                go.push_str("[^/]*");
                ty = Ty::Regex;
            }
            '?' => {
                go.push_str("[^/]");
                ty = Ty::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                go.push('\\');
                go.push(ch);
            }
            '\\' => match peek {
                Some(next) => {
                    go.push('\\');
                    go.push(next);
                    i += 1;
                    ty = Ty::Regex;
                }
                None => go.push('\\'),
            },
            '[' | ']' => {
                go.push(ch);
                ty = Ty::Regex;
            }
            _ => go.push(ch),
        }
        token += 1;
    }
    Ok(match ty {
        Ty::Exact => MatchKind::Exact,
        Ty::Prefix => MatchKind::Prefix,
        Ty::Suffix => MatchKind::Suffix,
        Ty::Regex => {
            go.push('$');
            let rust = go_regexp::translate(&go)?;
            MatchKind::Regex(Regex::new(&rust).map_err(|e| {
                let e = e.to_string();
                let last = e.lines().last().unwrap_or(&e).trim().to_owned();
                format!(
                    "it is not a valid pattern ({}); `docker build` fails on it with \"syntax error in pattern\"",
                    last.trim_start_matches("error: ")
                )
            })?)
        }
    })
}

/// Go's `filepath.Match` syntax check, which moby runs on every pattern (`filepath.Match(p, ".")`
/// checks the whole pattern).
fn check_glob(pattern: &str) -> Result<(), String> {
    let mut rest = pattern.as_bytes();
    while !rest.is_empty() {
        // scanChunk: skip stars, then up to the next star outside a class.
        while rest.first() == Some(&b'*') {
            rest = &rest[1..];
        }
        let mut in_range = false;
        let mut end = 0;
        while end < rest.len() {
            match rest[end] {
                b'\\' if end + 1 < rest.len() => end += 1,
                b'[' => in_range = true,
                b']' => in_range = false,
                b'*' if !in_range => break,
                _ => {}
            }
            end += 1;
        }
        check_chunk(&rest[..end])?;
        rest = &rest[end..];
    }
    Ok(())
}

fn check_chunk(chunk: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < chunk.len() {
        match chunk[i] {
            b'[' => {
                i += 1;
                if chunk.get(i) == Some(&b'^') {
                    i += 1;
                }
                let mut ranges = 0;
                loop {
                    if chunk.get(i) == Some(&b']') && ranges > 0 {
                        i += 1;
                        break;
                    }
                    i = class_char(chunk, i)?;
                    if chunk[i] == b'-' {
                        i = class_char(chunk, i + 1)?;
                    }
                    ranges += 1;
                }
            }
            b'\\' => {
                if i + 1 >= chunk.len() {
                    return Err("it ends with a lone `\\`".to_owned());
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Go's `getEsc`: one character of a `[...]` class.
fn class_char(chunk: &[u8], mut i: usize) -> Result<usize, String> {
    match chunk.get(i) {
        None => return Err("a `[` character class is not closed".to_owned()),
        Some(b'-') | Some(b']') => {
            return Err(
                "a `[` character class is empty or has a `-` range without both ends".to_owned(),
            );
        }
        Some(b'\\') => {
            i += 1;
            if i >= chunk.len() {
                return Err("a `[` character class is not closed".to_owned());
            }
        }
        Some(_) => {}
    }
    let width = utf8_width(&chunk[i..]);
    i += width;
    if i >= chunk.len() {
        return Err("a `[` character class is not closed".to_owned());
    }
    Ok(i)
}

fn utf8_width(bytes: &[u8]) -> usize {
    let n = match bytes[0] {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    };
    n.min(bytes.len())
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

/// A pattern cut short for a message.
fn shorten(p: &str) -> String {
    if p.chars().count() <= 200 {
        return p.to_owned();
    }
    let mut s: String = p.chars().take(200).collect();
    s.push('…');
    s
}

/// Go's regular-expression syntax (RE2 as Go's `regexp` reads it) rewritten for the `regex`
/// crate, so that a pattern means here what it means in Docker: the two differ in escapes
/// (`\d`, `\w`, `\s`, `\b` are ASCII in Go, Unicode in the crate; Go has `\Q...\E` and octal),
/// and inside classes (`[` is literal in Go, a nested class in the crate; `&&`, `--`, `~~` are
/// set operations in the crate).
mod go_regexp {
    use std::iter::Peekable;
    use std::str::Chars;

    const DIGIT: &str = "0-9";
    const SPACE: &str = "\\t\\n\\x0C\\r ";
    const WORD: &str = "0-9A-Za-z_";

    pub(super) fn translate(go: &str) -> Result<String, String> {
        let mut out = String::with_capacity(go.len() + 16);
        let mut it = go.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '\\' => escape_outside(&mut it, &mut out)?,
                '[' => class(&mut it, &mut out)?,
                ']' => out.push_str("\\]"),
                _ => out.push(c),
            }
        }
        Ok(out)
    }

    fn escape_outside(it: &mut Peekable<Chars<'_>>, out: &mut String) -> Result<(), String> {
        let Some(c) = it.next() else {
            return Err("it ends with a lone `\\`".to_owned());
        };
        match c {
            'A' => out.push_str("\\A"),
            'z' => out.push_str("\\z"),
            'b' => out.push_str("(?-u:\\b)"),
            'B' => out.push_str("(?-u:\\B)"),
            'Q' => {
                // Literal text up to `\E` or the end.
                let mut literal = String::new();
                while let Some(c) = it.next() {
                    if c == '\\' && it.peek() == Some(&'E') {
                        it.next();
                        break;
                    }
                    literal.push(c);
                }
                literal.chars().for_each(|c| push_literal(out, c));
            }
            'p' | 'P' => out.push_str(&unicode_class(c, it)?),
            'd' => out.push_str(&format!("[{DIGIT}]")),
            'D' => out.push_str(&format!("[^{DIGIT}]")),
            's' => out.push_str(&format!("[{SPACE}]")),
            'S' => out.push_str(&format!("[^{SPACE}]")),
            'w' => out.push_str(&format!("[{WORD}]")),
            'W' => out.push_str(&format!("[^{WORD}]")),
            _ => push_escaped(out, escape(c, it)?),
        }
        Ok(())
    }

    /// A `[...]` class; the `[` is read.
    fn class(it: &mut Peekable<Chars<'_>>, out: &mut String) -> Result<(), String> {
        out.push('[');
        if it.peek() == Some(&'^') {
            it.next();
            out.push('^');
        }
        let unclosed = || "a `[` character class is not closed".to_owned();
        let mut first = true;
        loop {
            let c = it.next().ok_or_else(unclosed)?;
            if c == ']' && !first {
                out.push(']');
                return Ok(());
            }
            first = false;
            match c {
                '[' if it.peek() == Some(&':') => {
                    // A POSIX class `[:alpha:]`, if it is one; else a literal `[`.
                    let rest: String = it.clone().collect();
                    match rest.find(":]") {
                        Some(end) => {
                            let name = &rest[..end + 2];
                            out.push('[');
                            out.push_str(name);
                            for _ in 0..name.chars().count() {
                                it.next();
                            }
                        }
                        None => out.push_str("\\["),
                    }
                }
                '\\' => {
                    let e = it.next().ok_or_else(unclosed)?;
                    match e {
                        'd' => out.push_str(&format!("[{DIGIT}]")),
                        'D' => out.push_str(&format!("[^{DIGIT}]")),
                        's' => out.push_str(&format!("[{SPACE}]")),
                        'S' => out.push_str(&format!("[^{SPACE}]")),
                        'w' => out.push_str(&format!("[{WORD}]")),
                        'W' => out.push_str(&format!("[^{WORD}]")),
                        'p' | 'P' => out.push_str(&unicode_class(e, it)?),
                        _ => push_escaped(out, escape(e, it)?),
                    }
                }
                // A range, unless it would read as the crate's `--` difference.
                '-' if it.peek() != Some(&'-') => out.push('-'),
                _ => push_literal(out, c),
            }
        }
    }

    /// `\p{Greek}`, `\pL`, `\PN`: the same syntax in both.
    fn unicode_class(c: char, it: &mut Peekable<Chars<'_>>) -> Result<String, String> {
        let mut s = format!("\\{c}");
        match it.next() {
            Some('{') => {
                s.push('{');
                loop {
                    match it.next() {
                        Some('}') => break,
                        Some(n) => s.push(n),
                        None => return Err(format!("`\\{c}{{` is not closed")),
                    }
                }
                s.push('}');
            }
            Some(n) => s.push(n),
            None => return Err(format!("`\\{c}` needs a class name")),
        }
        Ok(s)
    }

    /// Go's `parseEscape`: the character an escape stands for.
    fn escape(c: char, it: &mut Peekable<Chars<'_>>) -> Result<char, String> {
        let unknown = |what: String| {
            Err(format!(
                "`\\{what}` is not an escape Docker knows: Docker reads `\\` in a pattern as a regular-expression escape (`\\d` a digit, `\\.` a dot), and `docker build` fails with \"syntax error in pattern\"; write `[{}]` to mean the character",
                what.chars().next().unwrap_or(c)
            ))
        };
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            return Ok(c);
        }
        let octal = |d: &char| ('0'..='7').contains(d);
        Ok(match c {
            '1'..='7' if !it.peek().is_some_and(octal) => return unknown(c.to_string()),
            '0'..='7' => {
                let mut value = c as u32 - '0' as u32;
                for _ in 0..2 {
                    match it.next_if(octal) {
                        Some(d) => value = value * 8 + (d as u32 - '0' as u32),
                        None => break,
                    }
                }
                char::from_u32(value).expect("below 512")
            }
            'x' => {
                let bad = |s: &str| {
                    Err(format!(
                        "`\\x{s}` is not a hex escape: Docker reads `\\x` as a regular-expression escape needing two hex digits or `{{...}}`, and `docker build` fails with \"syntax error in pattern\""
                    ))
                };
                match it.next() {
                    Some('{') => {
                        let mut hex = String::new();
                        loop {
                            match it.next() {
                                Some('}') => break,
                                Some(h) if h.is_ascii_hexdigit() && hex.len() < 8 => hex.push(h),
                                _ => return bad(&format!("{{{hex}")),
                            }
                        }
                        match u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|v| *v <= 0x10ffff)
                        {
                            Some(v) => char::from_u32(v).unwrap_or('\u{fffd}'),
                            None => return bad(&format!("{{{hex}}}")),
                        }
                    }
                    Some(h1) => match it.next() {
                        Some(h2) if h1.is_ascii_hexdigit() && h2.is_ascii_hexdigit() => {
                            char::from_u32(
                                u32::from_str_radix(&format!("{h1}{h2}"), 16).expect("hex"),
                            )
                            .expect("below 256")
                        }
                        h2 => {
                            return bad(&format!(
                                "{h1}{}",
                                h2.map(String::from).unwrap_or_default()
                            ));
                        }
                    },
                    None => return bad(""),
                }
            }
            'a' => '\x07',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            _ => return unknown(c.to_string()),
        })
    }

    fn push_escaped(out: &mut String, c: char) {
        out.push_str(&format!("\\x{{{:x}}}", c as u32));
    }

    fn push_literal(out: &mut String, c: char) {
        // `\<` and `\>` are word boundaries in the crate: those two stay bare.
        if c.is_ascii_punctuation() && c != '<' && c != '>' {
            out.push('\\');
        }
        out.push(c);
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
            m.matches(path.as_bytes()),
            excluded,
            "pattern `{pattern}` on path `{path}`"
        );
    }

    /// A whole `.dockerignore` text against several paths.
    #[track_caller]
    fn check_file(text: &str, cases: &[(&str, bool)]) {
        let m = Matcher::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        for (path, excluded) in cases {
            assert_eq!(
                m.matches(path.as_bytes()),
                *excluded,
                ".dockerignore {text:?} on path `{path}`"
            );
        }
    }

    /// A walk over `entries` (trailing `/` marks a directory): what is sent.
    #[track_caller]
    fn check_walk(text: &str, entries: &[&str], sent: &[&str]) {
        let m = Matcher::parse(text.as_bytes()).unwrap();
        let mut walk = Walk::new(&m);
        let mut kept = Vec::new();
        let mut open: Vec<(&str, bool)> = Vec::new();
        for e in entries {
            let (path, is_dir) = match e.strip_suffix('/') {
                Some(p) => (p, true),
                None => (*e, false),
            };
            while let Some((d, _)) = open.last() {
                if path.starts_with(&format!("{d}/")) {
                    break;
                }
                open.pop();
            }
            let step = walk.visit(path.as_bytes(), is_dir);
            if step == Step::Keep {
                for (d, written) in open.iter_mut() {
                    if !*written {
                        kept.push(format!("{d}/"));
                        *written = true;
                    }
                }
                kept.push(e.to_string());
            }
            if is_dir {
                open.push((path, step == Step::Keep));
            }
        }
        assert_eq!(kept, sent, ".dockerignore {text:?}");
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
            // moby's suffix shortcut: `**foo` is a plain byte suffix.
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
        // `\Q` quotes the rest of Go's expression, moby's `[^/]*` and `$` included.
        check("a\\Q*b", "a[^/]*b$", true);
        check("a\\Q*b", "a*b", false);
        check("a\\_b", "a_b", true);
        // Go's `\d` is ASCII only.
        check("a\\d", "a\u{661}", false);
        for (pattern, names) in [
            ("dir\\keep.txt", "`\\k`"),
            ("a\\8", "`\\8`"),
            ("a\\1", "`\\1`"),
            ("a\\xg", "`\\x"),
            // moby escapes the `{`, so Go reads `\x` followed by `\{`.
            ("x\\x{41}", "`\\x"),
        ] {
            let err = Matcher::new([pattern]).unwrap_err().to_string();
            assert!(err.contains(names), "{pattern}: {err}");
            assert!(err.contains("syntax error in pattern"), "{pattern}: {err}");
        }
    }

    #[test]
    fn classes_are_copied_into_the_regular_expression_as_moby_copies_them() {
        check("[\\d]x", "1x", true);
        check("[a.]", ".", true);
        check("[a.]", "b", false);
        // moby does not know classes: the `*` inside becomes `[^/]*`, and Go reads the class as
        // `[[^/]` (the characters `[`, `^`, `/`) repeated, then a literal `]`.
        check("[*]", "]", true);
        check("[*]", "[^]", true);
        check("[*]", "*", false);
        check("[[:digit:]]", "7", true);
        check("[&&]", "&", true);
        check("[~]", "~", true);
    }

    #[test]
    fn names_are_bytes_and_a_regular_expression_reads_a_bad_byte_as_u_fffd() {
        let m = Matcher::parse(b"caf\xe9\n").unwrap();
        // The pattern crossed JSON: its bad byte is U+FFFD, compared as bytes.
        assert!(!m.matches(b"caf\xe9"));
        assert!(m.matches("caf\u{fffd}".as_bytes()));
        let m = Matcher::parse(b"caf\xe9*\n").unwrap();
        assert!(m.matches(b"caf\xe9"));
        assert!(m.matches(b"caf\xe8"));
        assert!(m.matches("caf\u{fffd}".as_bytes()));
        assert!(!m.matches(b"cafe"));
        let m = Matcher::new(["caf?"]).unwrap();
        for name in [&b"caf\xe9"[..], b"cafe", "caf\u{e9}".as_bytes()] {
            assert!(m.matches(name), "{name:?}");
        }
        assert!(
            !m.matches(b"caf\xe2\x82"),
            "two bad bytes are two characters"
        );
        assert_eq!(go_lossy(b"a\xe2\x82b"), "a\u{fffd}\u{fffd}b");
        assert_eq!(go_lossy(b"\xf0\x9f\x98"), "\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(go_lossy("é".as_bytes()), "é");
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
        check_file("/foo\n", &[("foo", true)]);
        check_file("./foo\n", &[("foo/bar", true)]);
        check_file("foo/../bar\n", &[("bar", true)]);
        check_file("foo/./bar/\n", &[("foo/bar/baz", true)]);
        check_file("  spaced  \n", &[("spaced", true)]);
        // Anchored at the root, unlike gitignore.
        check_file("foo\n", &[("dir/foo", false)]);
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
            assert_eq!(
                m.matches(path.as_bytes()),
                excluded,
                "{patterns:?} on {path}"
            );
        }
    }

    #[test]
    fn a_walk_enters_an_excluded_directory_only_for_a_possible_exception() {
        let tree = [
            "Dockerfile",
            "docs/",
            "docs/drop",
            "docs/keep/",
            "docs/keep/k",
            "vendor/",
            "vendor/x.go",
            "vendor/y.txt",
        ];
        // Plain exceptions: only a directory one of them starts with is entered.
        check_walk(
            "docs\nvendor\n!docs/keep\n",
            &tree,
            &["Dockerfile", "docs/", "docs/keep/", "docs/keep/k"],
        );
        // A wildcard exception: every excluded directory is entered, and sent only with
        // something under it.
        check_walk(
            "docs\nvendor\n!**/*.go\n",
            &tree,
            &["Dockerfile", "vendor/", "vendor/x.go"],
        );
        // Excluded, never re-included: nothing.
        check_walk("*\n", &tree, &[]);
        check_walk(
            "*\n!docs\n",
            &tree,
            &["docs/", "docs/drop", "docs/keep/", "docs/keep/k"],
        );
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
        assert!(Matcher::parse(b"# only\n\n").unwrap().is_empty());
    }

    #[test]
    fn invalid_patterns_name_themselves_and_their_line() {
        let err = Matcher::parse(b"ok\n!\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(
            err.to_string(),
            "invalid .dockerignore pattern `!` on line 2: `!` must be followed by a pattern (Docker: illegal exclusion pattern)"
        );
        let err = Matcher::parse(b"a[bc\n").unwrap_err();
        assert!(err.to_string().contains("`a[bc` on line 1"), "{err}");
        assert!(err.to_string().contains("not closed"), "{err}");
        for bad in ["x\\", "[]a]", "[a-]", "[-a]", "[^]"] {
            let err = Matcher::new([bad]).unwrap_err().to_string();
            assert!(err.contains("syntax error in pattern"), "{bad}: {err}");
        }
        let long = vec![b'a'; MAX_LINE_BYTES + 1];
        let err = Matcher::parse(&long).unwrap_err();
        assert!(err.reason.contains("token too long"), "{err}");
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

    #[test]
    fn parent_prefixes_are_the_ancestors() {
        let p: Vec<&[u8]> = parent_prefixes(b"a/b/c").collect();
        assert_eq!(p, vec![&b"a"[..], b"a/b"]);
        assert_eq!(parent_prefixes(b"a").count(), 0);
    }
}
