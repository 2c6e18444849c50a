//! Which repositories each team may push to, and the registry logins the farm uses for a team.
//!
//! The farm pushes with credentials (its own Docker config, or a team's `[[team.login]]`), so
//! without rules any token could make it write anywhere those credentials reach: a confused
//! deputy. The config file gives each team `repositories`, patterns of `registry/repository`:
//! - a `*` matches any run of characters within one path segment (not `/`);
//! - a last segment `**` matches one or more segments;
//! - the registry (the first segment) is matched exactly, as image references name it (`docker.io`
//!   for Docker Hub; `app` alone is `docker.io/library/app`).
//!
//! A build is checked at submit, before anything is queued or written: its image's repository
//! and every `--cache-to` registry reference must match a rule of the build's team, else it is
//! refused (`PermissionDenied`) naming the repository and the team's rules. No team with
//! `repositories` in the config keeps the old behaviour: any team pushes anywhere (the coordinator
//! logs that at start). Once one team has rules, a team without any may push nowhere.
//!
//! Logins are handed to the worker with each job of their team, only for the registries that job
//! pushes to or reads caches from, and are used by the coordinator for that team's verification
//! and list push; they live in memory only (never in the state store or a log). The decisions
//! here are pure: [`RepoRules::check`] and [`RepoRules::logins_for`].

use std::collections::BTreeMap;

use manifold_registry::RegistryLogin;

use crate::build::BuildSpec;

/// A `registry/repository` pattern of a team's `repositories`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    registry: String,
    segments: Vec<String>,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    /// Parses `registry/path` with `*` and a final `**`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "repository rule `{text}` {why}; expected REGISTRY/PATH, e.g. registry.example.com/team/* or 127.0.0.1:5000/team/**"
            )
        };
        let mut parts = text.split('/');
        let registry = parts.next().unwrap_or_default().to_owned();
        let segments: Vec<String> = parts.map(str::to_owned).collect();
        if registry.is_empty() || segments.is_empty() {
            return Err(bad("names no registry and repository"));
        }
        if registry.contains('*') {
            return Err(bad("has a wildcard in its registry"));
        }
        for (i, s) in segments.iter().enumerate() {
            if s.is_empty() {
                return Err(bad("has an empty path segment"));
            }
            if s.contains("**") && (s != "**" || i + 1 != segments.len()) {
                return Err(bad("uses `**` other than as its last segment"));
            }
            if !s.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'-' | b'*')
            }) {
                return Err(bad(
                    "has characters a repository cannot have (lowercase letters, digits, `.`, `_`, `-`)",
                ));
            }
        }
        Ok(Self {
            text: text.to_owned(),
            registry,
            segments,
        })
    }

    /// Whether `repository` (`registry/path`) matches.
    pub fn matches(&self, repository: &str) -> bool {
        let Some((registry, path)) = repository.split_once('/') else {
            return false;
        };
        if registry != self.registry {
            return false;
        }
        let path: Vec<&str> = path.split('/').collect();
        let n = self.segments.len();
        if self.segments.last().is_some_and(|s| s == "**") {
            path.len() >= n
                && self.segments[..n - 1]
                    .iter()
                    .zip(&path)
                    .all(|(p, s)| glob(p, s))
        } else {
            path.len() == n && self.segments.iter().zip(&path).all(|(p, s)| glob(p, s))
        }
    }
}

/// `*` matches any run of characters (no `/` reaches here).
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len())
                .filter(|i| text.is_char_boundary(*i))
                .any(|i| glob(rest, &text[i..]))
        }
    }
}

/// One team's rules and logins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeamRules {
    /// Where it may push; `None`: no `repositories` key.
    pub repositories: Option<Vec<Pattern>>,
    /// Registry logins the farm uses for it.
    pub logins: Vec<RegistryLogin>,
}

/// Every team's rules; the default enforces nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoRules {
    teams: BTreeMap<String, TeamRules>,
}

/// A build refused by the repository rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// No rule of the team matches.
    #[error(
        "team `{team}` may not push to {repository} ({what}): no repository rule of the team matches it (its rules: {}); use a repository a rule matches, or ask an admin to add one to the team's `repositories` in the coordinator's config",
        .rules.join(", ")
    )]
    Outside {
        /// The build's team.
        team: String,
        /// `registry/repository` refused.
        repository: String,
        /// `the image` or `--cache-to REF`.
        what: String,
        /// The team's patterns.
        rules: Vec<String>,
    },
    /// The team has no rules while others have.
    #[error(
        "team `{team}` may not push to {repository} ({what}): the coordinator's config gives the team no `repositories`, so it may push nowhere; ask an admin to add `repositories = [\"...\"]` to its [[team]] entry"
    )]
    NoRules {
        /// The build's team.
        team: String,
        /// `registry/repository` refused.
        repository: String,
        /// `the image` or `--cache-to REF`.
        what: String,
    },
    /// A `--cache-to` reference that names no repository.
    #[error(
        "--cache-to ref `{0}` is not a repository reference; expected e.g. registry.example.com/team/cache:main"
    )]
    BadCacheRef(String),
}

impl RepoRules {
    /// Rules from each team's entry (`None` repositories: the key is absent).
    pub fn new(teams: BTreeMap<String, TeamRules>) -> Self {
        Self { teams }
    }

    /// Whether any team has `repositories`: then every push is checked.
    pub fn is_enforced(&self) -> bool {
        self.teams.values().any(|t| t.repositories.is_some())
    }

    /// `team`'s patterns (empty when it has none).
    pub fn patterns(&self, team: &str) -> Vec<String> {
        self.teams
            .get(team)
            .and_then(|t| t.repositories.as_ref())
            .map(|r| r.iter().map(Pattern::to_string).collect())
            .unwrap_or_default()
    }

    /// The registries the farm holds a login for, for `team`.
    pub fn login_registries(&self, team: &str) -> Vec<String> {
        self.teams
            .get(team)
            .map(|t| t.logins.iter().map(|l| l.registry.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether a build of `team` may push where `spec` says: its image's repository, every
    /// further `-t` and every `--cache-to` registry reference.
    pub fn check(&self, team: &str, spec: &BuildSpec) -> Result<(), RuleError> {
        if !self.is_enforced() {
            return Ok(());
        }
        let rules = self.teams.get(team).and_then(|t| t.repositories.as_ref());
        for (what, repository) in push_targets(spec)? {
            match rules {
                None => {
                    return Err(RuleError::NoRules {
                        team: team.to_owned(),
                        repository,
                        what,
                    });
                }
                Some(rules) if !rules.iter().any(|p| p.matches(&repository)) => {
                    return Err(RuleError::Outside {
                        team: team.to_owned(),
                        repository,
                        what,
                        rules: rules.iter().map(Pattern::to_string).collect(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The logins of `team` for the registries a job of `spec` touches: its image's registry and
    /// those of its registry caches (imports and exports).
    pub fn logins_for(&self, team: &str, spec: &BuildSpec) -> Vec<RegistryLogin> {
        let Some(rules) = self.teams.get(team) else {
            return Vec::new();
        };
        let mut hosts = vec![spec.image.registry().to_owned()];
        hosts.extend(spec.extra_tags.iter().map(|t| t.registry().to_owned()));
        for c in spec.flags.cache_from.iter().chain(&spec.flags.cache_to) {
            if let Some(r) = cache_repository(c) {
                hosts.push(r.registry().to_owned());
            }
        }
        rules
            .logins
            .iter()
            .filter(|l| {
                hosts
                    .iter()
                    .any(|h| RegistryLogin::find(std::slice::from_ref(l), h).is_some())
            })
            .cloned()
            .collect()
    }
}

/// The repository of a `type=registry` cache entry.
fn cache_repository(c: &manifold_proto::build_flags::CacheSpec) -> Option<oci_client::Reference> {
    if c.kind != "registry" {
        return None;
    }
    manifold_registry::reference::parse(c.attrs.get("ref")?).ok()
}

/// What a build pushes to: (`the image` / `-t REF` / `--cache-to REF`, `registry/repository`).
fn push_targets(spec: &BuildSpec) -> Result<Vec<(String, String)>, RuleError> {
    let mut out = vec![("the image".to_owned(), spec.repository())];
    for t in &spec.extra_tags {
        out.push((
            format!("-t {}", t.whole()),
            format!("{}/{}", t.registry(), t.repository()),
        ));
    }
    for c in spec.flags.cache_to.iter().filter(|c| c.kind == "registry") {
        let text = c.attrs.get("ref").cloned().unwrap_or_default();
        let r = cache_repository(c).ok_or_else(|| RuleError::BadCacheRef(text.clone()))?;
        out.push((
            format!("--cache-to {text}"),
            format!("{}/{}", r.registry(), r.repository()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_match(pattern: &str, cases: &[(&str, bool)]) {
        let p = Pattern::parse(pattern).unwrap();
        for (repository, expected) in cases {
            assert_eq!(
                p.matches(repository),
                *expected,
                "{pattern} vs {repository}"
            );
        }
    }

    #[test]
    fn patterns_match_segments() {
        check_match(
            "127.0.0.1:5000/a/*",
            &[
                ("127.0.0.1:5000/a/app", true),
                ("127.0.0.1:5000/a/app/x", false),
                ("127.0.0.1:5000/a", false),
                ("127.0.0.1:5000/ab/app", false),
                ("127.0.0.1:5001/a/app", false),
                ("localhost:5000/a/app", false),
            ],
        );
        check_match(
            "r.example/a/**",
            &[
                ("r.example/a/app", true),
                ("r.example/a/x/y/z", true),
                ("r.example/a", false),
                ("r.example/b/app", false),
            ],
        );
        check_match(
            "r.example/a/app-*-cache",
            &[
                ("r.example/a/app-x-cache", true),
                ("r.example/a/app--cache", true),
                ("r.example/a/app-x", false),
            ],
        );
        check_match(
            "docker.io/library/busybox",
            &[
                ("docker.io/library/busybox", true),
                ("docker.io/library/b", false),
            ],
        );
    }

    #[test]
    fn bad_patterns_are_named() {
        for (text, expected) in [
            ("registry.example.com", "names no registry and repository"),
            ("r.example/", "empty path segment"),
            ("*.example/a", "wildcard in its registry"),
            ("r.example/**/a", "`**` other than as its last segment"),
            ("r.example/A/b", "characters a repository cannot have"),
        ] {
            let err = Pattern::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains(&format!("`{text}`")), "{err}");
        }
    }

    fn spec(image: &str, cache_to: &[&str]) -> BuildSpec {
        BuildSpec {
            image: image.parse().unwrap(),
            platforms: vec![],
            context_digest: String::new(),
            dockerfiles: Default::default(),
            build_args: Default::default(),
            target: None,
            labels: Default::default(),
            arch_tags: false,
            arch_tag_template: None,
            flags: manifold_proto::BuildFlags {
                cache_to: cache_to
                    .iter()
                    .map(|c| {
                        manifold_proto::build_flags::CacheSpec::parse("--cache-to", c).unwrap()
                    })
                    .collect(),
                ..Default::default()
            },
            extra_tags: Vec::new(),
        }
    }

    fn login(registry: &str) -> RegistryLogin {
        RegistryLogin {
            registry: registry.into(),
            username: "u".into(),
            password: "p".into(),
        }
    }

    fn rules() -> RepoRules {
        RepoRules::new(BTreeMap::from([
            (
                "a".to_owned(),
                TeamRules {
                    repositories: Some(vec![Pattern::parse("r.example/a/**").unwrap()]),
                    logins: vec![login("r.example"), login("other.example")],
                },
            ),
            ("b".to_owned(), TeamRules::default()),
        ]))
    }

    #[test]
    fn every_tag_of_a_build_is_checked() {
        let rules = rules();
        let mut s = spec("r.example/a/app:1", &[]);
        s.extra_tags = vec![
            "r.example/a/app:latest".parse().unwrap(),
            "r.example/b/app:1".parse().unwrap(),
        ];
        assert_eq!(
            rules.check("a", &s),
            Err(RuleError::Outside {
                team: "a".into(),
                repository: "r.example/b/app".into(),
                what: "-t r.example/b/app:1".into(),
                rules: vec!["r.example/a/**".into()],
            })
        );
        s.extra_tags = vec!["other.example/a/app:1".parse().unwrap()];
        assert!(rules.check("a", &s).is_err());
        let logins = rules.logins_for("a", &s);
        assert!(
            logins.iter().any(|l| l.registry == "other.example"),
            "{logins:?}"
        );
        s.extra_tags = vec!["r.example/a/deep/app:1".parse().unwrap()];
        assert_eq!(rules.check("a", &s), Ok(()));
    }

    #[test]
    fn builds_are_checked_against_their_teams_rules() {
        let rules = rules();
        assert_eq!(rules.check("a", &spec("r.example/a/app:1", &[])), Ok(()));
        assert_eq!(
            rules.check("a", &spec("r.example/b/app:1", &[])),
            Err(RuleError::Outside {
                team: "a".into(),
                repository: "r.example/b/app".into(),
                what: "the image".into(),
                rules: vec!["r.example/a/**".into()],
            })
        );
        let err = rules
            .check(
                "a",
                &spec(
                    "r.example/a/app:1",
                    &["type=registry,ref=r.example/b/cache:x"],
                ),
            )
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "team `a` may not push to r.example/b/cache (--cache-to r.example/b/cache:x): no repository rule"
            ),
            "{err}"
        );
        let err = rules
            .check("b", &spec("r.example/b/app:1", &[]))
            .unwrap_err();
        assert!(matches!(err, RuleError::NoRules { .. }), "{err}");
        assert!(matches!(
            rules.check("undeclared", &spec("r.example/a/app:1", &[])),
            Err(RuleError::NoRules { .. })
        ));
    }

    #[test]
    fn without_any_rule_every_push_is_allowed() {
        let rules = RepoRules::new(BTreeMap::from([(
            "a".to_owned(),
            TeamRules {
                repositories: None,
                logins: vec![login("r.example")],
            },
        )]));
        assert!(!rules.is_enforced());
        assert_eq!(rules.check("b", &spec("anywhere.example/x:1", &[])), Ok(()));
        assert!(!RepoRules::default().is_enforced());
    }

    #[test]
    fn a_job_gets_only_its_teams_logins_for_the_registries_it_touches() {
        let rules = rules();
        let names = |l: Vec<RegistryLogin>| l.into_iter().map(|l| l.registry).collect::<Vec<_>>();
        assert_eq!(
            names(rules.logins_for("a", &spec("r.example/a/app:1", &[]))),
            ["r.example"]
        );
        assert_eq!(
            names(rules.logins_for(
                "a",
                &spec(
                    "r.example/a/app:1",
                    &["type=registry,ref=other.example/a/c"]
                )
            )),
            ["r.example", "other.example"]
        );
        assert!(
            rules
                .logins_for("a", &spec("third.example/a/app:1", &[]))
                .is_empty()
        );
        assert!(
            rules
                .logins_for("b", &spec("r.example/a/app:1", &[]))
                .is_empty()
        );
    }

    #[test]
    fn a_login_never_shows_its_password() {
        let text = format!("{:?}", login("r.example"));
        assert!(!text.contains("\"p\""), "{text}");
    }
}
