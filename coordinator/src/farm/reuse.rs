//! Identical builds reused: which builds count as identical ([`reuse_key`], pure and
//! table-tested), and the farm's index of the builds that can be joined or reused.
//!
//! A build's key is the SHA-256 of: its team, its target repository (`registry/repository`; the
//! tags are not part of it), its context digest, its platforms (as a set), each platform's
//! Dockerfile, its build args, target and labels, and its buildx flags (caches, network, extra
//! hosts, shm size, named contexts). Base images are not resolved by the coordinator, so they are
//! not part of it: a base tag that moved is picked up only by `--pull` or `--no-cache`.
//!
//! A build has no key, and is never joined nor reused, with `--no-cache`, `--pull`, a `--secret`
//! (its value may differ under the same id), or a `--build-context` whose source is not a
//! `docker-image://` reference or a `target:` stage (a Git or HTTP source can change under the
//! same URL).
//!
//! Tenants are adversaries: the team is part of the key, so one team never joins nor reuses
//! another team's build, whatever it knows of it.

use std::collections::{BTreeMap, HashMap};

use manifold_proto::BuildId;
use sha2::Digest as _;

use crate::build::BuildSpec;

/// Identifies what a build produces; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReuseKey(String);

/// The key of `team`'s build of `spec`, or `None` when it must build on its own.
pub fn reuse_key(team: &str, spec: &BuildSpec) -> Option<ReuseKey> {
    let flags = &spec.flags;
    let fixed_contexts = flags
        .build_contexts
        .values()
        .all(|s| s.starts_with("docker-image://") || s.starts_with("target:"));
    if flags.no_cache || flags.pull || !flags.secret_ids.is_empty() || !fixed_contexts {
        return None;
    }
    let mut platforms: Vec<String> = spec.platforms.iter().map(ToString::to_string).collect();
    platforms.sort();
    let dockerfiles: BTreeMap<String, &String> = (spec.dockerfiles.iter())
        .map(|(p, d)| (p.to_string(), d))
        .collect();
    let mut canonical = serde_json::json!({
        "team": team,
        "repository": spec.repository(),
        "context": spec.context_digest,
        "platforms": platforms,
        "dockerfiles": dockerfiles,
        "build_args": spec.build_args,
        "target": spec.target,
        "labels": spec.labels,
        "cache_from": flags.cache_from,
        "cache_to": flags.cache_to,
        "network": flags.network,
        "add_hosts": flags.add_hosts,
        "shm_size": flags.shm_size,
        "build_contexts": flags.build_contexts,
    });
    if !flags.attests.is_empty() {
        // Only when given, so that the keys of builds stored before attestations stay the same.
        canonical["attests"] = serde_json::json!(flags.attests);
    }
    let digest = sha2::Sha256::digest(canonical.to_string().as_bytes());
    Some(ReuseKey(hex::encode(digest)))
}

/// The builds others can join (unfinished, building on their own) and reuse (the latest success
/// per key), and who joined whom.
#[derive(Default)]
pub(super) struct ReuseIndex {
    /// Unfinished builds doing the work, by key.
    pub running: HashMap<ReuseKey, BuildId>,
    /// The latest succeeded build, by key.
    pub succeeded: HashMap<ReuseKey, BuildId>,
    /// Builds that joined each running build, and how many of its events they have seen.
    pub followers: HashMap<BuildId, (usize, Vec<BuildId>)>,
}

impl ReuseIndex {
    /// `follower` stops following (it ended, or goes its own way).
    pub fn unfollow(&mut self, follower: BuildId) {
        for (_, fs) in self.followers.values_mut() {
            fs.retain(|f| *f != follower);
        }
        self.followers.retain(|_, (_, fs)| !fs.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifold_proto::{CacheSpec, Platform};

    fn spec() -> BuildSpec {
        let platforms = vec![Platform::linux_amd64(), Platform::linux_arm64()];
        BuildSpec {
            image: "127.0.0.1:5000/team/app:1.0".parse().unwrap(),
            platforms: platforms.clone(),
            context_digest: format!("sha256:{}", "a".repeat(64)),
            dockerfiles: platforms
                .iter()
                .map(|p| (p.clone(), "Dockerfile".to_owned()))
                .collect(),
            build_args: [("V".to_owned(), "1".to_owned())].into(),
            target: None,
            labels: Default::default(),
            arch_tags: false,
            arch_tag_template: None,
            flags: Default::default(),
            extra_tags: Vec::new(),
        }
    }

    /// Each edit of the build: whether it keeps the key (`Same`), changes it (`Other`), or leaves
    /// the build without one (`None`).
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Same,
        Other,
        None,
    }

    #[track_caller]
    fn check(team: &str, edit: impl FnOnce(&mut BuildSpec), expected: Outcome) {
        let base = reuse_key("mobile", &spec()).expect("a plain build has a key");
        let mut s = spec();
        edit(&mut s);
        let got = match reuse_key(team, &s) {
            None => Outcome::None,
            Some(k) if k == base => Outcome::Same,
            Some(_) => Outcome::Other,
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn what_makes_two_builds_identical() {
        use Outcome::*;
        let p = |s: &str| s.parse::<Platform>().unwrap();
        // Not part of the key: tags, per-arch tags, the platforms' order, the timeout.
        check("mobile", |_| {}, Same);
        check(
            "mobile",
            |s| s.image = "127.0.0.1:5000/team/app:2.0".parse().unwrap(),
            Same,
        );
        check(
            "mobile",
            |s| s.extra_tags = vec!["127.0.0.1:5000/x/y:1".parse().unwrap()],
            Same,
        );
        check("mobile", |s| s.arch_tags = true, Same);
        check(
            "mobile",
            |s| s.arch_tag_template = Some("{tag}-{goarch}".into()),
            Same,
        );
        check("mobile", |s| s.platforms.reverse(), Same);
        // Part of it: the team, the repository, the inputs.
        check("platform", |_| {}, Other);
        check(
            "mobile",
            |s| s.image = "127.0.0.1:5000/team/other:1.0".parse().unwrap(),
            Other,
        );
        check(
            "mobile",
            |s| s.image = "127.0.0.1:5001/team/app:1.0".parse().unwrap(),
            Other,
        );
        check(
            "mobile",
            |s| s.context_digest = format!("sha256:{}", "b".repeat(64)),
            Other,
        );
        check(
            "mobile",
            |s| {
                s.platforms.pop();
                s.dockerfiles.remove(&p("linux/arm64"));
            },
            Other,
        );
        check(
            "mobile",
            |s| {
                s.dockerfiles
                    .insert(p("linux/arm64"), "arm.Dockerfile".into());
            },
            Other,
        );
        check(
            "mobile",
            |s| {
                s.build_args.insert("V".into(), "2".into());
            },
            Other,
        );
        check(
            "mobile",
            |s| {
                s.build_args.insert("W".into(), "1".into());
            },
            Other,
        );
        check("mobile", |s| s.target = Some("test".into()), Other);
        check(
            "mobile",
            |s| {
                s.labels.insert("l".into(), "1".into());
            },
            Other,
        );
        check("mobile", |s| s.flags.network = Some("none".into()), Other);
        check(
            "mobile",
            |s| s.flags.add_hosts = vec!["h:10.0.0.1".into()],
            Other,
        );
        check("mobile", |s| s.flags.shm_size = Some(1 << 20), Other);
        check(
            "mobile",
            |s| s.flags.attests = vec![manifold_proto::build_flags::attest::default_provenance()],
            Other,
        );
        check(
            "mobile",
            |s| {
                s.flags.cache_to = vec![CacheSpec::parse("--cache-to", "127.0.0.1:5000/c").unwrap()]
            },
            Other,
        );
        check(
            "mobile",
            |s| {
                s.flags
                    .build_contexts
                    .insert("base".into(), "docker-image://127.0.0.1:5000/b:1".into());
            },
            Other,
        );
        check(
            "mobile",
            |s| {
                s.flags
                    .build_contexts
                    .insert("t".into(), "target:deps".into());
            },
            Other,
        );
        // Never reused.
        check("mobile", |s| s.flags.no_cache = true, None);
        check("mobile", |s| s.flags.pull = true, None);
        check("mobile", |s| s.flags.secret_ids = vec!["npm".into()], None);
        check(
            "mobile",
            |s| {
                s.flags
                    .build_contexts
                    .insert("src".into(), "https://github.com/a/b.git".into());
            },
            None,
        );
    }
}
