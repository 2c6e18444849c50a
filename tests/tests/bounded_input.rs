//! Every input has a bound: oversized requests and uploads are refused naming the limit and its
//! config key, a context tar that leaves its root is refused at submit, and listings stay small
//! whatever the builds carry.
//!
//! The farm serves TLS with two teams and small `[limits]` in its config file; all traffic stays
//! on 127.0.0.1.

use manifold_proto::v1;
use manifold_tests::{TestFarm, context_dir, issue_token, show, with_token};
use sha2::Digest as _;

struct Farm {
    farm: TestFarm,
    alice: String,
    bob: String,
}

/// Uploads are at most 64 KiB, and a team stores at most 100,000 context bytes.
async fn farm() -> anyhow::Result<Farm> {
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "platform"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"platform\"\n\n{alice_entry}\n\n{bob_entry}\n\n[limits]\nmax_context_bytes = 65536\nmax_team_context_bytes = 100000\n"
    );
    let farm = TestFarm::builder().secured(&config, &[]).start().await?;
    Ok(Farm { farm, alice, bob })
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn upload(farm: &TestFarm, token: &str, data: &[u8]) -> Result<String, tonic::Status> {
    let mut c = v1::contexts_client::ContextsClient::new(farm.channel().await.expect("channel"));
    let digest = sha256(data);
    let chunks: Vec<_> = data
        .chunks(16 << 10)
        .map(|d| v1::UploadContextChunk {
            digest: digest.clone(),
            data: d.to_vec(),
        })
        .collect();
    c.upload(with_token(token, futures::stream::iter(chunks)))
        .await
        .map(|r| r.into_inner().digest)
}

async fn has(farm: &TestFarm, token: &str, digest: &str) -> anyhow::Result<bool> {
    let mut c = v1::contexts_client::ContextsClient::new(farm.channel().await?);
    let request = v1::HasContextRequest {
        digest: digest.to_owned(),
    };
    Ok(c.has(with_token(token, request))
        .await?
        .into_inner()
        .present)
}

async fn submit(
    farm: &TestFarm,
    token: &str,
    edit: impl FnOnce(&mut v1::SubmitBuildRequest),
) -> Result<String, tonic::Status> {
    let mut request = v1::SubmitBuildRequest {
        image: format!("{}:1", farm.env.unique_repo("bounded")),
        platforms: vec![v1::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }],
        context_digest: sha256(b"nothing"),
        ..Default::default()
    };
    edit(&mut request);
    let mut c = farm.builds().await.expect("channel");
    c.submit(with_token(token, request))
        .await
        .map(|r| r.into_inner().build_id)
}

/// A tar entry: path, type flag (`0` file, `1` hard link, `2` symbolic link), link target.
type Entry<'a> = (&'a str, u8, &'a str);

/// A ustar archive of raw entries, written byte by byte so that it can hold what no honest packer
/// writes.
fn raw_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, target) in entries {
        let data: &[u8] = if *kind == b'0' {
            b"FROM scratch\n"
        } else {
            b""
        };
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn assert_status(got: Result<String, tonic::Status>, code: tonic::Code, needles: &[&str]) {
    let status = got.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "`{}` should say `{needle}`",
            status.message()
        );
    }
}

#[tokio::test]
async fn oversized_requests_are_refused_naming_the_limit_and_listing_keeps_working()
-> anyhow::Result<()> {
    let Farm { farm, alice, .. } = farm().await?;
    // The submits of the issue: 10,000 build args, and a 10 MB label.
    let many = submit(&farm, &alice, |r| {
        r.build_args = (0..10_000).map(|i| (format!("A{i}"), "v".into())).collect();
    })
    .await;
    assert_status(
        many,
        tonic::Code::InvalidArgument,
        &[
            "the number of build args is 10000, over the limit of 100",
            "`max_build_args`",
        ],
    );
    let huge = submit(&farm, &alice, |r| {
        r.labels = [("big".into(), "x".repeat(10 << 20))].into();
    })
    .await;
    assert_status(
        huge,
        tonic::Code::InvalidArgument,
        &[
            "label `big` (key and value) is 10485763 bytes",
            "`max_entry_bytes`",
        ],
    );
    let long_target = submit(&farm, &alice, |r| r.target = "t".repeat(300)).await;
    assert_status(
        long_target,
        tonic::Code::InvalidArgument,
        &["`max_target_bytes`"],
    );
    let long_dockerfile = submit(&farm, &alice, |r| r.dockerfile = "d/".repeat(600)).await;
    assert_status(
        long_dockerfile,
        tonic::Code::InvalidArgument,
        &["`max_dockerfile_bytes`"],
    );
    // A build with a 10 KiB build arg (within the limits) is listed without it; Get has it.
    let ctx = context_dir(&[("Dockerfile", &format!("FROM {}\n", farm.env.base_image))])?;
    let big_arg = format!("BIG={}", "y".repeat(10 << 10));
    let tag = format!("{}:1", farm.env.unique_repo("listed"));
    let id = farm
        .submit_detached_as(
            Some(&alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                "--build-arg",
                &big_arg,
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    let out = farm.cli(["builds"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let list = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 5000,
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(list.builds.len(), 1, "only the accepted build");
    assert!(
        list.builds[0]
            .request
            .as_ref()
            .unwrap()
            .build_args
            .is_empty()
    );
    let full = farm.build(&id).await?;
    let request = full.request.unwrap();
    assert_eq!(request.build_args["BIG"].len(), 10 << 10);
    let digest = request.context_digest;
    // A key of control characters is quoted escaped, never raw.
    let ugly = submit(&farm, &alice, |r| {
        r.context_digest = digest.clone();
        r.build_args = [("\u{1b}[2J bad".into(), "v".into())].into();
    })
    .await
    .expect_err("a key with whitespace");
    assert!(
        ugly.message().contains("`\\u{1b}[2J bad`") && !ugly.message().contains('\u{1b}'),
        "{ugly:?}"
    );

    let out = farm.cli(["cancel", &id]).await?;
    assert!(out.status.success(), "{}", show(&out));
    Ok(())
}

#[tokio::test]
async fn context_uploads_are_bounded_per_upload_and_per_team() -> anyhow::Result<()> {
    let Farm { farm, alice, bob } = farm().await?;
    // One upload over 64 KiB (not even a tar: the error does not echo it).
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let refused = upload(&farm, &alice, &blob).await;
    assert_status(
        refused,
        tonic::Code::ResourceExhausted,
        &["over the limit of 65536 bytes", "`max_context_bytes`"],
    );
    assert!(!has(&farm, &alice, &sha256(&blob)).await?);

    // 60,000 bytes fit; 60,000 more would take the team over 100,000.
    let first = vec![1u8; 60_000];
    let second = vec![2u8; 60_000];
    let digest = upload(&farm, &alice, &first).await?;
    assert!(has(&farm, &alice, &digest).await?);
    let refused = upload(&farm, &alice, &second).await;
    assert_status(
        refused,
        tonic::Code::ResourceExhausted,
        &["team `mobile`", "`max_team_context_bytes`"],
    );
    assert!(!has(&farm, &alice, &sha256(&second)).await?);
    // Uploading a held context again does not count it twice; another team has its own quota.
    upload(&farm, &alice, &first).await?;
    upload(&farm, &bob, &second).await?;

    // A stored context that is not a tar is refused at submit without echoing its bytes.
    let garbage = [0x1fu8, 0x8b, 0xff, 0x00, 0x07, 0x1b];
    let digest = upload(&farm, &alice, &garbage).await?;
    let refused = submit(&farm, &alice, |r| r.context_digest = digest.clone()).await;
    let status = refused.expect_err("not a tar");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        !status.message().contains('\u{1b}') && !status.message().contains('\u{ff}'),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_context_tar_that_leaves_its_root_is_refused_at_submit() -> anyhow::Result<()> {
    let Farm { farm, alice, .. } = farm().await?;
    let cases: [(&[Entry], &str); 5] = [
        (
            &[("Dockerfile", b'0', ""), ("../evil", b'0', "")],
            "entry `../evil`, which leaves the context: it has a `..` component",
        ),
        (
            &[("Dockerfile", b'0', ""), ("/etc/cron.d/x", b'0', "")],
            "entry `/etc/cron.d/x`, which leaves the context: it is an absolute path",
        ),
        (
            &[("Dockerfile", b'0', ""), ("up", b'2', "../../etc/shadow")],
            "symbolic link to `../../etc/shadow`, which leaves the context",
        ),
        (
            &[("Dockerfile", b'0', ""), ("hard", b'1', "/etc/shadow")],
            "hard link to `/etc/shadow`, outside the context",
        ),
        (
            &[("real", b'0', ""), ("Dockerfile", b'2', "real")],
            "dockerfile `Dockerfile` is a symbolic link",
        ),
    ];
    for (entries, expected) in cases {
        let digest = upload(&farm, &alice, &raw_tar(entries)).await?;
        let refused = submit(&farm, &alice, |r| r.context_digest = digest.clone()).await;
        assert_status(refused, tonic::Code::InvalidArgument, &[expected]);
    }
    // The same shape without the escape is accepted.
    let digest = upload(
        &farm,
        &alice,
        &raw_tar(&[
            ("Dockerfile", b'0', ""),
            ("src/link", b'2', "../Dockerfile"),
        ]),
    )
    .await?;
    let id = submit(&farm, &alice, |r| r.context_digest = digest.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let b = farm.build(&id).await?;
    assert_eq!(b.team, "mobile");
    let list = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 10,
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(list.builds.len(), 1, "only the good context became a build");
    Ok(())
}

/// Sends `body` as the request message, byte for byte: what a client made from another schema
/// (or a corrupted one) would send.
async fn raw_call(
    farm: &TestFarm,
    token: &str,
    method: &'static str,
    body: Vec<u8>,
) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(farm.channel().await.expect("channel"));
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(with_token(token, body), path, RawCodec)
        .await
        .map(|_| "answered".to_owned())
}

/// Encodes a `Vec<u8>` as it is; decodes any answer as its bytes.
#[derive(Default)]
struct RawCodec;

struct Raw;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn a_malformed_protobuf_is_invalid_argument_and_echoes_no_bytes() -> anyhow::Result<()> {
    let Farm { farm, alice, .. } = farm().await?;
    // A field-1 string whose length runs past the end; a tag of field 0; a varint that never ends.
    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated", b"\x0a\xff\x01SECRET-BYTES".to_vec()),
        ("field 0", b"\x00\x01SECRET-BYTES".to_vec()),
        ("endless varint", [b"\x08".as_slice(), &[0xff; 11]].concat()),
    ];
    for method in [
        "/manifold.v1.Builds/Submit",
        "/manifold.v1.Builds/List",
        "/manifold.v1.Contexts/Has",
    ] {
        for (case, body) in &cases {
            let status = raw_call(&farm, &alice, method, body.clone())
                .await
                .expect_err("a malformed message must be refused");
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{method}, {case}: {status:?}"
            );
            assert!(
                status
                    .message()
                    .contains("malformed message: not a valid protobuf"),
                "{method}, {case}: {}",
                status.message()
            );
            assert!(
                !status.message().contains("SECRET-BYTES"),
                "{method}, {case}: the bytes are echoed: {}",
                status.message()
            );
        }
    }
    // The same farm still answers well-formed requests.
    let mut c = farm.builds().await?;
    c.list(with_token(&alice, v1::ListBuildsRequest::default()))
        .await?;
    Ok(())
}
