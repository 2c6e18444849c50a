//! Registries that ask for no authorisation at all ([`is_open`]), so that requests to them go
//! without the `GET /v2/` that oci-client otherwise sends before each one.
//!
//! oci-client learns how a registry wants to be authorised by asking `/v2/` for its challenge.
//! Where the registry hands out tokens, or takes a login, it remembers the answer; where it
//! challenges nobody (an internal registry open to its network, every test registry) there is
//! nothing to remember, and it asks again before every request: half of the coordinator's
//! requests to such a registry were these questions (each check of a worker's image: 5 requests
//! for 2 answers; each list push: 7 for 3), and the registry's CPU is what bounds a busy farm.
//! So a session with no credentials for a registry first asks here; an open registry gets a client
//! with no login stored, which sends no question at all. The answer is kept for [`FRESH`]; a 401
//! from a registry believed open forgets it ([`forget`]), so a registry that starts asking for a
//! login is asked again by the next session.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;

use super::RegistryConfig;
use super::upload::HTTP;
use crate::auth::Credentials;

/// How long an answer is believed.
pub(super) const FRESH: Duration = Duration::from_secs(60);

/// Registries asked, with whether they were open and when.
static ANSWERS: LazyLock<Mutex<HashMap<String, (bool, Instant)>>> = LazyLock::new(Default::default);

/// Registries remembered at most; the memo is emptied when it is full.
const REMEMBERED: usize = 256;

fn answers() -> std::sync::MutexGuard<'static, HashMap<String, (bool, Instant)>> {
    ANSWERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `registry` (host[:port], as resolved) answers `GET /v2/` with a success and no
/// challenge, as last seen within [`FRESH`], else asked now (a registry that cannot be asked is
/// not open: requests to it then go as oci-client sends them, and fail with its own error).
pub(super) async fn is_open(config: &RegistryConfig, registry: &str) -> bool {
    if let Some(&(open, at)) = answers().get(registry)
        && at.elapsed() < FRESH
    {
        return open;
    }
    let scheme = if config.is_insecure(registry) {
        "http"
    } else {
        "https"
    };
    let asked = HTTP
        .get(format!("{scheme}://{registry}/v2/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let open = asked.is_ok_and(|r| {
        r.status().is_success() && !r.headers().contains_key(reqwest::header::WWW_AUTHENTICATE)
    });
    let mut answers = answers();
    if answers.len() >= REMEMBERED {
        answers.clear();
    }
    answers.insert(registry.to_owned(), (open, Instant::now()));
    open
}

/// The registries of `credentials` reached without a login that are open ([`is_open`]).
pub(super) async fn among(
    config: &RegistryConfig,
    credentials: &HashMap<String, Credentials>,
) -> HashSet<String> {
    let mut open = HashSet::new();
    for (registry, creds) in credentials {
        if matches!(creds.auth, RegistryAuth::Anonymous) && is_open(config, registry).await {
            open.insert(registry.clone());
        }
    }
    open
}

/// Forgets what `registry` answered (it refused a request made without credentials).
pub(super) fn forget(registry: &str) {
    answers().remove(registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback registry giving every request `response`, counting them all.
    async fn registry(
        response: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        super::super::loopback::serve(move |_| (response.to_owned(), true)).await
    }

    const OPEN: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    const BASIC: &str = "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"r\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const BEARER: &str = "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"https://auth.example/token\",service=\"r\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const OK_WITH_CHALLENGE: &str = "HTTP/1.1 200 OK\r\nwww-authenticate: Bearer realm=\"https://auth.example/token\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn only_a_registry_that_challenges_nobody_is_open_and_the_answer_is_kept() {
        let config = RegistryConfig::default();
        for (response, open) in [
            (OPEN, true),
            (BASIC, false),
            (BEARER, false),
            (OK_WITH_CHALLENGE, false),
        ] {
            let (addr, asked) = registry(response).await;
            assert_eq!(is_open(&config, &addr).await, open, "{response}");
            assert_eq!(is_open(&config, &addr).await, open, "{response}");
            assert_eq!(
                asked.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "asked once"
            );
            forget(&addr);
            assert_eq!(is_open(&config, &addr).await, open, "{response}");
            assert_eq!(
                asked.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "asked again"
            );
        }
    }

    #[tokio::test]
    async fn a_registry_that_cannot_be_asked_is_not_open() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        assert!(!is_open(&RegistryConfig::default(), &addr).await);
    }
}
