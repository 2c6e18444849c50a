//! An `AssignJob` from the coordinator turned into the worker's [`JobSpec`], every field checked:
//! the only place the worker reads an assignment's wire form.

use manifold_proto::{JobId, Platform, v1};

use crate::context_cache::ContextDigest;
use crate::job::JobSpec;

/// Converts an assignment into the worker's job type; the error names the bad field.
pub fn job_spec(assign: &v1::AssignJob) -> Result<JobSpec, String> {
    let job_id = assign.job_id.parse::<JobId>()?;
    let build_id = if assign.build_id.is_empty() {
        None
    } else {
        Some(assign.build_id.parse()?)
    };
    let platform = assign
        .platform
        .as_ref()
        .ok_or_else(|| "the assignment has no platform".to_owned())?;
    let platform = Platform::try_from(platform).map_err(|e| e.to_string())?;
    let context_digest = ContextDigest::parse(&assign.context_digest).map_err(|e| e.to_string())?;
    crate::push::parse_repository(&assign.repository).map_err(|e| e.to_string())?;
    Ok(JobSpec {
        job_id,
        attempt: assign.attempt,
        build_id,
        platform,
        context_digest,
        dockerfile: if assign.dockerfile.is_empty() {
            "Dockerfile".to_owned()
        } else {
            assign.dockerfile.clone()
        },
        build_args: assign.build_args.clone().into_iter().collect(),
        target: Some(assign.target.clone()).filter(|t| !t.is_empty()),
        labels: assign.labels.clone().into_iter().collect(),
        repository: assign.repository.clone(),
        insecure_registry: assign.insecure_registry,
        flags: assign
            .flags
            .as_ref()
            .map(manifold_proto::build_flags::from_wire)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default(),
        secrets: assign
            .secrets
            .iter()
            .map(|s| (s.id.clone(), manifold_proto::SecretValue(s.value.clone())))
            .collect(),
        registry_logins: assign
            .registry_logins
            .iter()
            .map(|l| manifold_registry::RegistryLogin {
                registry: l.registry.clone(),
                username: l.username.clone(),
                password: l.password.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign() -> v1::AssignJob {
        v1::AssignJob {
            job_id: "3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a".into(),
            attempt: 2,
            build_id: "7e2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3b".into(),
            platform: Some(v1::Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: "v8".into(),
            }),
            context_digest: format!("sha256:{}", "ab".repeat(32)),
            dockerfile: String::new(),
            build_args: [("A".to_owned(), "1".to_owned())].into(),
            target: String::new(),
            labels: Default::default(),
            repository: "127.0.0.1:5000/team/app".into(),
            insecure_registry: true,
            ..Default::default()
        }
    }

    #[test]
    fn assignments_become_job_specs_with_defaults_filled_in() {
        let spec = job_spec(&assign()).unwrap();
        assert_eq!(spec.platform, Platform::linux_arm64());
        assert_eq!(spec.dockerfile, "Dockerfile");
        assert_eq!(spec.target, None);
        assert_eq!(spec.attempt, 2);
        assert_eq!(spec.build_args["A"], "1");
        assert_eq!(
            spec.local_tag(),
            "manifold-local/3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a:2"
        );
    }

    #[test]
    fn bad_assignments_are_refused_naming_the_bad_value() {
        let mut a = assign();
        a.job_id = "nope".into();
        assert!(job_spec(&a).unwrap_err().contains("`nope`"));
        let mut a = assign();
        a.context_digest = "md5:x".into();
        assert!(job_spec(&a).unwrap_err().contains("`md5:x`"));
        let mut a = assign();
        a.repository = "127.0.0.1:5000/app:1.0".into();
        assert!(job_spec(&a).unwrap_err().contains("has a tag"));
        let mut a = assign();
        a.platform = None;
        assert!(job_spec(&a).unwrap_err().contains("no platform"));
    }
}
