//! A real browser for the dashboard's tests: headless Chromium from Debian's packages (`chromium`,
//! `chromium-driver`), driven over the W3C WebDriver protocol through `chromedriver` on loopback.
//! What a test reads is what a person sees: element texts, the page's address, screenshots.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{free_port, wait_until};

/// The key W3C WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless Chromium session; both end when it drops.
pub struct Browser {
    base: String,
    session: String,
    http: reqwest::Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that accepts the farm's development
    /// certificate (its CA is not in the browser's trust store).
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver: install Debian's chromium and chromium-driver (bash .ci/install)")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        wait_until(
            Duration::from_secs(20),
            "chromedriver to answer",
            || async {
                let v: Value = http
                    .get(format!("{base}/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            },
        )
        .await?;
        let profile = tempfile::tempdir()?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1400", "--no-proxy-server",
                         format!("--user-data-dir={}", profile.path().display())],
            }
        }}});
        let v = post(&http, &format!("{base}/session"), &capabilities).await?;
        let session = v["sessionId"]
            .as_str()
            .context("WebDriver gave no session id")?
            .to_owned();
        Ok(Self {
            base,
            session,
            http,
            _driver: driver,
            _profile: profile,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        post(&self.http, &self.url(path), &body).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let v: Value = self.http.get(self.url(path)).send().await?.json().await?;
        value(v)
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// The address of the page shown.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .get("/url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching the CSS `selector`, if any.
    pub async fn find(&self, selector: &str) -> anyhow::Result<Option<Element<'_>>> {
        let body = json!({ "using": "css selector", "value": selector });
        let v: Value = self
            .http
            .post(self.url("/element"))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        if v["value"]["error"].as_str() == Some("no such element") {
            return Ok(None);
        }
        let v = value(v)?;
        let id = v[ELEMENT].as_str().with_context(|| {
            format!("WebDriver gave no element reference for `{selector}`: {v}")
        })?;
        Ok(Some(Element {
            browser: self,
            id: id.to_owned(),
        }))
    }

    /// The element matching `selector`, failing when there is none.
    pub async fn element(&self, selector: &str) -> anyhow::Result<Element<'_>> {
        self.find(selector)
            .await?
            .with_context(|| format!("no element `{selector}` on the page"))
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// The text of the whole page, as rendered.
    pub async fn page_text(&self) -> anyhow::Result<String> {
        Ok(self
            .execute("return document.body.innerText;")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The page's HTML as the browser holds it now (live updates included).
    pub async fn page_html(&self) -> anyhow::Result<String> {
        Ok(self
            .execute("return document.documentElement.outerHTML;")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Saves a screenshot of the window as PNG at `path` and returns its size in bytes.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<usize> {
        use base64::Engine as _;
        let v = self.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("WebDriver gave no screenshot")?)?;
        if !png.starts_with(b"\x89PNG") {
            bail!("the screenshot is not a PNG");
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &png)?;
        Ok(png.len())
    }
}

impl Element<'_> {
    /// Its rendered text.
    pub async fn text(&self) -> anyhow::Result<String> {
        let v = self
            .browser
            .get(&format!("/element/{}/text", self.id))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Types `text` into it.
    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        self.browser
            .post(
                &format!("/element/{}/value", self.id),
                json!({ "text": text }),
            )
            .await
            .map(drop)
    }

    /// Clicks it.
    pub async fn click(&self) -> anyhow::Result<()> {
        self.browser
            .post(&format!("/element/{}/click", self.id), json!({}))
            .await
            .map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, which ends Chromium (chromedriver itself is killed with its handle):
        // a plain blocking request, so that it also happens when a test fails and its runtime
        // is shutting down.
        use std::io::{Read as _, Write as _};
        let Some(addr) = self.base.strip_prefix("http://") else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let v: Value = http
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("WebDriver {url}"))?
        .json()
        .await?;
    value(v)
}

/// The `value` of a WebDriver answer, or its error.
fn value(mut v: Value) -> anyhow::Result<Value> {
    let value = v["value"].take();
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!(
            "WebDriver error {error}: {}",
            value["message"].as_str().unwrap_or_default()
        );
    }
    Ok(value)
}

/// Where tests keep files for people to look at afterwards: `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    crate::bin("manifold")
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("test-artifacts"))
        .expect("binaries live in target/<profile>/")
}
