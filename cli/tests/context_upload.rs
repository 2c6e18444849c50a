//! Sending a context to a coordinator (an in-memory `Contexts` twin over real gRPC): uploaded once
//! per digest, exactly the bytes hashed, and a change between the two passes reported clearly.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use manifold_cli::client::Coordinator;
use manifold_cli::context::{self, ContextError, ContextSource, SendOutcome};
use sha2::{Digest, Sha256};
use support::{Twin, serve, tree};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_context_is_uploaded_exactly_and_a_present_one_not_at_all() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let coordinator = Coordinator::connect(&served.address).await.unwrap();
    let dir = tree(&[
        ("Dockerfile", "FROM scratch\nCOPY . /\n"),
        (".dockerignore", "*.tmp\n"),
        ("app/main.py", "print('hi')\n"),
        ("scratch.tmp", "excluded"),
    ]);
    let source = Arc::new(ContextSource::open(dir.path(), &["Dockerfile".into()]).unwrap());
    let digest = source.digest().unwrap();
    let expected_tar = source.write_tar(Vec::new()).unwrap();

    // Has → false: the whole tar is uploaded, and it is exactly what was hashed.
    let outcome = context::send(&coordinator, Arc::clone(&source), &digest)
        .await
        .unwrap();
    assert_eq!(outcome, SendOutcome::Uploaded(digest.size));
    assert_eq!(twin.uploads.load(Ordering::SeqCst), 1);
    assert_eq!(twin.uploaded_bytes.load(Ordering::SeqCst), digest.size);
    let stored = twin.contexts.lock().unwrap()[&digest.digest].clone();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&stored))),
        digest.digest
    );
    assert_eq!(stored, expected_tar);

    // Has → true: nothing is uploaded the second time.
    let again = source.digest().unwrap();
    assert_eq!(again, digest);
    let outcome = context::send(&coordinator, Arc::clone(&source), &again)
        .await
        .unwrap();
    assert_eq!(outcome, SendOutcome::AlreadyPresent);
    assert_eq!(twin.has_calls.load(Ordering::SeqCst), 2);
    assert_eq!(twin.uploads.load(Ordering::SeqCst), 1, "no second upload");
    assert_eq!(twin.uploaded_bytes.load(Ordering::SeqCst), digest.size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_between_the_passes_is_reported_as_such() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let coordinator = Coordinator::connect(&served.address).await.unwrap();
    let dir = tree(&[("Dockerfile", "FROM scratch\n"), ("data.txt", "before")]);
    let changing = dir.path().join("data.txt");
    // The twin edits the context while answering Has: after the hash, before the upload.
    *twin.on_has.lock().unwrap() = Some(Box::new(move || {
        std::fs::write(&changing, "after!").unwrap();
    }));
    let source = Arc::new(ContextSource::open(dir.path(), &["Dockerfile".into()]).unwrap());
    let digest = source.digest().unwrap();
    let err = context::send(&coordinator, source, &digest)
        .await
        .unwrap_err();
    let ContextError::ChangedDuringUpload {
        expected, actual, ..
    } = &err
    else {
        panic!("expected ChangedDuringUpload, got {err:?}");
    };
    assert_eq!(expected, &digest.digest);
    assert_ne!(actual, &digest.digest);
    let text = err.to_string();
    assert!(
        text.contains("changed between hashing and uploading"),
        "{text}"
    );
    assert!(text.contains("run the build again"), "{text}");
    // The coordinator kept nothing.
    assert!(twin.contexts.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_upload_shows_the_coordinators_message() {
    let twin = Twin::new();
    *twin.reject_uploads.lock().unwrap() = Some(tonic::Status::resource_exhausted(
        "context store is full (2 GiB): remove old contexts",
    ));
    let served = serve(Arc::clone(&twin)).await;
    let coordinator = Coordinator::connect(&served.address).await.unwrap();
    let dir = tree(&[("Dockerfile", "FROM scratch\n")]);
    let source = Arc::new(ContextSource::open(dir.path(), &["Dockerfile".into()]).unwrap());
    let digest = source.digest().unwrap();
    let err = context::send(&coordinator, source, &digest)
        .await
        .unwrap_err();
    assert!(matches!(err, ContextError::Coordinator(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "uploading the context: context store is full (2 GiB): remove old contexts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_the_bytes_do_not_have_is_caught_locally() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let coordinator = Coordinator::connect(&served.address).await.unwrap();
    let dir = tree(&[("Dockerfile", "FROM scratch\n")]);
    let source = Arc::new(ContextSource::open(dir.path(), &["Dockerfile".into()]).unwrap());
    // Claim a digest the bytes do not have: the twin refuses it as the coordinator would, and the
    // CLI explains it from its own second pass.
    let mut digest = source.digest().unwrap();
    let real = digest.digest.clone();
    digest.digest = format!("sha256:{}", "0".repeat(64));
    let err = context::send(&coordinator, source, &digest)
        .await
        .unwrap_err();
    match &err {
        ContextError::ChangedDuringUpload { actual, .. } => assert_eq!(actual, &real),
        other => panic!("expected ChangedDuringUpload, got {other:?}"),
    }
    assert!(twin.contexts.lock().unwrap().is_empty());
}
