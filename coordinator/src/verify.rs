//! Checking what a worker says it pushed, before the farm believes it.
//!
//! A worker ends an attempt by reporting a child image: a manifest digest, its size and media type,
//! pushed by digest to the build's repository. Workers are not trusted with another team's index:
//! a worker could report an image of another platform, another build's image, or nothing at all.
//! So before the farm records the attempt as succeeded, the coordinator reads that manifest from
//! the target repository and checks, in this order:
//! 1. it is there;
//! 2. its bytes hash to the reported digest and have the reported size and media type;
//! 3. it is an image manifest (not a list), and its config declares the job's platform
//!    (os, architecture and variant, normalised as Docker does).
//!
//! Any mismatch fails the attempt like an infrastructure failure (counted, retried), with a message
//! naming the worker; a registry that cannot be read fails it the same way. The decisions are the
//! pure [`check_manifest`] and [`check_config`]; [`verify`] does the two reads, at most
//! [`CHECKS_PER_REGISTRY`] at once per registry ([`Turns`]): a thousand workers reporting at once
//! would otherwise open a thousand connections to the one registry, which then spends more per
//! request (measured on Debian's registry with GOGC=800: 1.14 ms of CPU per manifest read over 8 connections,
//! 1.49 ms over 2,000) and answers no sooner.

use std::collections::HashMap;
use std::sync::Arc;

use manifold_proto::Platform;
use manifold_registry::inspect::{self, Content, IN_TOTO_ARTIFACT_TYPE};
use manifold_registry::manifest::{Attestation, OCI_MANIFEST};
use manifold_registry::{RegistryConfig, RegistryError, Session};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Image checks in flight per registry at most; the others wait their turn, first come first
/// served.
pub const CHECKS_PER_REGISTRY: usize = 64;

/// Whose turn it is to check an image, per registry host.
#[derive(Default)]
pub struct Turns(std::sync::Mutex<HashMap<String, Arc<Semaphore>>>);

impl Turns {
    /// Waits for a turn at `registry`; the turn ends when the permit is dropped.
    pub async fn take(&self, registry: &str) -> OwnedSemaphorePermit {
        let turns = self
            .0
            .lock()
            .expect("turns lock poisoned")
            .entry(registry.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(CHECKS_PER_REGISTRY)))
            .clone();
        turns
            .acquire_owned()
            .await
            .expect("the turns are never closed")
    }
}

/// What a worker reported for an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// Manifest digest.
    pub digest: String,
    /// Manifest size in bytes.
    pub size: u64,
    /// Manifest media type.
    pub media_type: String,
    /// Attestation manifests the worker says it pushed about the image.
    pub attestations: Vec<Attestation>,
}

/// Why a reported image is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No manifest of that digest in the target repository.
    #[error("manifest {digest} is not in {repository}")]
    Missing {
        /// Reported digest.
        digest: String,
        /// `registry/repository` of the build.
        repository: String,
    },
    /// The manifest's bytes hash to something else.
    #[error("the manifest read for {reported} hashes to {actual}")]
    Digest {
        /// Reported digest.
        reported: String,
        /// Digest of the bytes read.
        actual: String,
    },
    /// Another size.
    #[error("manifest {digest} is {actual} bytes, not the reported {reported}")]
    Size {
        /// Digest.
        digest: String,
        /// Reported size.
        reported: u64,
        /// Size read.
        actual: u64,
    },
    /// Another media type.
    #[error("manifest {digest} is a `{actual}`, not the reported `{reported}`")]
    MediaType {
        /// Digest.
        digest: String,
        /// Reported type.
        reported: String,
        /// Type read.
        actual: String,
    },
    /// Not an image manifest, or an unreadable one.
    #[error("manifest {digest} is not a usable image manifest: {reason}")]
    NotAnImage {
        /// Digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// An image of another platform.
    #[error("image {digest} is for {found}, not for the job's platform {expected}")]
    WrongPlatform {
        /// Digest.
        digest: String,
        /// The job's platform.
        expected: Platform,
        /// What its config declares.
        found: String,
    },
    /// A reported attestation that is not one: not an OCI manifest of in-toto statements.
    #[error("{digest}, reported as an attestation of {image}, is not one: {reason}")]
    NotAnAttestation {
        /// The attestation's digest.
        digest: String,
        /// The image it was reported about.
        image: String,
        /// Why.
        reason: String,
    },
    /// More attestations than a build makes.
    #[error("{count} attestations reported for {image}; at most {MAX_ATTESTATIONS} are taken")]
    TooManyAttestations {
        /// The image.
        image: String,
        /// How many were reported.
        count: usize,
    },
    /// The registry could not be read, so nothing could be checked.
    #[error("could not check the image: {0}")]
    Registry(#[from] RegistryError),
}

impl VerifyError {
    /// Whether the worker reported something false (as opposed to the registry failing the check).
    pub fn is_mismatch(&self) -> bool {
        !matches!(self, VerifyError::Registry(_))
    }
}

/// Checks the manifest `bytes` read for `reported`; returns the digest of its config blob.
pub fn check_manifest(reported: &Reported, bytes: &[u8]) -> Result<String, VerifyError> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if actual != reported.digest {
        return Err(VerifyError::Digest {
            reported: reported.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != reported.size {
        return Err(VerifyError::Size {
            digest: reported.digest.clone(),
            reported: reported.size,
            actual: bytes.len() as u64,
        });
    }
    let media_type = manifold_registry::session::media_type_of(bytes);
    if media_type != reported.media_type {
        return Err(VerifyError::MediaType {
            digest: reported.digest.clone(),
            reported: reported.media_type.clone(),
            actual: media_type,
        });
    }
    let not_an_image = |reason: String| VerifyError::NotAnImage {
        digest: reported.digest.clone(),
        reason,
    };
    match inspect::parse_manifest(bytes, &media_type).map_err(not_an_image)? {
        Content::Image(image) => Ok(image.config.digest),
        Content::Index(_) => Err(not_an_image("it is a manifest list".into())),
    }
}

/// Most attestation manifests taken per image (BuildKit writes one, holding every statement).
pub const MAX_ATTESTATIONS: usize = 4;

/// Checks the manifest `bytes` read for `attestation` of `image`: its digest and size, and that
/// it is an OCI manifest whose layers (at least one) are all in-toto statements, as BuildKit
/// writes attestations.
pub fn check_attestation(
    image: &str,
    attestation: &Attestation,
    bytes: &[u8],
) -> Result<(), VerifyError> {
    let reported = Reported {
        digest: attestation.digest.clone(),
        size: attestation.size,
        media_type: OCI_MANIFEST.to_owned(),
        attestations: Vec::new(),
    };
    let not_one = |reason: String| VerifyError::NotAnAttestation {
        digest: attestation.digest.clone(),
        image: image.to_owned(),
        reason,
    };
    check_manifest(&reported, bytes).map_err(|e| match e {
        VerifyError::Digest { .. } | VerifyError::Size { .. } => e,
        other => not_one(other.to_string()),
    })?;
    let Ok(Content::Image(manifest)) = inspect::parse_manifest(bytes, OCI_MANIFEST) else {
        unreachable!("check_manifest parsed it as an image manifest");
    };
    match manifest
        .layers
        .iter()
        .find(|l| l.media_type != IN_TOTO_ARTIFACT_TYPE)
    {
        _ if manifest.layers.is_empty() => Err(not_one("it has no layer".into())),
        Some(l) => Err(not_one(format!(
            "it has a `{}` layer; an attestation holds only {IN_TOTO_ARTIFACT_TYPE} statements",
            l.media_type
        ))),
        None => Ok(()),
    }
}

/// Checks that the image config `bytes` of `digest` declares `expected`.
pub fn check_config(expected: &Platform, digest: &str, bytes: &[u8]) -> Result<(), VerifyError> {
    let declared =
        inspect::parse_config_platform(bytes).map_err(|reason| VerifyError::NotAnImage {
            digest: digest.to_owned(),
            reason,
        })?;
    match declared.platform() {
        Some(p) if expected.matches(&p) => Ok(()),
        _ => Err(VerifyError::WrongPlatform {
            digest: digest.to_owned(),
            expected: expected.clone(),
            found: declared.to_string(),
        }),
    }
}

/// Reads the reported manifest and its config from `repository` (`registry/repository`) and checks
/// them against the job's `platform`; with the build team's login for that registry, if any; on
/// that registry's turn.
pub async fn verify(
    turns: &Turns,
    config: &RegistryConfig,
    repository: &str,
    platform: &Platform,
    reported: &Reported,
    logins: &[manifold_registry::RegistryLogin],
) -> Result<(), VerifyError> {
    let missing = || VerifyError::Missing {
        digest: reported.digest.clone(),
        repository: repository.to_owned(),
    };
    let reference =
        manifold_registry::reference::parse(&format!("{repository}@{}", reported.digest))
            .map_err(|_| missing())?;
    let _turn = turns.take(reference.registry()).await;
    let session = Session::open_with_logins(config, &[reference.registry()], logins).await?;
    session
        .authenticate(
            &reference,
            oci_client::RegistryOperation::Pull,
            &format!("reading {repository}"),
        )
        .await?;
    let manifest = session
        .pull_manifest(&reference, &format!("reading {}", reported.digest))
        .await?
        .ok_or_else(missing)?;
    let config_digest = check_manifest(reported, &manifest.bytes)?;
    let config_bytes = session
        .pull_small_blob(
            &reference,
            &config_digest,
            &format!("reading the config of {}", reported.digest),
        )
        .await?;
    check_config(platform, &reported.digest, &config_bytes)?;
    if reported.attestations.len() > MAX_ATTESTATIONS {
        return Err(VerifyError::TooManyAttestations {
            image: reported.digest.clone(),
            count: reported.attestations.len(),
        });
    }
    for a in &reported.attestations {
        let at = manifold_registry::reference::parse(&format!("{repository}@{}", a.digest))
            .map_err(|_| VerifyError::Missing {
                digest: a.digest.clone(),
                repository: repository.to_owned(),
            })?;
        let bytes = session
            .pull_manifest(&at, &format!("reading the attestation {}", a.digest))
            .await?
            .ok_or_else(|| VerifyError::Missing {
                digest: a.digest.clone(),
                repository: repository.to_owned(),
            })?;
        check_attestation(&reported.digest, a, &bytes.bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn manifest(config_digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 10},
            "layers": []
        }))
        .unwrap()
    }

    fn reported(bytes: &[u8]) -> Reported {
        Reported {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
            size: bytes.len() as u64,
            media_type: OCI_MANIFEST.into(),
            attestations: Vec::new(),
        }
    }

    #[test]
    fn an_attestation_must_be_an_oci_manifest_of_in_toto_statements() {
        let image = format!("sha256:{}", "a".repeat(64));
        let attestation = |layers: &[&str]| {
            let layers: Vec<_> = (layers.iter())
                .map(|t| serde_json::json!({"mediaType": t, "digest": format!("sha256:{}", "e".repeat(64)), "size": 5}))
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 10},
                "layers": layers
            }))
            .unwrap()
        };
        let of = |bytes: &[u8]| Attestation {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
            size: bytes.len() as u64,
        };
        let good = attestation(&[IN_TOTO_ARTIFACT_TYPE, IN_TOTO_ARTIFACT_TYPE]);
        check_attestation(&image, &of(&good), &good).unwrap();
        let table: [(Vec<u8>, Option<Attestation>, &str); 4] = [
            (attestation(&[]), None, "has no layer"),
            (
                attestation(&[
                    IN_TOTO_ARTIFACT_TYPE,
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                ]),
                None,
                "has a `application/vnd.oci.image.layer.v1.tar+gzip` layer",
            ),
            (
                good.clone(),
                Some(of(&attestation(&[IN_TOTO_ARTIFACT_TYPE]))),
                "hashes to",
            ),
            (
                manifest("sha256:x").into_iter().chain(*b" ").collect(),
                None,
                "has no layer",
            ),
        ];
        for (bytes, reported, expected) in table {
            let reported = reported.unwrap_or_else(|| of(&bytes));
            let err = check_attestation(&image, &reported, &bytes)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} should say {expected}");
            if !expected.contains("hashes") {
                assert!(err.contains(&image), "{err} names the image");
            }
        }
    }

    #[test]
    fn a_manifest_is_accepted_only_as_reported() {
        let config = format!("sha256:{}", "c".repeat(64));
        let bytes = manifest(&config);
        let good = reported(&bytes);
        assert_eq!(check_manifest(&good, &bytes).unwrap(), config);

        let check = |r: Reported, bytes: &[u8], expect: &str| {
            let err = check_manifest(&r, bytes).unwrap_err().to_string();
            assert!(err.contains(expect), "{err} should say {expect}");
        };
        let other = manifest(&format!("sha256:{}", "d".repeat(64)));
        check(good.clone(), &other, "hashes to");
        check(
            Reported {
                size: good.size + 1,
                ..good.clone()
            },
            &bytes,
            "not the reported",
        );
        check(
            Reported {
                media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
                ..good.clone()
            },
            &bytes,
            "is a `application/vnd.oci.image.manifest.v1+json`",
        );
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": []
        }))
        .unwrap();
        let mut r = reported(&index);
        r.media_type = "application/vnd.oci.image.index.v1+json".into();
        check(r, &index, "is a manifest list");
    }

    #[test]
    fn a_config_must_declare_the_jobs_platform() {
        let arm64 = Platform::linux_arm64();
        let check = |expected: &Platform, config: &str| {
            check_config(expected, "sha256:x", config.as_bytes()).map_err(|e| e.to_string())
        };
        assert!(check(&arm64, r#"{"os":"linux","architecture":"arm64"}"#).is_ok());
        // arm64's absent variant is v8, as Docker normalises it.
        assert!(
            check(
                &arm64,
                r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
            )
            .is_ok()
        );
        let err = check(&arm64, r#"{"os":"linux","architecture":"amd64"}"#).unwrap_err();
        assert!(
            err.contains("is for linux/amd64, not for the job's platform linux/arm64"),
            "{err}"
        );
        let armv7 = Platform::parse("linux/arm/v7").unwrap();
        let err = check(
            &armv7,
            r#"{"os":"linux","architecture":"arm","variant":"v6"}"#,
        )
        .unwrap_err();
        assert!(err.contains("linux/arm/v6"), "{err}");
        let err = check(&arm64, r#"{"rootfs":{}}"#).unwrap_err();
        assert!(err.contains("not a usable image manifest"), "{err}");
    }

    #[tokio::test]
    async fn checks_wait_their_registrys_turn_and_only_theirs() {
        let turns = Turns::default();
        let mut held = Vec::new();
        for _ in 0..CHECKS_PER_REGISTRY {
            held.push(turns.take("registry.a:5000").await);
        }
        let waiting = turns.take("registry.a:5000");
        tokio::pin!(waiting);
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "one check more than the registry's turns waits"
        );
        // Another registry's checks do not wait behind it.
        let other = turns.take("registry.b").await;
        drop(other);
        // A turn ends: the waiting check goes.
        held.pop();
        assert!(futures::poll!(waiting.as_mut()).is_ready());
    }
}
