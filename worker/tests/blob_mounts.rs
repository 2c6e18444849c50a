//! A cross-repository blob mount against the real registry: mounted from a repository that holds
//! the blob, refused (with the registry's answer, which a push shows in the job's output before
//! it uploads the blob) from one that does not.

mod support;

use manifold_registry::RegistryConfig;
use manifold_registry::session::{Mount, Session};
use oci_client::{Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

fn reference(repository: &str) -> Reference {
    let (registry, path) = repository.split_once('/').unwrap();
    Reference::with_tag(registry.into(), path.into(), "latest".into())
}

#[tokio::test]
async fn a_blob_mounts_from_a_repository_that_holds_it_and_is_refused_with_the_answer_from_one_that_does_not()
 {
    let registry = support::registry();
    let session = Session::open(&RegistryConfig::default(), &[&registry])
        .await
        .unwrap();
    let (holder, target, empty) = (
        reference(&support::unique_repository("mount-holder")),
        reference(&support::unique_repository("mount-target")),
        reference(&support::unique_repository("mount-empty")),
    );
    for r in [&holder, &target, &empty] {
        session
            .authenticate(r, RegistryOperation::Push, "authenticating")
            .await
            .unwrap();
    }
    let bytes = bytes::Bytes::from(format!("blob {}", uuid::Uuid::new_v4()));
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    session
        .push_blob(&holder, bytes, &digest, "pushing the blob")
        .await
        .unwrap();

    let refused = session.mount_blob(&target, &empty, &digest).await.unwrap();
    eprintln!("mount from a repository without the blob: {refused:?}");
    assert!(
        matches!(&refused, Mount::Refused(why) if !why.is_empty()),
        "{refused:?}"
    );
    assert!(!session.blob_exists(&target, &digest).await.unwrap());

    let mounted = session.mount_blob(&target, &holder, &digest).await.unwrap();
    assert_eq!(mounted, Mount::Mounted);
    assert!(session.blob_exists(&target, &digest).await.unwrap());
}
