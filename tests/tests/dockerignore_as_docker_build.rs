//! `.dockerignore` conformance: for each case of the table, over one fixed tree, what `docker
//! build` (buildx with BuildKit, on the graphdriver daemon) puts in the context that `COPY . /`
//! sees is compared, name by name and byte for byte, with what Manifold ships: the CLI's context
//! tar as the worker serves it to BuildKit (its `.dockerignore` applied again, the Dockerfile
//! apart). Docker's side is its own `--output type=local` export of a `FROM scratch` + `COPY . /`
//! stage, so the expectations are the real tool's and cannot drift. A case where Docker refuses
//! the `.dockerignore` must be refused by Manifold too, with Docker's reason in the message.
//!
//! The tree holds what the issue found differing: names that are not UTF-8 (two that a UTF-8
//! rendering would merge), a FIFO, a symbolic link, names a regular expression reads specially,
//! a name with a newline; the cases hold the Dockerfile and `.dockerignore` excluded by `*`,
//! `.*`, `Docker*`, `Dockerfile` and `*` + `!dir`, backslash escapes (`\d`, `\w`, `\b`, and
//! `dir\keep.txt`, which Docker refuses), a Latin-1 byte in a pattern, exceptions, `**`, a leading
//! `/`, `./`, a trailing `/`, comments and byte order marks.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use manifold_cli::context::ContextSource;
use manifold_tests::Env;

/// The build file every case builds with: the whole context, as `COPY` sees it, is the image.
const DOCKERFILE: &str = "FROM scratch\nCOPY . /\n";

/// One case: its name, the `.dockerignore` bytes (`None`: no file), the Dockerfile path, and
/// names that must (`has`) or must not (`lacks`) be in the context, which keep the table readable
/// and catch both tools drifting the same way. `refused`: Docker refuses the file, saying this.
struct Case {
    name: &'static str,
    ignore: Option<&'static [u8]>,
    dockerfile: &'static str,
    has: &'static [&'static [u8]],
    lacks: &'static [&'static [u8]],
    refused: Option<&'static str>,
}

const fn case(name: &'static str, ignore: &'static [u8]) -> Case {
    Case {
        name,
        ignore: Some(ignore),
        dockerfile: "Dockerfile",
        has: &[],
        lacks: &[],
        refused: None,
    }
}

impl Case {
    const fn has(mut self, names: &'static [&'static [u8]]) -> Self {
        self.has = names;
        self
    }
    const fn lacks(mut self, names: &'static [&'static [u8]]) -> Self {
        self.lacks = names;
        self
    }
    const fn file(mut self, dockerfile: &'static str) -> Self {
        self.dockerfile = dockerfile;
        self
    }
    const fn refused(mut self, reason: &'static str) -> Self {
        self.refused = Some(reason);
        self
    }
}

const CAF_E9: &[u8] = b"caf\xe9";
const CAF_E8: &[u8] = b"caf\xe8";
const CAF_FFFD: &[u8] = "caf\u{fffd}".as_bytes();
const CAF_FFFD2: &[u8] = "caf\u{fffd}\u{fffd}".as_bytes();
const CAFE_ACUTE: &[u8] = "caf\u{e9}".as_bytes();

fn cases() -> Vec<Case> {
    vec![
        Case {
            ignore: None,
            ..case("no .dockerignore", b"")
        }
        .has(&[b"Dockerfile", b"pipe", b"link", CAF_E9, CAF_E8, b"d\xff/in"]),
        case("empty file", b"").has(&[b".dockerignore"]),
        // The Dockerfile and .dockerignore excluded: absent from COPY, the build still runs.
        case("star", b"*").lacks(&[b"Dockerfile", b".dockerignore", b"a.txt"]),
        case("dot star", b".*")
            .lacks(&[b".dockerignore", b".hidden", b".git"])
            .has(&[b"Dockerfile"]),
        case("Docker star", b"Docker*")
            .lacks(&[b"Dockerfile"])
            .has(&[b"docker/Dockerfile"]),
        case("Dockerfile", b"Dockerfile").lacks(&[b"Dockerfile"]),
        case("star then !dir", b"*\n!dir\n")
            .lacks(&[b"Dockerfile", b".dockerignore"])
            .has(&[b"dir/keep.txt", b"dir/sub/deep.txt"]),
        case(".dockerignore itself", b".dockerignore").lacks(&[b".dockerignore"]),
        case("star then !Dockerfile", b"*\n!Dockerfile\n").has(&[b"Dockerfile"]),
        case("Dockerfile with -f docker/Dockerfile", b"Dockerfile")
            .file("docker/Dockerfile")
            .has(&[b"docker/Dockerfile"])
            .lacks(&[b"Dockerfile"]),
        case("docker/ with -f docker/Dockerfile", b"docker")
            .file("docker/Dockerfile")
            .lacks(&[b"docker", b"docker/Dockerfile"]),
        case(
            "docker/Dockerfile with -f docker/Dockerfile",
            b"docker/Dockerfile",
        )
        .file("docker/Dockerfile")
        .lacks(&[b"docker/Dockerfile"]),
        case("**/Dockerfile", b"**/Dockerfile").lacks(&[b"Dockerfile", b"docker/Dockerfile"]),
        // Backslashes are regular-expression escapes.
        case("\\d", b"file\\d.txt")
            .lacks(&[b"file1.txt"])
            .has(&[b"filed.txt"]),
        case("\\w", b"a\\wc").lacks(&[b"a_c"]).has(&[b"a-c"]),
        case("\\b", b"*\\bfoo")
            .lacks(&[b"foo", b"a-foo"])
            .has(&[b"barfoo"]),
        case("\\s", b"a\\sc").lacks(&[b"a c"]),
        case("\\x31", b"file\\x31.txt").lacks(&[b"file1.txt"]),
        case("\\. is a dot", b"a\\.txt").lacks(&[b"a.txt"]),
        case("\\[ and \\]", b"a\\[b\\]c").lacks(&[b"a[b]c"]),
        case("\\*", b"star\\*name").lacks(&[b"star*name"]),
        case("dir\\keep.txt", b"dir\\keep.txt").refused("syntax error in pattern"),
        case("\\8", b"a\\8").refused("syntax error in pattern"),
        case("a trailing \\", b"x\\").refused("syntax error in pattern"),
        case("an unclosed class", b"a[bc").refused("syntax error in pattern"),
        case("[]a]", b"[]a]").refused("syntax error in pattern"),
        case("! alone", b"!").refused("illegal exclusion pattern"),
        // Names that are not UTF-8, and bytes that are not UTF-8 in patterns.
        case("a Latin-1 byte, exact", b"caf\xe9")
            .lacks(&[CAF_FFFD])
            .has(&[CAF_E9, CAF_E8]),
        case("a Latin-1 byte and a star", b"caf\xe9*")
            .lacks(&[CAF_E9, CAF_E8, CAF_FFFD])
            .has(&[CAFE_ACUTE, b"cafe"]),
        case("two bad bytes are two U+FFFD", b"caf\xe2\x82")
            .lacks(&[CAF_FFFD2])
            .has(&[CAF_FFFD]),
        case("? is one character", b"caf?")
            .lacks(&[CAF_E9, CAF_E8, CAF_FFFD, CAFE_ACUTE, b"cafe"])
            .has(&[CAF_FFFD2]),
        case("a bad byte in a directory name, exact", b"d\xff").has(&[b"d\xff/in"]),
        case("a bad byte in a directory name, star", b"d\xff*").lacks(&[b"d\xff/in"]),
        case("d?", b"d?").lacks(&[b"d\xff", b"d\xff/in"]),
        // Special files.
        case("a FIFO", b"pipe").lacks(&[b"pipe"]),
        case("a symbolic link", b"link")
            .lacks(&[b"link"])
            .has(&[b"a.txt"]),
        case("star matches a newline", b"*line").lacks(&[b"new\nline"]),
        // Globs.
        case("*.txt", b"*.txt")
            .lacks(&[b"a.txt"])
            .has(&[b"dir/keep.txt"]),
        case("**/*.txt", b"**/*.txt").lacks(&[b"a.txt", b"dir/keep.txt", b"deep/a/b/c/d.txt"]),
        case("**/*.go", b"**/*.go").lacks(&[b"vendor/x.go", b"src/lib/util.go"]),
        case("?.txt", b"?.txt").lacks(&[b"a.txt", b"b.txt"]),
        case("[ab].txt", b"[ab].txt").lacks(&[b"a.txt", b"b.txt"]),
        case("[^a].txt", b"[^a].txt")
            .lacks(&[b"b.txt"])
            .has(&[b"a.txt"]),
        case("[!a].txt", b"[!a].txt")
            .lacks(&[b"a.txt"])
            .has(&[b"b.txt"]),
        case("[*]", b"[*]").lacks(&[b"]"]).has(&[b"star*name"]),
        case("file[[:digit:]].txt", b"file[[:digit:]].txt").lacks(&[b"file1.txt"]),
        case("x(y).txt", b"x(y).txt").lacks(&[b"x(y).txt"]),
        case("**foo is a suffix", b"**foo").lacks(&[b"foo", b"barfoo", b"a-foo"]),
        case("foo** is a prefix", b"foo**").lacks(&[b"foo", b"foobar"]),
        case("**", b"**").lacks(&[b"Dockerfile", b"a.txt"]),
        case("** then an exception", b"**\n!dir/keep.txt\n").has(&[b"dir/keep.txt"]),
        case("dir/**", b"dir/**").lacks(&[b"dir/keep.txt"]),
        case("dir/*", b"dir/*").lacks(&[b"dir/keep.txt", b"dir/sub/deep.txt"]),
        case("dir/*.txt", b"dir/*.txt")
            .lacks(&[b"dir/keep.txt"])
            .has(&[b"dir/sub/deep.txt"]),
        case("deep/**/d.txt", b"deep/**/d.txt").lacks(&[b"deep/a/b/c/d.txt"]),
        case("deep/a/*/c", b"deep/a/*/c").lacks(&[b"deep/a/b/c/d.txt"]),
        case("**/c", b"**/c").lacks(&[b"deep/a/b/c"]),
        // Exceptions.
        case("*.md then !README.md", b"*.md\n!README.md\n")
            .lacks(&[b"CHANGES.md"])
            .has(&[b"README.md"]),
        case("!README.md then *.md", b"!README.md\n*.md\n").lacks(&[b"README.md"]),
        case("an exception alone", b"!README.md").has(&[b"README.md"]),
        case(
            "vendor then !vendor/keep/me.txt",
            b"vendor\n!vendor/keep/me.txt\n",
        )
        .has(&[b"vendor/keep/me.txt"])
        .lacks(&[b"vendor/x.go"]),
        case("vendor then !**/*.go", b"vendor\n!**/*.go\n")
            .has(&[b"vendor/x.go"])
            .lacks(&[b"vendor/y.txt"]),
        case("vendor then !*/x.go", b"vendor\n!*/x.go\n").has(&[b"vendor/x.go"]),
        case("docs then !docs/keep", b"docs\n!docs/keep\n")
            .has(&[b"docs/keep/k"])
            .lacks(&[b"docs/drop"]),
        case("docs then !docs/keep/*", b"docs\n!docs/keep/*\n").has(&[b"docs/keep/k"]),
        case(
            "dir, !dir/sub, then dir/sub/deep.txt",
            b"dir\n!dir/sub\ndir/sub/deep.txt\n",
        )
        .lacks(&[b"dir/keep.txt", b"dir/sub/deep.txt"]),
        // Cleaning and anchoring.
        case("a leading /", b"/node_modules").lacks(&[b"node_modules"]),
        case("a leading ./", b"./node_modules").lacks(&[b"node_modules"]),
        case("a trailing /", b"node_modules/").lacks(&[b"node_modules/pkg/index.js"]),
        case("anchored at the root", b"node_modules").has(&[b"src/node_modules/a.js"]),
        case("**/node_modules", b"**/node_modules").lacks(&[b"src/node_modules/a.js"]),
        case("cleaned", b"foo/../README.md").lacks(&[b"README.md"]),
        case(".git", b".git").lacks(&[b".git/HEAD"]),
        // Reading the file.
        case("a comment", b"# comment\nREADME.md\n")
            .lacks(&[b"README.md"])
            .has(&[b"#notacomment"]),
        case(" # is a pattern", b" #notacomment\n").lacks(&[b"#notacomment"]),
        case("# is a comment", b"#notacomment\n").has(&[b"#notacomment"]),
        case("spaces are trimmed", b"   README.md   \n").lacks(&[b"README.md"]),
        case("CRLF lines", b"README.md\r\nCHANGES.md\r\n").lacks(&[b"README.md", b"CHANGES.md"]),
        case("a byte order mark", b"\xef\xbb\xbfREADME.md\n").lacks(&[b"README.md"]),
        case("a blank exception", b"a.txt\n!   \n").refused("illegal exclusion pattern"),
    ]
}

/// The fixed tree every case runs on.
fn make_tree(root: &Path) -> anyhow::Result<()> {
    let bytes = |b: &[u8]| root.join(OsStr::from_bytes(b));
    let files: &[&[u8]] = &[
        b"Dockerfile",
        b"docker/Dockerfile",
        b".hidden",
        b".git/HEAD",
        b"README.md",
        b"CHANGES.md",
        b"a.txt",
        b"b.txt",
        b"file1.txt",
        b"filed.txt",
        b"a_c",
        b"a-c",
        b"a c",
        b"foo",
        b"foobar",
        b"barfoo",
        b"a-foo",
        b"#notacomment",
        b"dir/keep.txt",
        b"dir/drop.txt",
        b"dir/sub/deep.txt",
        b"docs/drop",
        b"docs/keep/k",
        b"vendor/x.go",
        b"vendor/y.txt",
        b"vendor/keep/me.txt",
        b"node_modules/pkg/index.js",
        b"src/main.rs",
        b"src/lib/util.go",
        b"src/node_modules/a.js",
        b"deep/a/b/c/d.txt",
        CAF_E9,
        CAF_E8,
        CAF_FFFD,
        CAF_FFFD2,
        CAFE_ACUTE,
        b"cafe",
        b"d\xff/in",
        b"new\nline",
        b"x(y).txt",
        b"a[b]c",
        b"star*name",
        b"]",
    ];
    for name in files {
        let path = bytes(name);
        std::fs::create_dir_all(path.parent().expect("under the root"))?;
        let body = if name.ends_with(b"Dockerfile") {
            DOCKERFILE.as_bytes().to_vec()
        } else {
            name.to_vec()
        };
        std::fs::write(path, body)?;
    }
    std::os::unix::fs::symlink("a.txt", root.join("link"))?;
    let made = std::process::Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()?;
    anyhow::ensure!(made.success(), "mkfifo {}", root.join("pipe").display());
    Ok(())
}

/// An entry of a listing: path bytes, kind (`d`, `f`, `l` with its target, `p`).
type Listing = BTreeSet<(Vec<u8>, String)>;

fn list_dir(root: &Path) -> anyhow::Result<Listing> {
    fn walk(root: &Path, dir: &Path, out: &mut Listing) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.as_os_str().as_bytes().to_vec();
            let t = meta.file_type();
            let kind = if t.is_dir() {
                "d".to_owned()
            } else if t.is_symlink() {
                format!("l {}", std::fs::read_link(&path)?.display())
            } else if t.is_file() {
                "f".to_owned()
            } else {
                use std::os::unix::fs::FileTypeExt as _;
                if t.is_fifo() { "p" } else { "?" }.to_owned()
            };
            out.insert((rel, kind));
            if t.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Listing::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn list_tar(bytes: &[u8]) -> anyhow::Result<Listing> {
    let mut out = Listing::new();
    for entry in tar::Archive::new(bytes).entries()? {
        let entry = entry?;
        let mut path = entry.path_bytes().to_vec();
        if path.ends_with(b"/") {
            path.pop();
        }
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => "d".to_owned(),
            tar::EntryType::Regular => "f".to_owned(),
            tar::EntryType::Symlink => format!(
                "l {}",
                String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
            ),
            tar::EntryType::Fifo => "p".to_owned(),
            other => format!("? {other:?}"),
        };
        out.insert((path, kind));
    }
    Ok(out)
}

/// What `docker build` puts in the context: Ok(listing), or Err(its error output). When the
/// context send fails (a bad pattern), BuildKit sometimes reports the solve as "context canceled"
/// before the session's own error reaches the client: that answer is asked again (at most three
/// times in all), so the comparison sees Docker's real message.
async fn docker_side(
    env: &Env,
    tree: &Path,
    case: &Case,
) -> anyhow::Result<Result<Listing, String>> {
    let mut answer = docker_once(env, tree, case).await?;
    for _ in 1..3 {
        match &answer {
            Err(e) if e.contains("context canceled") => {
                answer = docker_once(env, tree, case).await?;
            }
            _ => break,
        }
    }
    Ok(answer)
}

async fn docker_once(
    env: &Env,
    tree: &Path,
    case: &Case,
) -> anyhow::Result<Result<Listing, String>> {
    let out_dir = tempfile::tempdir()?;
    let output = tokio::process::Command::new("docker")
        .args(["buildx", "build", "--progress", "quiet", "--output"])
        .arg(format!("type=local,dest={}", out_dir.path().display()))
        .arg("-f")
        .arg(tree.join(case.dockerfile))
        .arg(tree)
        .env("DOCKER_HOST", &env.amd64_docker)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !output.status.success() {
        return Ok(Err(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(Ok(list_dir(out_dir.path())?))
}

/// What Manifold ships: the CLI's tar, as the worker serves it to BuildKit.
fn manifold_side(tree: &Path, case: &Case) -> anyhow::Result<Result<Listing, String>> {
    let source = match ContextSource::open(tree, &[case.dockerfile.to_owned()]) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut tar = tempfile::NamedTempFile::new()?;
    source.write_tar(&mut tar)?;
    let view = manifold_worker::context_view::plan(tar.path(), case.dockerfile)?;
    let all = std::fs::read(tar.path())?;
    let mut served = Vec::new();
    for r in &view.ranges {
        served.extend_from_slice(&all[r.start as usize..r.end as usize]);
    }
    // The Dockerfile reaches BuildKit apart: it must be the file itself.
    let d = &view.dockerfile;
    anyhow::ensure!(
        all[d.offset as usize..(d.offset + d.size) as usize] == *DOCKERFILE.as_bytes(),
        "{}: the Dockerfile served is not {}",
        case.name,
        case.dockerfile
    );
    Ok(Ok(list_tar(&served)?))
}

fn show(listing: &Listing) -> String {
    listing
        .iter()
        .map(|(p, k)| format!("{:?} {k}", String::from_utf8_lossy(p)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cases` one after the other on `tree` (each case writes its `.dockerignore` there);
/// returns what went wrong.
async fn run_cases(env: &Env, tree: &Path, cases: &[&Case]) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    for case in cases {
        let ignore = tree.join(".dockerignore");
        match case.ignore {
            Some(bytes) => std::fs::write(&ignore, bytes)?,
            None => {
                let _ = std::fs::remove_file(&ignore);
            }
        }
        let docker = docker_side(env, tree, case).await?;
        let manifold = manifold_side(tree, case)?;
        if let Some(p) = judge(case, &docker, &manifold) {
            failures.push(format!("case {:?}: {p}", case.name));
        }
    }
    Ok(failures)
}

/// What is wrong with a case's outcomes, if anything.
fn judge(
    case: &Case,
    docker: &Result<Listing, String>,
    manifold: &Result<Listing, String>,
) -> Option<String> {
    match (docker, manifold, case.refused) {
        (Err(d), Err(m), Some(reason)) if d.contains(reason) && m.contains(reason) => None,
        (Err(d), Err(m), _) => Some(format!(
            "both refused, but not both saying {:?}:\ndocker: {d}\nmanifold: {m}",
            case.refused
        )),
        (Err(d), Ok(_), _) => Some(format!("docker refused it, manifold did not: {d}")),
        (Ok(_), Err(m), _) => Some(format!("manifold refused it, docker did not: {m}")),
        (Ok(_), Ok(_), Some(_)) => Some("the table says docker refuses it".to_owned()),
        (Ok(d), Ok(m), None) => {
            let names: BTreeSet<&[u8]> = d.iter().map(|(p, _)| p.as_slice()).collect();
            let missing: Vec<_> = case.has.iter().filter(|n| !names.contains(**n)).collect();
            let present: Vec<_> = case.lacks.iter().filter(|n| names.contains(**n)).collect();
            if d != m {
                Some(format!(
                    "docker sent:\n{}\nmanifold sent:\n{}",
                    show(d),
                    show(m)
                ))
            } else if !missing.is_empty() || !present.is_empty() {
                Some(format!(
                    "both agree, but not with the table: missing {missing:?}, present {present:?}"
                ))
            } else {
                None
            }
        }
    }
}

/// How many cases run at once, each on its own copy of the tree.
const PARALLEL: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn the_context_copy_sees_is_the_one_docker_build_sends() -> anyhow::Result<()> {
    let env = Env::from_env();
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let dir = tempfile::tempdir()?;
    let mut trees = Vec::new();
    for i in 0..PARALLEL {
        let tree = dir.path().join(format!("tree{i}"));
        std::fs::create_dir(&tree)?;
        make_tree(&tree)?;
        trees.push(tree);
    }
    let groups: Vec<Vec<&Case>> = (0..PARALLEL)
        .map(|i| cases.iter().skip(i).step_by(PARALLEL).collect())
        .collect();
    let started = Instant::now();
    let results = futures::future::join_all(
        trees
            .iter()
            .zip(&groups)
            .map(|(tree, group)| run_cases(&env, tree, group)),
    )
    .await;
    let mut failures = Vec::new();
    for r in results {
        failures.extend(r?);
    }
    eprintln!(
        "{} .dockerignore cases against docker buildx in {:.1?}",
        cases.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
