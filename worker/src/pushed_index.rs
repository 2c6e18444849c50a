//! What BuildKit pushed when it attached attestations: an OCI index of one platform image and
//! its attestation manifests (`unknown/unknown`, annotated `vnd.docker.reference.type:
//! attestation-manifest` and `vnd.docker.reference.digest: <the image>`), as `docker buildx
//! build --provenance` pushes it.
//!
//! The worker reports the image and its attestations apart, never the index: the coordinator
//! merges the platforms' images and their attestations into the build's one index (as buildx
//! does for a multi-platform build), and checks each again itself.

use manifold_registry::inspect::{self, Content, REFERENCE_DIGEST_ANNOTATION};
use manifold_registry::manifest::{Attestation, OCI_INDEX, OCI_MANIFEST};

use crate::job::LogSink;
use crate::push::{self, PushError, PushTarget, PushedImage};

/// `pushed` as it is when it is an image manifest; when it is an index, its one image with the
/// attestations that point at it, read from `target` (the index's bytes checked against its
/// digest and size).
pub async fn unpack(
    target: &PushTarget,
    pushed: PushedImage,
    logs: &LogSink,
) -> Result<PushedImage, PushError> {
    if pushed.media_type != OCI_INDEX {
        return Ok(pushed);
    }
    let (_, _, bytes) = push::read_manifest(target, &pushed, logs).await?;
    split(&bytes).map_err(|e| PushError::Archive(format!("the index {}: {e}", pushed.digest)))
}

/// The image of a one-platform index and its attestations (as [`inspect`] tells them apart):
/// exactly one image entry; every attestation an OCI manifest pointing at it.
pub fn split(index: &[u8]) -> Result<PushedImage, String> {
    let entries = match inspect::parse_manifest(index, OCI_INDEX)? {
        Content::Index(entries) => entries,
        Content::Image(_) => unreachable!("parsed as an index"),
    };
    let (attestations, others): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|e| e.is_attestation());
    let [image] = <[_; 1]>::try_from(others).map_err(|others: Vec<_>| {
        format!(
            "holds {} images ({}); one platform's build pushes one",
            others.len(),
            (others.iter().map(|e| e.digest.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if !image.is_image() {
        return Err(format!(
            "its entry {} is a `{}`, not an image manifest",
            image.digest, image.media_type
        ));
    }
    let attestations = attestations
        .into_iter()
        .map(|a| {
            if a.media_type != OCI_MANIFEST {
                return Err(format!(
                    "the attestation {} is a `{}`, not an OCI manifest",
                    a.digest, a.media_type
                ));
            }
            match a.annotations.get(REFERENCE_DIGEST_ANNOTATION) {
                Some(d) if *d == image.digest => Ok(Attestation {
                    digest: a.digest,
                    size: a.size,
                }),
                other => Err(format!(
                    "the attestation {} is about {}, not the image {}",
                    a.digest,
                    other.map_or("no image", String::as_str),
                    image.digest
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(PushedImage {
        digest: image.digest,
        size: image.size,
        media_type: image.media_type,
        attestations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(digest: &str) -> serde_json::Value {
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 10,
            "platform": {"os": "linux", "architecture": "arm64"}})
    }

    fn attestation(digest: &str, about: &str) -> serde_json::Value {
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 20,
            "annotations": {REFERENCE_DIGEST_ANNOTATION: about, inspect::REFERENCE_TYPE_ANNOTATION: inspect::ATTESTATION_MANIFEST},
            "platform": {"os": "unknown", "architecture": "unknown"}})
    }

    fn index(entries: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": entries}),
        )
        .unwrap()
    }

    #[test]
    fn an_index_gives_its_image_and_the_attestations_about_it() {
        let got = split(&index(&[image(&d('a')), attestation(&d('b'), &d('a'))])).unwrap();
        assert_eq!(
            got,
            PushedImage {
                digest: d('a'),
                size: 10,
                media_type: OCI_MANIFEST.into(),
                attestations: vec![Attestation {
                    digest: d('b'),
                    size: 20
                }],
            }
        );
    }

    #[test]
    fn anything_else_is_refused_naming_what_is_wrong() {
        let table: [(Vec<serde_json::Value>, &str); 4] = [
            (vec![], "holds 0 images"),
            (
                vec![image(&d('a')), image(&d('c'))],
                "holds 2 images (sha256:aaaa",
            ),
            (
                vec![image(&d('a')), attestation(&d('b'), &d('c'))],
                "is about sha256:cccc",
            ),
            (
                vec![image(&d('a')), {
                    let mut a = attestation(&d('b'), &d('a'));
                    a["mediaType"] = OCI_INDEX.into();
                    a
                }],
                "not an OCI manifest",
            ),
        ];
        for (entries, expected) in table {
            let err = split(&index(&entries)).unwrap_err();
            assert!(err.contains(expected), "{err} should say {expected}");
        }
        assert!(split(b"not json").unwrap_err().contains("not valid JSON"));
    }
}
