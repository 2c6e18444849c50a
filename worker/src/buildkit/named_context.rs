//! `--build-context NAME=DIR`: the directory reaches the worker as a context tar of its own
//! (uploaded by the CLI, downloaded like the main context), and BuildKit gets it as a frontend
//! input: an LLB definition that fetches the tar from the session's upload
//! (`http://buildkit-session/<session>/named-<i>.tar`) and unpacks it into an empty filesystem,
//! which is how the Dockerfile frontend itself unpacks a remote context tar (`llb.HTTP` then a
//! copy with `AttemptUnpack`). The frontend is told `context:NAME=input:NAME`.

use std::collections::HashMap;

use bollard_buildkit_proto::pb;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

/// The definition of "the tar at `url`, unpacked at `/`", its steps named after context `name`
/// in the build's progress.
pub fn definition(name: &str, url: &str) -> pb::Definition {
    let source = pb::Op {
        inputs: Vec::new(),
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: url.to_owned(),
            attrs: HashMap::from([("http.filename".to_owned(), "context".to_owned())]),
        })),
        platform: None,
        constraints: None,
    };
    let source_bytes = source.encode_to_vec();
    let unpack = pb::Op {
        inputs: vec![pb::Input {
            digest: digest(&source_bytes),
            index: 0,
        }],
        op: Some(pb::op::Op::File(pb::FileOp {
            actions: vec![pb::FileAction {
                // -1: onto scratch; the tar comes from input 0.
                input: -1,
                secondary_input: 0,
                output: 0,
                action: Some(pb::file_action::Action::Copy(pb::FileActionCopy {
                    src: "/context".into(),
                    dest: "/".into(),
                    owner: None,
                    mode: -1,
                    follow_symlink: false,
                    dir_copy_contents: false,
                    attempt_unpack_docker_compatibility: true,
                    create_dest_path: false,
                    allow_wildcard: false,
                    allow_empty_wildcard: false,
                    timestamp: -1,
                    include_patterns: Vec::new(),
                    exclude_patterns: Vec::new(),
                    always_replace_existing_dest_paths: false,
                    mode_str: String::new(),
                    required_paths: Vec::new(),
                })),
            }],
        })),
        platform: None,
        constraints: None,
    };
    let unpack_bytes = unpack.encode_to_vec();
    // The last op names the result: no operation, one input.
    let result = pb::Op {
        inputs: vec![pb::Input {
            digest: digest(&unpack_bytes),
            index: 0,
        }],
        op: None,
        platform: None,
        constraints: None,
    };
    let result_bytes = result.encode_to_vec();
    // BuildKit wants metadata for every op (the progress names come from it).
    let named = |text: String| pb::OpMetadata {
        description: HashMap::from([("llb.customname".to_owned(), text)]),
        ..Default::default()
    };
    let metadata = HashMap::from([
        (
            digest(&source_bytes),
            named(format!("[context {name}] load the uploaded directory")),
        ),
        (
            digest(&unpack_bytes),
            named(format!("[context {name}] unpack the uploaded directory")),
        ),
        (digest(&result_bytes), pb::OpMetadata::default()),
    ]);
    pb::Definition {
        def: vec![source_bytes, unpack_bytes, result_bytes],
        metadata,
        source: None,
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_unpacks_the_session_tar_onto_scratch() {
        let def = definition("vendor", "http://buildkit-session/s1/named-0.tar");
        let ops: Vec<pb::Op> = def
            .def
            .iter()
            .map(|b| pb::Op::decode(b.as_slice()).unwrap())
            .collect();
        let Some(pb::op::Op::Source(src)) = &ops[0].op else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(src.identifier, "http://buildkit-session/s1/named-0.tar");
        assert_eq!(ops[1].inputs[0].digest, digest(&def.def[0]));
        let Some(pb::op::Op::File(file)) = &ops[1].op else {
            panic!("{:?}", ops[1])
        };
        let Some(pb::file_action::Action::Copy(copy)) = &file.actions[0].action else {
            panic!("{file:?}")
        };
        assert!(copy.attempt_unpack_docker_compatibility);
        assert_eq!((file.actions[0].input, copy.dest.as_str()), (-1, "/"));
        assert_eq!(ops[2].op, None);
        assert_eq!(ops[2].inputs[0].digest, digest(&def.def[1]));
        for op in &def.def {
            assert!(
                def.metadata.contains_key(&digest(op)),
                "every op has metadata"
            );
        }
    }
}
