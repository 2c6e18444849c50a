//! The handle's list pushes: each try of a build's manifest-list push runs in its own task, and
//! its outcome goes back to the pure state ([`super::FarmState::published`]), which decides what follows.

use manifold_proto::BuildId;
use manifold_registry::{self as registry, ChildImage};

use super::{Farm, PublishFailure, Shared, now};
use crate::build::Build;

impl Farm {
    /// Pushes the list of a build whose platforms all succeeded, in its own task. Ending the build
    /// meanwhile (a cancel) stops the push where it is, so no tag is written after the cancel.
    pub(super) fn spawn_publish(&self, sh: &mut Shared, build: Build) {
        let farm = self.clone();
        let build_id = build.id;
        let stop = self.inner.term.child_token();
        sh.publishing.insert(build_id, stop.clone());
        let span = tracing::info_span!("publish", build = %build_id);
        self.inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let children: Vec<ChildImage> =
                    build.jobs.iter().filter_map(|j| j.image.clone()).collect();
                let template = build.spec.arch_tags.then(|| {
                    build
                        .spec
                        .arch_tag_template
                        .as_deref()
                        .and_then(|t| registry::tag_template::TagTemplate::parse(t).ok())
                        .unwrap_or_default()
                });
                let logins = (farm.inner.config.repositories).logins_for(&build.team, &build.spec);
                let publish = registry::publish_with(
                    &farm.inner.config.registry,
                    &build.spec.image,
                    &build.spec.extra_tags,
                    &children,
                    // Each was read from this repository when its worker reported it.
                    registry::Children::Verified,
                    template.as_ref(),
                    &logins,
                );
                tokio::select! {
                    result = publish => farm.published(build_id, result),
                    _ = stop.cancelled() => {
                        tracing::info!("manifest list push stopped: the build ended (or this coordinator stepped down)");
                    }
                }
            },
            span,
        ));
    }

    fn published(
        &self,
        build_id: BuildId,
        result: Result<registry::Published, registry::RegistryError>,
    ) {
        let result = result
            .map(|p| (p.digest, p.media_type.to_owned()))
            .map_err(|e| PublishFailure {
                transient: e.is_transient(),
                message: e.to_string(),
            });
        let mut sh = self.lock();
        sh.publishing.remove(&build_id);
        let effects = sh.state.published(build_id, result, now());
        self.apply(&mut sh, effects, None);
    }
}
