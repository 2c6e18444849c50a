//! `manifold manifest`: the docker manifest workflow done against registries directly, with
//! `manifold_registry` (the same code the coordinator merges builds with), no coordinator and no
//! Docker daemon.
//!
//! - `inspect REF`: a list's platforms, an image's parts, or with `--platform` the image a client
//!   of that platform pulls, pinned by digest;
//! - `create TARGET SOURCE...`: decides the list and prints it; with `--push` puts every image in
//!   the target repository and writes the tag last; nothing is staged locally;
//! - `push`: `create --push` under the name docker users type;
//! - `rm`: accepted for habit's sake; there is no local copy to remove.
//!
//! Results go to stdout (a digest, a table, JSON, raw bytes); what was done goes to stderr.

use std::collections::BTreeMap;
use std::io::Write as _;

use manifold_proto::{Platform, PlatformError, PlatformSpec};
use manifold_registry::create::{self, CreateError, CreateRequest, Plan, Transfer};
use manifold_registry::inspect::{self, BlobRef, Content, IndexEntry, InspectError, Inspected};
use manifold_registry::session::{RegistryConfig, RegistryError, Session};
use manifold_registry::tag_template::{TagTemplate, TagTemplateError};
use manifold_registry::{ListKind, Reference};
use serde::Serialize;

use crate::args::{
    ArgsError, CreateArgs, Format, InspectArgs, MediaTypeArg, RegistryArgs, RmArgs, parse_platforms,
};
use crate::listing::render_table;

/// Why a `manifold manifest` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestCommandError {
    /// A reference that does not parse.
    #[error(
        "`{value}` is not an image reference: {reason}; expected e.g. registry.example.com/team/app:1.0"
    )]
    Reference {
        /// As given.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A bad `--platform`.
    #[error("--platform: {0}")]
    Platform(#[source] PlatformError),
    /// A bad `--platform` list of `--from-arch-tags`.
    #[error(transparent)]
    Platforms(Box<ArgsError>),
    /// A bad `--tag-template`.
    #[error("--tag-template: {0}")]
    TagTemplate(#[source] TagTemplateError),
    /// `--annotate` that is not SOURCE=PLATFORM.
    #[error(
        "--annotate `{value}`: {reason}; expected SOURCE=os/arch[/variant], e.g. app:1.0-arm=linux/arm/v7"
    )]
    Annotate {
        /// As given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// `create`/`push` with no source.
    #[error(
        "{}",
        if *.push {
            "nothing to push: manifold keeps no local copy of lists, so `manifest push` names its sources: \
             `manifold manifest push TARGET SOURCE...` (the same as `manifold manifest create TARGET SOURCE... --push`)"
        } else {
            "no source: name the images to merge (`manifold manifest create TARGET SOURCE...`) or pass --from-arch-tags"
        }
    )]
    NoSources {
        /// Whether the command was `push`.
        push: bool,
    },
    /// Reading failed.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// Talking to a registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Creating the list failed; nothing was written under the target tag.
    #[error("{source}; nothing was written under {target}")]
    Create {
        /// The target as given.
        target: String,
        /// What went wrong.
        source: Box<CreateError>,
    },
    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The registry settings the flags give.
pub fn registry_config(args: &RegistryArgs) -> RegistryConfig {
    RegistryConfig {
        insecure: args.insecure_registries.clone(),
    }
}

fn parse_reference(value: &str) -> Result<Reference, ManifestCommandError> {
    value
        .trim()
        .parse::<Reference>()
        .map_err(|e| ManifestCommandError::Reference {
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// An index entry as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryView {
    /// As written in the list (`linux/arm64/v8`, `unknown/unknown`).
    pub platform: String,
    /// Digest of the child.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// An attestation (by its annotation or in-toto artifact type).
    pub attestation: bool,
    /// Its annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl From<&IndexEntry> for EntryView {
    fn from(e: &IndexEntry) -> Self {
        Self {
            platform: e.platform_text(),
            digest: e.digest.clone(),
            size: e.size,
            media_type: e.media_type.clone(),
            attestation: e.is_attestation(),
            annotations: e.annotations.clone(),
        }
    }
}

/// What `manifold manifest inspect` prints: a list with its entries, or an image with its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestView {
    /// The reference as asked.
    pub reference: String,
    /// `registry/repository@digest`: what `docker pull` takes to get exactly this manifest.
    pub pinned: String,
    /// Digest of the manifest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// For an image: its platform (as its config, or the list entry, declares it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// With `--platform`: the platform asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_for: Option<String>,
    /// With `--platform`: whether the image is of exactly that platform (else a compatible one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
    /// With `--platform`: the list the image was chosen from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_digest: Option<String>,
    /// For a list: its entries, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<EntryView>>,
    /// For an image: its config blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<BlobRef>,
    /// For an image: its layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<BlobRef>>,
}

impl ManifestView {
    /// The view of `inspected`; `platform` is an image's platform when known.
    pub fn new(inspected: &Inspected, platform: Option<String>) -> Self {
        let (manifests, config, layers) = match &inspected.content {
            Content::Index(entries) => (
                Some(entries.iter().map(EntryView::from).collect()),
                None,
                None,
            ),
            Content::Image(image) => (None, Some(image.config.clone()), Some(image.layers.clone())),
        };
        Self {
            reference: inspected.reference.to_string(),
            pinned: inspected.pinned(),
            digest: inspected.manifest.digest.clone(),
            media_type: inspected.manifest.media_type.clone(),
            size: inspected.manifest.bytes.len() as u64,
            platform,
            selected_for: None,
            exact: None,
            list_digest: None,
            manifests,
            config,
            layers,
        }
    }
}

/// `inspect --format table`: the manifest's fields, then a list's entries as a table.
pub fn inspect_table(view: &ManifestView) -> String {
    let mut fields: Vec<(&str, String)> = vec![("reference", view.reference.clone())];
    if let Some(p) = &view.platform {
        let mut text = p.clone();
        match (&view.selected_for, view.exact) {
            (Some(asked), Some(false)) => text.push_str(&format!(
                " (no {asked} image; the best a {asked} client runs)"
            )),
            (Some(_), Some(true)) => text.push_str(" (exact)"),
            _ => {}
        }
        fields.push(("platform", text));
    }
    fields.push(("pinned", view.pinned.clone()));
    fields.push(("digest", view.digest.clone()));
    fields.push(("media type", view.media_type.clone()));
    fields.push(("size", view.size.to_string()));
    if let Some(list) = &view.list_digest {
        fields.push(("list", list.clone()));
    }
    if let Some(config) = &view.config {
        fields.push(("config", config.digest.clone()));
    }
    if let Some(layers) = &view.layers {
        let bytes: u64 = layers.iter().map(|l| l.size).sum();
        fields.push(("layers", format!("{} ({bytes} bytes)", layers.len())));
    }
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!("{name:<12}{value}\n"));
    }
    if let Some(entries) = &view.manifests {
        out.push('\n');
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    if e.attestation {
                        format!("{} (attestation)", e.platform)
                    } else {
                        e.platform.clone()
                    },
                    e.digest.clone(),
                    e.size.to_string(),
                    e.media_type.clone(),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["PLATFORM", "DIGEST", "SIZE", "MEDIA TYPE"],
            &rows,
        ));
    }
    out
}

/// `inspect --format json`.
pub fn inspect_json(view: &ManifestView) -> String {
    serde_json::to_string_pretty(view).expect("views serialise to JSON")
}

/// `manifold manifest inspect`.
pub async fn inspect(args: &InspectArgs) -> Result<(), ManifestCommandError> {
    let reference = parse_reference(&args.reference)?;
    let wanted = args
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()
        .map_err(ManifestCommandError::Platform)?;
    let config = registry_config(&args.registry);
    let session = Session::open(&config, &[reference.registry()]).await?;
    let top = inspect::fetch(&session, &reference).await?;
    let mut stdout = std::io::stdout().lock();
    let view = match &wanted {
        Some(wanted) => {
            let selected = inspect::select(&session, top, wanted).await?;
            if args.raw {
                stdout.write_all(&selected.child.manifest.bytes)?;
                return Ok(());
            }
            let mut view = ManifestView::new(&selected.child, Some(selected.platform.clone()));
            view.reference = reference.to_string();
            view.selected_for = Some(wanted.to_string());
            view.exact = Some(selected.exact);
            view.list_digest = selected.list_digest.clone();
            view
        }
        None => {
            if args.raw {
                stdout.write_all(&top.manifest.bytes)?;
                return Ok(());
            }
            let platform = match &top.content {
                Content::Image(image) => Some(
                    inspect::config_platform(&session, &top.reference, image)
                        .await?
                        .to_string(),
                ),
                Content::Index(_) => None,
            };
            ManifestView::new(&top, platform)
        }
    };
    match args.format {
        Format::Table => write!(stdout, "{}", inspect_table(&view))?,
        Format::Json => writeln!(stdout, "{}", inspect_json(&view))?,
    }
    Ok(())
}

/// Parses `--annotate SOURCE=os/arch[/variant]` values; the platform is kept as written
/// (`linux/arm64/v8` writes its `v8`), any platform the parser takes is accepted.
pub fn parse_annotations(
    values: &[String],
) -> Result<Vec<(String, PlatformSpec)>, ManifestCommandError> {
    values
        .iter()
        .map(|value| {
            let bad = |reason: String| ManifestCommandError::Annotate {
                value: value.clone(),
                reason,
            };
            let (source, platform) = value
                .rsplit_once('=')
                .ok_or_else(|| bad("it has no `=`".to_owned()))?;
            if source.trim().is_empty() {
                return Err(bad("the source is empty".to_owned()));
            }
            let platform = Platform::parse_spec(platform)
                .map_err(|e| bad(format!("invalid platform `{}`: {}", e.input, e.reason)))?;
            Ok((source.trim().to_owned(), platform))
        })
        .collect()
}

/// `manifold manifest create` (and `push`, which sets `push_forced`).
pub async fn create(args: &CreateArgs, push_forced: bool) -> Result<(), ManifestCommandError> {
    let push = args.push || push_forced;
    if args.sources.is_empty() && !args.from_arch_tags {
        return Err(ManifestCommandError::NoSources { push: push_forced });
    }
    let overrides = parse_annotations(&args.annotate)?;
    let template =
        TagTemplate::parse(&args.tag_template).map_err(ManifestCommandError::TagTemplate)?;
    let platforms = if args.platforms.is_empty() {
        Vec::new()
    } else {
        parse_platforms(&args.platforms)
            .map_err(|e| ManifestCommandError::Platforms(Box::new(e)))?
    };
    let failed = |source: CreateError| ManifestCommandError::Create {
        target: args.target.clone(),
        source: Box::new(source),
    };
    let mut request = CreateRequest {
        target: args.target.clone(),
        sources: args.sources.clone(),
        platform_overrides: overrides,
        amend: args.amend,
        list_kind: args.media_type.map(|m| match m {
            MediaTypeArg::Docker => ListKind::Docker,
            MediaTypeArg::Oci => ListKind::Oci,
        }),
        include_attestations: !args.exclude_attestations,
    };
    let config = registry_config(&args.registry);
    let session = create::open_session(&config, &request)
        .await
        .map_err(failed)?;
    if args.from_arch_tags {
        let found = create::arch_tag_sources(&session, &args.target, &template, &platforms)
            .await
            .map_err(failed)?;
        for source in found {
            if !request.sources.contains(&source) {
                request.sources.push(source);
            }
        }
    }
    let plan = create::plan(&session, &request).await.map_err(failed)?;
    let note = |line: &str| {
        if !args.quiet {
            eprintln!("{line}");
        }
    };
    note(plan_summary(&plan).trim_end());
    let mut stdout = std::io::stdout().lock();
    if !push {
        if args.quiet {
            writeln!(stdout, "{}", plan.digest())?;
        } else {
            stdout.write_all(&plan.list.bytes)?;
            writeln!(stdout)?;
        }
        note(&format!(
            "not pushed (nothing was written): add --push to write this list under {}",
            args.target
        ));
        return Ok(());
    }
    let report = create::push(&session, &plan, args.dry_run)
        .await
        .map_err(failed)?;
    let repository = format!("{}/{}", plan.target.registry(), plan.target.repository());
    for t in &report.transfers {
        note(&transfer_line(t, &repository, args.dry_run));
    }
    match &report.published {
        None => {
            if args.quiet {
                writeln!(stdout, "{}", plan.digest())?;
            } else {
                stdout.write_all(&plan.list.bytes)?;
                writeln!(stdout)?;
            }
            note(&format!(
                "dry run: nothing was written; without --dry-run the list above goes under {}",
                args.target
            ));
        }
        Some(published) => {
            writeln!(stdout, "{}", published.digest)?;
            note(&format!(
                "pushed {} ({}, {})",
                args.target, published.digest, published.media_type
            ));
        }
    }
    Ok(())
}

/// What `create` decided, for stderr: one row per entry in list order, then what was left out
/// and notes.
pub fn plan_summary(plan: &Plan) -> String {
    let g = &plan.gathered;
    let rows: Vec<Vec<String>> = g
        .entries
        .iter()
        .map(|e| vec![e.shown(), e.digest.clone(), e.from.clone()])
        .collect();
    let mut out = format!(
        "{} {} for {}\n",
        plan.list.media_type,
        plan.digest(),
        plan.target
    );
    out.push_str(&render_table(&["PLATFORM", "DIGEST", "FROM"], &rows));
    for s in &g.skipped {
        out.push_str(&format!(
            "left out: {} {} of {}: {}\n",
            s.platform, s.digest, s.from, s.reason
        ));
    }
    for n in &g.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// One child's transfer into the target repository, for stderr.
pub fn transfer_line(t: &Transfer, repository: &str, dry_run: bool) -> String {
    let head = format!("{} {}", t.platform, t.digest);
    if t.already_there {
        return format!("{head}: already in {repository}");
    }
    let (mount, copy, push) = if dry_run {
        (
            "would mount",
            "would copy",
            "would push the manifest by digest",
        )
    } else {
        ("mounted", "copied", "pushed the manifest by digest")
    };
    let mut parts = Vec::new();
    if t.blobs_present > 0 {
        parts.push(format!("{} blob(s) already there", t.blobs_present));
    }
    if t.blobs_mounted > 0 {
        parts.push(format!(
            "{mount} {} blob(s) from {}",
            t.blobs_mounted, t.from
        ));
    }
    if t.blobs_copied > 0 {
        parts.push(format!(
            "{copy} {} blob(s) ({} bytes) from {}",
            t.blobs_copied, t.bytes_copied, t.from
        ));
    }
    parts.push(push.to_owned());
    format!("{head} into {repository}: {}", parts.join(", "))
}

/// `manifold manifest rm`: there is nothing local to remove; says so and leaves registries alone.
pub fn rm(args: &RmArgs) {
    let what = if args.references.is_empty() {
        "lists".to_owned()
    } else {
        args.references
            .iter()
            .map(|r| format!("`{r}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "nothing to remove: manifold keeps no local copy of {what} (`manifest create --push` \
         writes straight to the registry); the registry's copy is untouched"
    );
}

/// `manifold completion SHELL`: the completion script for `shell` on `out`.
pub fn completion(shell: crate::args::CompletionShell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let shell = match shell {
        crate::args::CompletionShell::Bash => Shell::Bash,
        crate::args::CompletionShell::Zsh => Shell::Zsh,
        crate::args::CompletionShell::Fish => Shell::Fish,
    };
    let mut command = crate::args::Cli::command();
    clap_complete::generate(shell, &mut command, "manifold", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str, digest: &str, annotations: &[(&str, &str)]) -> EntryView {
        EntryView {
            platform: platform.into(),
            digest: digest.into(),
            size: 528,
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            attestation: platform.starts_with("unknown"),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn list_view() -> ManifestView {
        ManifestView {
            reference: "127.0.0.1:5000/app:1.0".into(),
            pinned: "127.0.0.1:5000/app@sha256:11".into(),
            digest: "sha256:11".into(),
            media_type: "application/vnd.docker.distribution.manifest.list.v2+json".into(),
            size: 736,
            platform: None,
            selected_for: None,
            exact: None,
            list_digest: None,
            manifests: Some(vec![
                entry("linux/amd64", "sha256:aa", &[]),
                entry("linux/arm64/v8", "sha256:bb", &[]),
                entry(
                    "unknown/unknown",
                    "sha256:cc",
                    &[("vnd.docker.reference.type", "attestation-manifest")],
                ),
            ]),
            config: None,
            layers: None,
        }
    }

    #[test]
    fn a_list_is_a_table_of_platform_digest_size_and_media_type() {
        assert_eq!(
            inspect_table(&list_view()),
            "reference   127.0.0.1:5000/app:1.0\n\
             pinned      127.0.0.1:5000/app@sha256:11\n\
             digest      sha256:11\n\
             media type  application/vnd.docker.distribution.manifest.list.v2+json\n\
             size        736\n\
             \n\
             PLATFORM                       DIGEST     SIZE  MEDIA TYPE\n\
             linux/amd64                    sha256:aa  528   application/vnd.docker.distribution.manifest.v2+json\n\
             linux/arm64/v8                 sha256:bb  528   application/vnd.docker.distribution.manifest.v2+json\n\
             unknown/unknown (attestation)  sha256:cc  528   application/vnd.docker.distribution.manifest.v2+json\n"
        );
        let json: serde_json::Value = serde_json::from_str(&inspect_json(&list_view())).unwrap();
        assert_eq!(json["manifests"][1]["platform"], "linux/arm64/v8");
        assert_eq!(json["manifests"][2]["attestation"], true);
        assert!(json["manifests"][0].get("annotations").is_none());
        assert!(json.get("config").is_none());
    }

    #[test]
    fn a_selected_image_shows_its_platform_and_where_it_came_from() {
        let view = ManifestView {
            reference: "127.0.0.1:5000/app@sha256:bb".into(),
            pinned: "127.0.0.1:5000/app@sha256:bb".into(),
            digest: "sha256:bb".into(),
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            size: 528,
            platform: Some("linux/arm/v6".into()),
            selected_for: Some("linux/arm/v7".into()),
            exact: Some(false),
            list_digest: Some("sha256:11".into()),
            manifests: None,
            config: Some(BlobRef {
                media_type: "c".into(),
                digest: "sha256:cf".into(),
                size: 10,
                foreign: false,
            }),
            layers: Some(vec![BlobRef {
                media_type: "l".into(),
                digest: "sha256:1a".into(),
                size: 2000,
                foreign: false,
            }]),
        };
        assert_eq!(
            inspect_table(&view),
            "reference   127.0.0.1:5000/app@sha256:bb\n\
             platform    linux/arm/v6 (no linux/arm/v7 image; the best a linux/arm/v7 client runs)\n\
             pinned      127.0.0.1:5000/app@sha256:bb\n\
             digest      sha256:bb\n\
             media type  application/vnd.docker.distribution.manifest.v2+json\n\
             size        528\n\
             list        sha256:11\n\
             config      sha256:cf\n\
             layers      1 (2000 bytes)\n"
        );
        let json: serde_json::Value = serde_json::from_str(&inspect_json(&view)).unwrap();
        assert_eq!(json["exact"], false);
        assert_eq!(json["selected_for"], "linux/arm/v7");
        assert_eq!(json["layers"][0]["size"], 2000);
    }

    #[test]
    fn annotations_are_source_equals_platform() {
        let parsed = parse_annotations(&[
            "reg/app:1.0-arm=linux/arm/v7".to_owned(),
            "reg/app:1.0-v8=linux/arm64/v8".to_owned(),
            "reg/app:1.0-arm8=linux/arm/v8".to_owned(),
        ])
        .unwrap();
        let shown: Vec<(String, String, Option<String>)> = parsed
            .into_iter()
            .map(|(s, p)| (s, p.architecture, p.variant))
            .collect();
        assert_eq!(
            shown,
            [
                ("reg/app:1.0-arm".into(), "arm".into(), Some("v7".into())),
                ("reg/app:1.0-v8".into(), "arm64".into(), Some("v8".into())),
                ("reg/app:1.0-arm8".into(), "arm".into(), Some("v8".into())),
            ]
        );
        let err = |v: &str| parse_annotations(&[v.to_owned()]).unwrap_err().to_string();
        assert_eq!(
            err("reg/app:1.0=linux/&arm"),
            "--annotate `reg/app:1.0=linux/&arm`: invalid platform `linux/&arm`: `&arm` is not a \
             valid architecture: use letters, digits, `_`, `.` and `-`; expected \
             SOURCE=os/arch[/variant], e.g. app:1.0-arm=linux/arm/v7",
            "says what is expected once"
        );
        assert_eq!(
            err("reg/app:1.0"),
            "--annotate `reg/app:1.0`: it has no `=`; expected SOURCE=os/arch[/variant], e.g. app:1.0-arm=linux/arm/v7"
        );
        assert!(err("reg/app:1.0=linux/&arm").contains("invalid platform `linux/&arm`"));
        assert!(err("=linux/amd64").contains("the source is empty"));
    }

    #[test]
    fn transfers_say_what_moved() {
        let t = Transfer {
            platform: "linux/arm64".into(),
            digest: "sha256:bb".into(),
            from: "`reg/base:1-aarch64`".into(),
            blobs_present: 1,
            blobs_mounted: 2,
            ..Transfer::default()
        };
        assert_eq!(
            transfer_line(&t, "reg/app", false),
            "linux/arm64 sha256:bb into reg/app: 1 blob(s) already there, mounted 2 blob(s) from \
             `reg/base:1-aarch64`, pushed the manifest by digest"
        );
        let copy = Transfer {
            blobs_copied: 1,
            bytes_copied: 99,
            ..Transfer::default()
        };
        assert!(transfer_line(&copy, "reg/app", true).contains("would copy 1 blob(s) (99 bytes)"));
        let there = Transfer {
            already_there: true,
            ..t
        };
        assert_eq!(
            transfer_line(&there, "reg/app", false),
            "linux/arm64 sha256:bb: already in reg/app"
        );
    }
}
