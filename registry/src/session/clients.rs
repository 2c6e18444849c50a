//! One registry client per registries, protocols and credentials, shared by the sessions that
//! need the same ([`cached`]).

use std::collections::{HashMap, HashSet};

use oci_client::Client;

use super::{Credentials, RegistryConfig};

/// Clients already made, by what they are made of. Making one parses the system's trust store
/// (twice): when each check of a worker's image and each list push made its own, that was ~60% of
/// the coordinator's CPU at 100 workers, and it ran on the async threads. Sessions for the same
/// registries over the same protocols with the same credentials share one client, and so its
/// token cache (the same credentials have the same rights); other credentials get their own.
static CLIENTS: std::sync::LazyLock<std::sync::Mutex<HashMap<[u8; 32], Client>>> =
    std::sync::LazyLock::new(Default::default);

/// Clients kept at most; the cache is emptied when it is full (their sessions keep theirs).
const CACHED_CLIENTS: usize = 64;

/// The client for `registries` with `credentials`: the one made before for the same, or a new one.
pub(super) fn cached(
    config: &RegistryConfig,
    registries: &[String],
    credentials: &HashMap<String, Credentials>,
    open: &HashSet<String>,
) -> Client {
    let key = client_key(config, registries, credentials, open);
    let cache = || CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(client) = cache().get(&key) {
        return client.clone();
    }
    // Made outside the lock: two sessions racing make two, and one of them is kept.
    let client = config.client_for(&registries.iter().map(String::as_str).collect::<Vec<_>>());
    let mut cache = cache();
    if cache.len() >= CACHED_CLIENTS {
        cache.clear();
    }
    cache.entry(key).or_insert(client).clone()
}

/// What a client is made of, hashed: each registry, whether it is reached over plain HTTP, and
/// the credentials used for it.
fn client_key(
    config: &RegistryConfig,
    registries: &[String],
    credentials: &HashMap<String, Credentials>,
    open: &HashSet<String>,
) -> [u8; 32] {
    use oci_client::secrets::RegistryAuth;
    use sha2::Digest as _;
    // The key is a hash: the cache holds no secret in clear beside the clients themselves.
    let mut key = sha2::Sha256::new();
    for registry in registries {
        key.update(registry.as_bytes());
        key.update([0, u8::from(config.is_insecure(registry))]);
        match credentials.get(registry).map(|c| &c.auth) {
            // An open registry's client has no login stored (see `open`); another anonymous
            // one has oci-client's anonymous login, so asks for a challenge: not the same client.
            None | Some(RegistryAuth::Anonymous) if open.contains(registry) => {
                key.update(b"open\0")
            }
            None | Some(RegistryAuth::Anonymous) => key.update(b"anonymous\0"),
            Some(RegistryAuth::Basic(user, password)) => {
                key.update(b"basic\0");
                key.update(user.as_bytes());
                key.update([0]);
                key.update(password.as_bytes());
            }
            Some(RegistryAuth::Bearer(token)) => {
                key.update(b"bearer\0");
                key.update(token.as_bytes());
            }
        }
        key.update([0xff]);
    }
    key.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_a_client_only_with_the_same_registries_protocols_and_credentials() {
        use oci_client::secrets::RegistryAuth;
        let creds = |auth: Option<RegistryAuth>| -> HashMap<String, Credentials> {
            auth.map(|auth| {
                let c = Credentials {
                    auth,
                    ..Credentials::anonymous(None)
                };
                ("registry.example.com".to_owned(), c)
            })
            .into_iter()
            .collect()
        };
        let basic = |u: &str, p: &str| Some(RegistryAuth::Basic(u.into(), p.into()));
        let plain = RegistryConfig::default();
        let insecure = RegistryConfig {
            insecure: vec!["registry.example.com".into()],
        };
        let one = ["registry.example.com".to_owned()];
        let key = |config: &RegistryConfig, registries: &[String], auth| {
            client_key(config, registries, &creds(auth), &HashSet::new())
        };
        let alice = key(&plain, &one, basic("alice", "pw"));
        assert_eq!(alice, key(&plain, &one, basic("alice", "pw")));
        for other in [
            key(&plain, &one, basic("alice", "other")),
            key(&plain, &one, basic("bob", "pw")),
            key(&plain, &one, Some(RegistryAuth::Bearer("pw".into()))),
            key(&plain, &one, None),
            key(&insecure, &one, basic("alice", "pw")),
            key(
                &plain,
                &[one[0].clone(), "127.0.0.1:5000".into()],
                basic("alice", "pw"),
            ),
        ] {
            assert_ne!(alice, other);
        }
        // No credentials and anonymous ones are the same client.
        assert_eq!(
            key(&plain, &one, None),
            key(&plain, &one, Some(RegistryAuth::Anonymous))
        );
        // An open registry's client stores no login: not the anonymous client of one that asks.
        let open: HashSet<String> = one.iter().cloned().collect();
        assert_ne!(
            client_key(&plain, &one, &creds(None), &open),
            key(&plain, &one, None)
        );
        assert_eq!(
            client_key(&plain, &one, &creds(basic("alice", "pw")), &open),
            alice,
            "only anonymous access makes use of an open registry"
        );
    }
}
