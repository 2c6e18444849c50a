//! The worker's identity towards the coordinator, against a scripted coordinator on 127.0.0.1:0
//! (plaintext, or mutual TLS with certificates made here) and the real amd64 daemon: a coordinator
//! that refuses the worker stops it instead of being retried forever, other errors are retried,
//! the worker presents its client certificate over https://, an untrusted coordinator certificate
//! is named in the log with the flag that fixes it, and settings that cannot work stop the worker
//! before it dials anything.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manifold_proto::v1::worker_message::Msg as FromWorker;
use manifold_worker::config::ClientIdentity;
use manifold_worker::{Config, RunError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::amd64_docker;
use support::coordinator::*;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// How long a worker may take to give up on a coordinator that refused it.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A worker configured for `coordinator`, reconnecting fast.
struct TestWorker {
    config: Config,
    _cache: tempfile::TempDir,
}

impl TestWorker {
    fn new(coordinator: String) -> TestWorker {
        let cache = tempfile::tempdir().unwrap();
        let mut config = Config::from_env();
        config.coordinator = coordinator;
        config.docker_host = amd64_docker();
        config.name = format!("tls-worker-{}", uuid::Uuid::new_v4().simple());
        config.cache_dir = cache.path().to_owned();
        config.docker_config = None;
        config.reconnect_initial = Duration::from_millis(100);
        config.reconnect_max = Duration::from_millis(300);
        config.ca_cert = None;
        config.identity = None;
        TestWorker {
            config,
            _cache: cache,
        }
    }

    fn spawn(&self, shutdown: &CancellationToken) -> tokio::task::JoinHandle<Result<(), RunError>> {
        tokio::spawn(manifold_worker::run(self.config.clone(), shutdown.clone()))
    }
}

/// Waits for the worker to stop by itself.
async fn stopped(worker: tokio::task::JoinHandle<Result<(), RunError>>) -> Result<(), RunError> {
    tokio::time::timeout(STOP_WITHIN, worker)
        .await
        .expect("the worker kept running")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_the_coordinator_refuses_stops_instead_of_retrying() {
    for (code, message) in [
        (
            tonic::Code::Unauthenticated,
            "no client certificate: workers must present one",
        ),
        (
            tonic::Code::PermissionDenied,
            "the certificate names worker `other`, not this one",
        ),
    ] {
        let (fake, address, _sessions) = Fake::start().await;
        fake.refuse_next_attach(Status::new(code, message));
        let worker = TestWorker::new(format!("http://{address}"));
        let shutdown = CancellationToken::new();
        let err = stopped(worker.spawn(&shutdown)).await.unwrap_err();
        match &err {
            RunError::Refused {
                code: got, name, ..
            } => {
                assert_eq!(*got, code);
                assert_eq!(*name, worker.config.name);
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(message), "{text}");
        assert!(text.contains(&address.to_string()), "{text}");
        assert!(
            text.contains("--cert/--key") && text.contains(&worker.config.name),
            "{text}"
        );
        assert_eq!(fake.attaches(), 1, "a refused worker must not retry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_an_open_stream_also_stops_the_worker() {
    let (_fake, address, mut sessions) = Fake::start().await;
    let worker = TestWorker::new(format!("http://{address}"));
    let shutdown = CancellationToken::new();
    let handle = worker.spawn(&shutdown);
    let (session, _hello) = attach(&mut sessions).await;
    session
        .outbound
        .send(Err(Status::permission_denied(
            "team `nope` is not configured",
        )))
        .await
        .unwrap();
    let err = stopped(handle).await.unwrap_err().to_string();
    assert!(err.contains("team `nope` is not configured"), "{err}");
    // The worker has stopped: whatever it did before stopping is in the channel by now.
    assert!(
        sessions.try_recv().is_err(),
        "the worker attached again after being refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_errors_keep_the_worker_reconnecting() {
    let (fake, address, mut sessions) = Fake::start().await;
    fake.refuse_next_attach(Status::unavailable("not the leader"));
    fake.refuse_next_attach(Status::internal("state store hiccup"));
    let worker = TestWorker::new(format!("http://{address}"));
    let shutdown = CancellationToken::new();
    let handle = worker.spawn(&shutdown);
    let (session, hello) = attach(&mut sessions).await;
    assert_eq!(hello.name, worker.config.name);
    assert_eq!(fake.attaches(), 3);
    send(&session, welcome(200)).await;
    shutdown.cancel();
    // Closing the stream ends the drain at once.
    drop(session);
    stopped(handle).await.unwrap();
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and client certificates, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `<stem>.pem` and `<stem>.key`; returns their paths.
    fn issue(&self, stem: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.dir.path().join(format!("{stem}.pem")),
            self.dir.path().join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn server(&self) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue("coordinator", params)
    }

    fn worker(&self, name: &str, team: &str) -> ClientIdentity {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, team);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = self.issue(&format!("worker-{name}"), params);
        ClientIdentity { cert, key }
    }

    /// Server settings: the coordinator's certificate, and client certificates of this CA
    /// accepted but not required (the coordinator answers their absence itself).
    fn server_tls(&self) -> ServerTlsConfig {
        let (cert, key) = self.server();
        ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&cert), read(&key)))
            .client_ca_root(Certificate::from_pem(read(&self.ca_pem())))
            .client_auth_optional(true)
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_presents_its_client_certificate_over_https() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = Pki::new("Test farm CA");
    let (_fake, address, mut sessions) = Fake::start_tls(pki.server_tls()).await;
    let mut worker = TestWorker::new(format!("https://127.0.0.1:{}", address.port()));
    worker.config.ca_cert = Some(pki.ca_pem());
    worker.config.identity = Some(pki.worker(&worker.config.name, "web"));
    let shutdown = CancellationToken::new();
    let handle = worker.spawn(&shutdown);

    let (mut session, hello) = attach(&mut sessions).await;
    assert_eq!(hello.name, worker.config.name);
    let leaf = session
        .peer_certs
        .first()
        .expect("the worker presented no client certificate");
    let presented = &worker.config.identity.as_ref().unwrap().cert;
    assert_eq!(*leaf, pem_contents(presented));
    let (_, cert) = X509Certificate::from_der(leaf).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), worker.config.name);
    let team = cert.subject().iter_organization().next().unwrap();
    assert_eq!(team.as_str().unwrap(), "web");

    // The stream works both ways over TLS.
    send(&session, welcome(100)).await;
    let mut lines = Vec::new();
    until(&mut session, &mut lines, |m| {
        matches!(m, FromWorker::Heartbeat(_)).then_some(())
    })
    .await;
    shutdown.cancel();
    until(&mut session, &mut lines, |m| {
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    drop(session);
    stopped(handle).await.unwrap();
}

/// The DER inside a PEM certificate file.
fn pem_contents(path: &Path) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(&read(path)).unwrap();
    pem.contents
}

/// Collects what the worker logs on this thread, and wakes whoever waits for a line.
#[derive(Clone, Default)]
struct Logs(Arc<(Mutex<Vec<u8>>, tokio::sync::Notify)>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned()
    }

    /// Whether one line holds every one of `parts`.
    fn has_line(&self, parts: &[&str]) -> bool {
        self.text()
            .lines()
            .any(|line| parts.iter().all(|part| line.contains(part)))
    }

    /// Waits, for at most `limit`, until one line holds every one of `parts`; whether one did.
    async fn logged(&self, limit: Duration, parts: &[&str]) -> bool {
        let holds = || self.has_line(parts);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let written = self.0.1.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if holds() {
                return true;
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                return holds();
            }
        }
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().unwrap().extend_from_slice(buf);
        self.0.1.notify_waiters();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects what is logged on this thread until the guard is dropped. With a current-thread
/// runtime, the worker's tasks run on the test's thread, so this sees them.
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    (logs, guard)
}

#[tokio::test]
async fn an_untrusted_coordinator_certificate_is_named_with_the_flag_to_fix_and_retried() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (logs, _guard) = capture_logs();
    let coordinator_pki = Pki::new("The coordinator's CA");
    let other_pki = Pki::new("Some other CA");
    let (fake, address, _sessions) = Fake::start_tls(coordinator_pki.server_tls()).await;
    let url = format!("https://127.0.0.1:{}", address.port());
    let mut worker = TestWorker::new(url.clone());
    worker.config.ca_cert = Some(other_pki.ca_pem());
    worker.config.identity = Some(coordinator_pki.worker(&worker.config.name, "web"));
    let shutdown = CancellationToken::new();
    let handle = worker.spawn(&shutdown);

    let explained = logs
        .logged(
            STOP_WITHIN,
            &[
                "cannot verify the TLS certificate of the coordinator at",
                &url,
                "UnknownIssuer",
                "pass --ca-cert",
            ],
        )
        .await;
    assert!(
        explained,
        "no clear log line; the worker logged:\n{}",
        logs.text()
    );
    // It keeps trying: that is how a worker waits for a coordinator it will trust.
    assert!(
        fake.connected(3, STOP_WITHIN).await,
        "the worker stopped dialling after {} connections",
        fake.connections()
    );
    assert!(!handle.is_finished());
    assert_eq!(fake.attaches(), 0);
    shutdown.cancel();
    stopped(handle).await.unwrap();
}

#[tokio::test]
async fn settings_that_cannot_work_stop_the_worker_before_it_dials() {
    let check = |worker: TestWorker, expected: &'static [&'static str]| async move {
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            manifold_worker::run(worker.config.clone(), CancellationToken::new()),
        )
        .await
        .expect("the worker should stop at once")
        .unwrap_err()
        .to_string();
        for part in expected {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
    };
    // A documentation address (RFC 5737): refused before anything is sent to it.
    check(
        TestWorker::new("http://192.0.2.10:7700".into()),
        &["refusing plaintext `http://192.0.2.10:7700`", "https://"],
    )
    .await;
    check(
        TestWorker::new("http://127.0.0.1:7700,http://192.0.2.11:7700".into()),
        &["`http://192.0.2.11:7700`"],
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut worker = TestWorker::new("https://127.0.0.1:1".into());
    worker.config.ca_cert = Some(dir.path().join("no-such-ca.pem"));
    check(worker, &["--ca-cert", "no-such-ca.pem"]).await;

    let pki = Pki::new("A CA");
    let mut worker = TestWorker::new("https://127.0.0.1:1".into());
    worker.config.ca_cert = Some(pki.ca_pem());
    let mut identity = pki.worker("w", "web");
    // Another certificate's key: rustls refuses the pair.
    identity.key = pki.worker("other", "web").key;
    worker.config.identity = Some(identity);
    check(worker, &["--cert and --key belong together"]).await;

    std::fs::write(dir.path().join("garbage.key"), "not a key").unwrap();
    let mut worker = TestWorker::new("https://127.0.0.1:1".into());
    worker.config.ca_cert = Some(pki.ca_pem());
    worker.config.identity = Some(ClientIdentity {
        cert: pki.worker("w2", "web").cert,
        key: dir.path().join("garbage.key"),
    });
    check(worker, &["garbage.key", "PRIVATE KEY"]).await;
}

#[tokio::test]
async fn a_coordinator_requiring_a_client_certificate_is_named_when_the_worker_has_none() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (logs, _guard) = capture_logs();
    let pki = Pki::new("The coordinator's CA");
    let (fake, address, _sessions) =
        Fake::start_tls(pki.server_tls().client_auth_optional(false)).await;
    // Dialled by name this time: the certificate names localhost too.
    let url = format!("https://localhost:{}", address.port());
    let mut worker = TestWorker::new(url.clone());
    worker.config.ca_cert = Some(pki.ca_pem());
    let shutdown = CancellationToken::new();
    let handle = worker.spawn(&shutdown);
    let explained = logs
        .logged(
            STOP_WITHIN,
            &[
                "refused this worker's TLS client certificate",
                &url,
                "pass --cert and --key",
            ],
        )
        .await;
    assert!(
        explained,
        "no clear log line; the worker logged:\n{}",
        logs.text()
    );
    assert!(logs.has_line(&["no client certificate", "pass --cert and --key"]));
    assert!(!handle.is_finished());
    assert_eq!(fake.attaches(), 0);
    shutdown.cancel();
    stopped(handle).await.unwrap();
}
