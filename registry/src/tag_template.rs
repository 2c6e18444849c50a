//! Per-arch tag names: `app:1.0` + linux/arm64 → `app:1.0-aarch64`, the naming teams already use,
//! or any other convention through a template such as `{tag}-{goarch}{variant}`.
//!
//! `manifold build --arch-tags` (through the coordinator's [`crate::publish`]) and
//! `manifold manifest create --from-arch-tags` both name per-arch tags here, so the two always agree.

use std::fmt;
use std::str::FromStr;

use manifold_proto::Platform;

/// The default template: the tag, a dash, and what `uname -m` prints (`x86_64`, `aarch64`, `armv7l`).
pub const DEFAULT_TAG_TEMPLATE: &str = "{tag}-{arch}";

/// The placeholders a template may use, for messages.
const PLACEHOLDERS: &str = "{tag}, {arch}, {os}, {goarch}, {variant}";

/// A checked per-arch tag template. Placeholders: `{tag}` (the list's tag), `{arch}` (the `uname
/// -m` name: x86_64, aarch64, armv7l), `{goarch}` (amd64, arm64, arm), `{variant}` (v7, or empty),
/// `{os}` (linux). It must name the architecture (`{arch}` or `{goarch}`), so that platforms get
/// distinct tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tag,
    Arch,
    GoArch,
    Variant,
    Os,
}

/// A template that cannot be used, or a tag it cannot make.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagTemplateError {
    /// `{name}` is not a known placeholder.
    #[error("tag template `{template}`: unknown placeholder `{{{name}}}`; use {PLACEHOLDERS}")]
    UnknownPlaceholder {
        /// The template.
        template: String,
        /// The unknown name.
        name: String,
    },
    /// A `{` without its `}`, or a stray `}`.
    #[error("tag template `{template}`: unbalanced braces; placeholders look like {{arch}}")]
    Unbalanced {
        /// The template.
        template: String,
    },
    /// Neither `{arch}` nor `{goarch}`: every platform would get the same tag.
    #[error(
        "tag template `{template}` does not name the architecture, so every platform would get the same tag; include {{arch}} or {{goarch}}, e.g. {DEFAULT_TAG_TEMPLATE}"
    )]
    NoArch {
        /// The template.
        template: String,
    },
    /// Two platforms get the same tag.
    #[error(
        "tag template `{template}` gives both {first} and {second} the tag `{tag}`; include {{arch}}, or {{goarch}}{{variant}}"
    )]
    Collision {
        /// The template.
        template: String,
        /// The shared tag.
        tag: String,
        /// One platform.
        first: String,
        /// The other.
        second: String,
    },
    /// The rendered text is not a valid tag.
    #[error(
        "tag template `{template}` makes `{rendered}` for {platform}, which is not a valid tag: tags are 1 to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
    )]
    InvalidTag {
        /// The template.
        template: String,
        /// The platform rendered.
        platform: String,
        /// What it made.
        rendered: String,
    },
}

impl TagTemplate {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, TagTemplateError> {
        let template = text.to_owned();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let end = rest.find('}').ok_or_else(|| TagTemplateError::Unbalanced {
                        template: template.clone(),
                    })?;
                    let name = &rest[1..end];
                    let part = match name {
                        "tag" => Part::Tag,
                        "arch" => Part::Arch,
                        "goarch" => Part::GoArch,
                        "variant" => Part::Variant,
                        "os" => Part::Os,
                        _ if name.contains('{') => {
                            return Err(TagTemplateError::Unbalanced { template });
                        }
                        _ => {
                            return Err(TagTemplateError::UnknownPlaceholder {
                                template,
                                name: name.to_owned(),
                            });
                        }
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    rest = &rest[end + 1..];
                }
                '}' => return Err(TagTemplateError::Unbalanced { template }),
                c => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Arch | Part::GoArch)) {
            return Err(TagTemplateError::NoArch { template });
        }
        Ok(Self {
            text: template,
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is [`DEFAULT_TAG_TEMPLATE`].
    pub fn is_default(&self) -> bool {
        self.text == DEFAULT_TAG_TEMPLATE
    }

    /// The per-arch tag of `platform` for the list tag `tag`.
    pub fn render(&self, tag: &str, platform: &Platform) -> Result<String, TagTemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Tag => out.push_str(tag),
                Part::Arch => out.push_str(&platform.uname_arch()),
                Part::GoArch => out.push_str(platform.architecture()),
                Part::Variant => out.push_str(platform.variant().unwrap_or("")),
                Part::Os => out.push_str(platform.os()),
            }
        }
        if !is_valid_tag(&out) {
            return Err(TagTemplateError::InvalidTag {
                template: self.text.clone(),
                platform: platform.to_string(),
                rendered: out,
            });
        }
        Ok(out)
    }
}

impl Default for TagTemplate {
    fn default() -> Self {
        Self::parse(DEFAULT_TAG_TEMPLATE).expect("the default template is valid")
    }
}

impl FromStr for TagTemplate {
    type Err = TagTemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TagTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `tag` is a valid image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The per-arch tag teams already use: `1.0` + linux/arm64 → `1.0-aarch64` ([`DEFAULT_TAG_TEMPLATE`]).
pub fn arch_tag(tag: &str, platform: &Platform) -> String {
    format!("{tag}-{}", platform.uname_arch())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(template: &str, tag: &str, platform: &str, expected: &str) {
        let t = TagTemplate::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
        let p = Platform::parse(platform).unwrap();
        assert_eq!(
            t.render(tag, &p).unwrap(),
            expected,
            "{template} {platform}"
        );
    }

    #[test]
    fn templates_render_each_convention() {
        check("{tag}-{arch}", "1.0", "linux/amd64", "1.0-x86_64");
        check("{tag}-{arch}", "1.0", "linux/arm64/v8", "1.0-aarch64");
        check("{tag}-{arch}", "1.0", "linux/arm/v7", "1.0-armv7l");
        check("{tag}-{goarch}", "1.0", "linux/arm64", "1.0-arm64");
        check(
            "{tag}-{goarch}{variant}",
            "1.0",
            "linux/arm/v7",
            "1.0-armv7",
        );
        check("{tag}-{goarch}{variant}", "1.0", "linux/amd64", "1.0-amd64");
        check(
            "{os}-{goarch}-{tag}",
            "latest",
            "linux/amd64",
            "linux-amd64-latest",
        );
        check("{arch}", "1.0", "linux/s390x", "s390x");
    }

    #[test]
    fn the_default_template_is_what_arch_tag_writes() {
        let t = TagTemplate::default();
        assert!(t.is_default());
        for p in ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386"] {
            let p = Platform::parse(p).unwrap();
            assert_eq!(t.render("1.0", &p).unwrap(), arch_tag("1.0", &p));
        }
    }

    #[test]
    fn bad_templates_are_named_with_the_fix() {
        let err = |t: &str| TagTemplate::parse(t).unwrap_err().to_string();
        assert_eq!(
            err("{tag}-{cpu}"),
            "tag template `{tag}-{cpu}`: unknown placeholder `{cpu}`; use {tag}, {arch}, {os}, {goarch}, {variant}"
        );
        assert_eq!(
            err("{tag}-latest"),
            "tag template `{tag}-latest` does not name the architecture, so every platform would \
             get the same tag; include {arch} or {goarch}, e.g. {tag}-{arch}"
        );
        assert!(err("{tag-{arch}").contains("unbalanced braces"));
        assert!(err("{tag}}-{arch}").contains("unbalanced braces"));
        assert!(err("{tag}-{arch").contains("unbalanced braces"));
        let slash = TagTemplate::parse("{tag}/{arch}").unwrap();
        assert_eq!(
            slash
                .render("1.0", &Platform::linux_amd64())
                .unwrap_err()
                .to_string(),
            "tag template `{tag}/{arch}` makes `1.0/x86_64` for linux/amd64, which is not a valid \
             tag: tags are 1 to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
        );
    }

    #[test]
    fn valid_tags() {
        for ok in ["1.0", "latest", "_x", "1.0-aarch64", &"a".repeat(128)] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
    }
}
