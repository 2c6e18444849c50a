//! Manifest reads from open registries ([`super::open`]) made with the session's own HTTP client.
//!
//! oci-client's manifest reads take the credentials as an argument and store them in the client,
//! anonymous ones too; once stored, oci-client asks the registry's `/v2/` for a challenge before
//! every later request of that client. An open registry's client must hold none, so its manifest
//! reads (a `GET` or a `HEAD` by tag or digest) are made here, exactly as oci-client makes them:
//! the same `Accept`, the same digest check, the same errors for the same answers.

use oci_client::Reference;
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::upload::HTTP;
use super::{MANIFEST_TYPES, Session};

/// Largest manifest read (the OCI distribution spec's suggested limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

impl Session {
    /// The manifest `reference` names and its digest (`GET`), or only its digest (`HEAD`: `body`
    /// false), from an open registry.
    pub(super) async fn direct_manifest(
        &self,
        reference: &Reference,
        body: bool,
    ) -> Result<(bytes::Bytes, String), OciDistributionError> {
        let mut url = self.base_url(reference)?;
        let name = reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
        url.set_path(&format!("/v2/{}/manifests/{name}", reference.repository()));
        let request = if body {
            HTTP.get(url.clone())
        } else {
            HTTP.head(url.clone())
        };
        let response = request
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "))
            .send()
            .await?;
        let status = response.status();
        let header = (response.headers().get("docker-content-digest"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response
            .content_length()
            .is_some_and(|n| body && n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(too_big(&url));
        }
        let bytes = response.bytes().await?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(too_big(&url));
        }
        answer(status, &bytes, url.as_str())?;
        let digest = if body {
            let algorithm = reference
                .digest()
                .and_then(|d| d.split_once(':'))
                .map_or("sha256", |(a, _)| a);
            let computed = match algorithm {
                "sha512" => format!("sha512:{}", hex::encode(sha2::Sha512::digest(&bytes))),
                _ => format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            };
            match reference.digest() {
                Some(expected) if expected != computed => return Err(mismatch(expected, computed)),
                _ => computed,
            }
        } else {
            match (header, reference.digest()) {
                (Some(h), Some(expected)) if h != expected => return Err(mismatch(expected, h)),
                (Some(h), _) => h,
                (None, Some(expected)) => expected.to_owned(),
                // No digest in the answer to a HEAD by tag: read the manifest, as oci-client does.
                (None, None) => return Box::pin(self.direct_manifest(reference, true)).await,
            }
        };
        Ok((bytes, digest))
    }
}

fn mismatch(expected: &str, actual: String) -> OciDistributionError {
    OciDistributionError::DigestError(DigestError::VerificationError {
        expected: expected.to_owned(),
        actual,
    })
}

fn too_big(url: &reqwest::Url) -> OciDistributionError {
    OciDistributionError::GenericError(Some(format!(
        "the manifest at {url} is larger than {MAX_MANIFEST_BYTES} bytes"
    )))
}

/// oci-client's reading of a registry's answer: success, 401, an error envelope, or the status.
fn answer(status: StatusCode, body: &[u8], url: &str) -> Result<(), OciDistributionError> {
    match status {
        StatusCode::OK => Ok(()),
        StatusCode::UNAUTHORIZED => Err(OciDistributionError::UnauthorizedError {
            url: url.to_owned(),
        }),
        s if s.is_success() => Err(OciDistributionError::SpecViolationError(format!(
            "Expected HTTP Status 200 OK, got {s} instead"
        ))),
        s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) => Err(OciDistributionError::RegistryError {
                envelope,
                url: url.to_owned(),
            }),
            Err(_) => Err(OciDistributionError::ServerError {
                code: s.as_u16(),
                url: url.to_owned(),
                message: String::from_utf8_lossy(body).into_owned(),
            }),
        },
        s => Err(OciDistributionError::ServerError {
            code: s.as_u16(),
            url: url.to_owned(),
            message: String::from_utf8_lossy(body).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RegistryConfig, is_not_found, is_transient};
    use super::*;
    use crate::auth::DockerConfig;

    /// A loopback registry open to all (`/v2/` answers 200) whose manifest requests all get
    /// `manifest`; counts the requests that are not `/v2/`.
    async fn registry(
        manifest: String,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        super::super::loopback::serve(move |request| {
            if request.starts_with("GET /v2/ ") {
                let open = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                (open.to_owned(), false)
            } else {
                (manifest.clone(), true)
            }
        })
        .await
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    async fn session(addr: &str) -> Session {
        let docker =
            DockerConfig::from_json(std::path::Path::new("/none/config.json"), "{}").unwrap();
        Session::open_with(&RegistryConfig::default(), docker, &[addr])
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_open_registrys_manifest_is_read_without_asking_for_a_challenge() {
        let body =
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(body)));
        let (addr, asked) = registry(ok(body)).await;
        let s = session(&addr).await;
        let by_digest: Reference = format!("{addr}/team/app@{digest}").parse().unwrap();
        let got = s
            .pull_manifest(&by_digest, "reading")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.bytes.as_slice(), got.digest.as_str()),
            (body.as_bytes(), digest.as_str())
        );
        assert!(s.manifest_exists(&by_digest, "checking").await.unwrap());
        // Two requests, no `GET /v2/` between them (the session asked once, when it opened).
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);

        // A HEAD by tag answered without a digest reads the manifest for it, as oci-client does.
        let by_tag: Reference = format!("{addr}/team/app:1").parse().unwrap();
        let (_, found) = s.direct_manifest(&by_tag, false).await.unwrap();
        assert_eq!(found, digest);
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "a HEAD, then a GET"
        );

        // A body that is not the digest asked for is refused, as oci-client refuses it.
        let other: Reference = format!("{addr}/team/app@sha256:{}", "0".repeat(64))
            .parse()
            .unwrap();
        let e = s.direct_manifest(&other, true).await.unwrap_err();
        assert!(matches!(e, OciDistributionError::DigestError(_)), "{e}");
    }

    #[tokio::test]
    async fn an_open_registrys_refusals_read_as_oci_clients_do() {
        let answer = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let cases = [
            (
                answer(
                    "404 Not Found",
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
                ),
                "not found",
            ),
            (answer("503 Service Unavailable", "busy"), "transient"),
            (answer("401 Unauthorized", ""), "unauthorized"),
        ];
        for (response, kind) in cases {
            let (addr, _) = registry(response).await;
            let s = session(&addr).await;
            let r: Reference = format!("{addr}/team/app:1").parse().unwrap();
            let e = s.direct_manifest(&r, true).await.unwrap_err();
            let read = match &e {
                e if is_not_found(e) => "not found",
                e if is_transient(e) => "transient",
                OciDistributionError::UnauthorizedError { .. } => "unauthorized",
                _ => "other",
            };
            assert_eq!(read, kind, "{e}");
        }
    }
}
