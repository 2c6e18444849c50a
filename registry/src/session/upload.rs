//! A blob upload driven from outside: the registry's own upload protocol (open, send the bytes in
//! one or more requests, close with the digest), each request's body streamed as it arrives and
//! its digest named by whoever produced the bytes. This is how the worker's push front forwards
//! the Docker daemon's `docker push`: the bytes go through as they are, in the daemon's own
//! requests, and the registry alone hashes them and checks the digest the daemon names (a
//! mismatch is the registry's `DIGEST_INVALID`). Nothing is hashed or buffered here.
//!
//! oci-client keeps its upload steps private (its streamed upload cuts the bytes into 4 MiB
//! requests and hashes them itself), so these requests are made with reqwest, the HTTP client
//! under oci-client, and authorised by oci-client's token exchange for the push.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::{StatusCode, Url};

use super::{RegistryError, Session};

/// The one HTTP client for forwarded uploads (credentials go on each request, not in the client;
/// making a client reads the system trust store, so there is one).
pub(super) static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(300))
        .build()
        .expect("the upload client's fixed settings are valid")
});

/// An upload the registry opened in one repository: where its next request goes, with the
/// authorisation of the push.
#[derive(Debug)]
pub struct BlobUpload {
    reference: Reference,
    /// `scheme://registry`: the authorisation goes only there.
    base: Url,
    location: Url,
    authorization: Option<String>,
    sent: u64,
}

impl BlobUpload {
    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        authorised(
            request,
            &self.location,
            &self.base,
            self.authorization.as_deref(),
        )
    }
}

impl Session {
    /// Opens an upload in `reference`'s repository (retried like any request).
    pub async fn start_upload(&self, reference: &Reference) -> Result<BlobUpload, RegistryError> {
        let action = format!("opening an upload in {}", reference.repository());
        self.retry(reference, &action, || async {
            let authorization = self.push_authorization(reference).await?;
            let base = self.base_url(reference)?;
            let url = base
                .join(&format!("/v2/{}/blobs/uploads/", reference.repository()))
                .map_err(url_error)?;
            let response = authorised(
                HTTP.post(url.clone()),
                &url,
                &base,
                authorization.as_deref(),
            )
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await?;
            let location = location(&base, expect(response, StatusCode::ACCEPTED).await?)?;
            Ok(BlobUpload {
                reference: reference.clone(),
                base,
                location,
                authorization,
                sent: 0,
            })
        })
        .await
        .map_err(|e| self.error(reference, action, e))
    }

    /// Sends `body` as the next part of `upload` (one `PATCH`, streamed as it arrives). Tried
    /// once: the bytes cannot be replayed, their producer starts the upload again.
    pub async fn send_upload_part<S, E>(
        &self,
        upload: &mut BlobUpload,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (body, counted) = counting(body);
        let response = upload
            .authorised(HTTP.patch(upload.location.clone()))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(OciDistributionError::from);
        let base = upload.location.clone();
        let next = match response {
            Ok(response) => expect(response, StatusCode::ACCEPTED)
                .await
                .and_then(|r| location(&base, r)),
            Err(e) => Err(e),
        };
        match next {
            Ok(next) => {
                upload.location = next;
                upload.sent += counted.load(Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.error(
                &upload.reference,
                format!("uploading a layer to {}", upload.reference.repository()),
                e,
            )),
        }
    }

    /// Closes `upload` as blob `digest`, with `body` as its last bytes (empty when every byte
    /// went in parts). The registry checks that what it received hashes to `digest`.
    pub async fn finish_upload<S, E>(
        &self,
        mut upload: BlobUpload,
        digest: &str,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (body, counted) = counting(body);
        upload
            .location
            .query_pairs_mut()
            .append_pair("digest", digest);
        let result = async {
            let response = upload
                .authorised(HTTP.put(upload.location.clone()))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .send()
                .await?;
            expect(response, StatusCode::CREATED).await.map(|_| ())
        }
        .await;
        result.map_err(|e| {
            self.error(
                &upload.reference,
                format!(
                    "closing the upload of {digest} to {}",
                    upload.reference.repository()
                ),
                e,
            )
        })?;
        Ok(upload.sent + counted.load(Ordering::Relaxed))
    }

    /// `scheme://registry` of `reference`, plain HTTP where the configuration says so.
    pub(super) fn base_url(&self, reference: &Reference) -> Result<Url, OciDistributionError> {
        let registry = reference.resolve_registry();
        let scheme = if self.config.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        Url::parse(&format!("{scheme}://{registry}")).map_err(url_error)
    }

    /// The `Authorization` of a push to `reference`'s repository: the registry's token where it
    /// hands out tokens (oci-client's exchange), else the login itself, else none.
    async fn push_authorization(
        &self,
        reference: &Reference,
    ) -> Result<Option<String>, OciDistributionError> {
        if self.is_open(reference) {
            return Ok(None);
        }
        let auth = self.credentials(reference).auth;
        let token = self
            .client
            .auth(reference, &auth, RegistryOperation::Push)
            .await?;
        Ok(match (token, auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, password)) => {
                use base64::Engine as _;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            (None, _) => None,
        })
    }
}

/// `request` to `url`, with `authorization` when `url` is on the registry (`base`) itself: a
/// registry may send an upload elsewhere (a storage service), which gets no credentials.
fn authorised(
    request: reqwest::RequestBuilder,
    url: &Url,
    base: &Url,
    authorization: Option<&str>,
) -> reqwest::RequestBuilder {
    match authorization {
        Some(value) if same_origin(url, base) => {
            request.header(reqwest::header::AUTHORIZATION, value)
        }
        _ => request,
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `body` as a request body, and the count of bytes it has given.
fn counting<S, E>(body: S) -> (reqwest::Body, std::sync::Arc<AtomicU64>)
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let body = body.map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    (reqwest::Body::wrap_stream(body), count)
}

/// `response` when it has status `want`, else its status and body as the registry's error.
async fn expect(
    response: reqwest::Response,
    want: StatusCode,
) -> Result<reqwest::Response, OciDistributionError> {
    if response.status() == want {
        return Ok(response);
    }
    let url = response.url().to_string();
    let code = response.status().as_u16();
    let message = response.text().await.unwrap_or_default();
    Err(OciDistributionError::ServerError { url, code, message })
}

/// Where the registry says the upload goes on (`Location`, absolute or relative to `base`).
fn location(base: &Url, response: reqwest::Response) -> Result<Url, OciDistributionError> {
    let value = response
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or(OciDistributionError::RegistryNoLocationError)?
        .to_str()?;
    base.join(value).map_err(url_error)
}

fn url_error(e: impl std::fmt::Display) -> OciDistributionError {
    OciDistributionError::UrlParseError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_registry_itself() {
        let base = Url::parse("http://127.0.0.1:5000").unwrap();
        let same = |u: &str| same_origin(&base.join(u).unwrap(), &base);
        assert!(same("/v2/app/blobs/uploads/2?_state=b"));
        assert!(same("http://127.0.0.1:5000/v2/app/blobs/uploads/2"));
        assert!(!same("https://storage.example/upload/3?sig=x"));
        assert!(!same("http://127.0.0.1:5001/v2/app/blobs/uploads/2"));
        assert!(!same("https://127.0.0.1:5000/v2/app/blobs/uploads/2"));
        let https = Url::parse("https://registry.example").unwrap();
        assert!(same_origin(
            &Url::parse("https://registry.example:443/v2/x").unwrap(),
            &https
        ));
    }
}
