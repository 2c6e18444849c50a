//! The ssh-agent a build's `--ssh` keys are served through (BuildKit's `moby.sshforward.v1.SSH`
//! session service forwards a `RUN --mount=type=ssh` socket to it, byte for byte).
//!
//! It answers the two requests a client needs (draft-miller-ssh-agent): list the identities, and
//! sign with one of them (Ed25519, ECDSA P-256/P-384, RSA with SHA-256 or SHA-512 as the client
//! asks). Everything else, adding or removing keys included, is refused: the agent is read-only,
//! as buildx's is. The keys live in memory for the session only.

use bollard::moby::sshforward::v1::ssh_server::Ssh;
use bollard::moby::sshforward::v1::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use manifold_proto::build_flags::ssh::DEFAULT_ID;
use ssh_key::private::KeypairData;
use ssh_key::{Algorithm, HashAlg, PrivateKey, Signature};

const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const RSA_SHA2_256: u32 = 2;
const RSA_SHA2_512: u32 = 4;
/// Largest request taken (OpenSSH's agent takes 256 KiB).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// One `--ssh` id's keys.
pub struct Agent {
    keys: Vec<PrivateKey>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({} keys)", self.keys.len())
    }
}

impl Agent {
    /// An agent holding `keys` (OpenSSH private key files, unencrypted).
    pub fn new(keys: &[&[u8]]) -> Result<Self, String> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(n, k)| {
                let key = PrivateKey::from_openssh(k)
                    .map_err(|e| format!("key {n} is not an OpenSSH private key: {e}"))?;
                if key.is_encrypted() {
                    return Err(format!("key {n} is protected by a passphrase"));
                }
                Ok(key)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// The answer to one request (its body, without the length prefix), as a body too.
    pub fn answer(&self, request: &[u8]) -> Vec<u8> {
        match request.split_first() {
            Some((&REQUEST_IDENTITIES, _)) => self.identities(),
            Some((&SIGN_REQUEST, rest)) => self.sign(rest).unwrap_or_else(|| vec![FAILURE]),
            _ => vec![FAILURE],
        }
    }

    fn identities(&self) -> Vec<u8> {
        let mut out = vec![IDENTITIES_ANSWER];
        let blobs: Vec<(Vec<u8>, String)> = (self.keys.iter())
            .filter_map(|k| Some((k.public_key().to_bytes().ok()?, k.comment().to_owned())))
            .collect();
        put_u32(&mut out, blobs.len() as u32);
        for (blob, comment) in blobs {
            put_string(&mut out, &blob);
            put_string(&mut out, comment.as_bytes());
        }
        out
    }

    fn sign(&self, mut rest: &[u8]) -> Option<Vec<u8>> {
        let blob = take_string(&mut rest)?;
        let data = take_string(&mut rest)?;
        let flags = take_u32(&mut rest).unwrap_or(0);
        let key =
            (self.keys.iter()).find(|k| k.public_key().to_bytes().ok().as_deref() == Some(blob))?;
        let signature = sign_with(key, data, flags)?;
        let mut encoded = Vec::new();
        ssh_encoding::Encode::encode(&signature, &mut encoded).ok()?;
        let mut out = vec![SIGN_RESPONSE];
        put_string(&mut out, &encoded);
        Some(out)
    }
}

fn sign_with(key: &PrivateKey, data: &[u8], flags: u32) -> Option<Signature> {
    let KeypairData::Rsa(rsa) = key.key_data() else {
        return signature::Signer::try_sign(key, data).ok();
    };
    // The RSA hash is the client's choice; ssh-rsa (SHA-1) is not offered.
    let (hash, bytes) = if flags & RSA_SHA2_512 != 0 {
        let signer = rsa::pkcs1v15::SigningKey::<ssh_key::sha2::Sha512>::new(rsa_private(rsa)?);
        (HashAlg::Sha512, rsa_sign(&signer, data)?)
    } else if flags & RSA_SHA2_256 != 0 {
        let signer = rsa::pkcs1v15::SigningKey::<ssh_key::sha2::Sha256>::new(rsa_private(rsa)?);
        (HashAlg::Sha256, rsa_sign(&signer, data)?)
    } else {
        return None;
    };
    Signature::new(Algorithm::Rsa { hash: Some(hash) }, bytes).ok()
}

fn rsa_sign<S>(signer: &S, data: &[u8]) -> Option<Vec<u8>>
where
    S: signature::Signer<rsa::pkcs1v15::Signature>,
{
    let sig = signer.try_sign(data).ok()?;
    Some(signature::SignatureEncoding::to_vec(&sig))
}

/// The `rsa` crate's key of an OpenSSH RSA key pair (ssh-key 0.6.7's own conversion passes the
/// first prime twice, so every signature it makes with it fails).
fn rsa_private(key: &ssh_key::private::RsaKeypair) -> Option<rsa::RsaPrivateKey> {
    let int = |m: &ssh_key::Mpint| Some(rsa::BigUint::from_bytes_be(m.as_positive_bytes()?));
    rsa::RsaPrivateKey::from_components(
        int(&key.public.n)?,
        int(&key.public.e)?,
        int(&key.private.d)?,
        vec![int(&key.private.p)?, int(&key.private.q)?],
    )
    .ok()
}

/// Splits complete agent messages off the front of `buffer`: each body, in order. A message
/// longer than [`MAX_MESSAGE`] is an error (the stream is closed).
pub fn take_messages(buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut messages = Vec::new();
    loop {
        let Some(len) = buffer.get(..4) else {
            return Ok(messages);
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > MAX_MESSAGE {
            return Err(format!(
                "an ssh-agent request of {len} bytes; at most {MAX_MESSAGE} are taken"
            ));
        }
        if buffer.len() < 4 + len {
            return Ok(messages);
        }
        messages.push(buffer[4..4 + len].to_vec());
        buffer.drain(..4 + len);
    }
}

/// `body` with its length prefix.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    put_string(&mut out, body);
    out
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (n, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_be_bytes(*n))
}

fn take_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(rest)? as usize;
    if rest.len() < len {
        return None;
    }
    let (s, tail) = rest.split_at(len);
    *rest = tail;
    Some(s)
}

/// The session's `moby.sshforward.v1.SSH` service: one [`Agent`] per `--ssh` id, from the
/// job's secrets ([`manifold_proto::build_flags::ssh`]); an id whose keys cannot be read answers
/// with why.
pub struct SshForward {
    agents: std::collections::BTreeMap<String, Result<std::sync::Arc<Agent>, String>>,
}

impl SshForward {
    /// The agents of the `--ssh` keys among `secrets`.
    pub fn new(secrets: &manifold_proto::Secrets) -> Self {
        use manifold_proto::build_flags::ssh::split_key_secret;
        let mut keys: std::collections::BTreeMap<&str, Vec<(usize, &[u8])>> = Default::default();
        for (secret_id, value) in secrets {
            if let Some((id, n)) = split_key_secret(secret_id) {
                keys.entry(id).or_default().push((n, &value.0));
            }
        }
        let agents = keys
            .into_iter()
            .map(|(id, mut keys)| {
                keys.sort_by_key(|(n, _)| *n);
                let bytes: Vec<&[u8]> = keys.iter().map(|(_, k)| *k).collect();
                (id.to_owned(), Agent::new(&bytes).map(std::sync::Arc::new))
            })
            .collect();
        Self { agents }
    }

    fn agent(&self, id: &str) -> Result<std::sync::Arc<Agent>, tonic::Status> {
        let id = if id.is_empty() { DEFAULT_ID } else { id };
        match self.agents.get(id) {
            Some(Ok(agent)) => Ok(agent.clone()),
            Some(Err(e)) => Err(tonic::Status::invalid_argument(format!("--ssh {id}: {e}"))),
            None => Err(tonic::Status::not_found(format!(
                "unset ssh forward key {id}: the build was given no --ssh {id}=PATH"
            ))),
        }
    }
}

/// The gRPC metadata key naming the id a forwarded socket is for (BuildKit's `KeySSHID`).
const SSH_ID_KEY: &str = "buildkit.ssh.id";

#[tonic::async_trait]
impl Ssh for SshForward {
    async fn check_agent(
        &self,
        request: tonic::Request<CheckAgentRequest>,
    ) -> Result<tonic::Response<CheckAgentResponse>, tonic::Status> {
        self.agent(&request.into_inner().id)?;
        Ok(tonic::Response::new(CheckAgentResponse {}))
    }

    type ForwardAgentStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<BytesMessage, tonic::Status>> + Send + 'static>,
    >;

    async fn forward_agent(
        &self,
        request: tonic::Request<tonic::Streaming<BytesMessage>>,
    ) -> Result<tonic::Response<Self::ForwardAgentStream>, tonic::Status> {
        let id = (request.metadata().get(SSH_ID_KEY))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let agent = self.agent(&id)?;
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            while let Ok(Some(chunk)) = incoming.message().await {
                buffer.extend_from_slice(&chunk.data);
                let messages = match take_messages(&mut buffer) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = tx.send(Err(tonic::Status::invalid_argument(e))).await;
                        return;
                    }
                };
                for m in messages {
                    let data = frame(&agent.answer(&m));
                    if tx.send(Ok(BytesMessage { data })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signature::Verifier;
    use ssh_encoding::Decode;

    /// A throwaway RSA key made for these tests only (`ssh-keygen -t rsa -b 2048`).
    const RSA_TEST_KEY: &str = include_str!("testdata/rsa_test_key");

    fn ed25519() -> PrivateKey {
        PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    fn agent(keys: &[&PrivateKey]) -> Agent {
        let files: Vec<_> = (keys.iter())
            .map(|k| k.to_openssh(ssh_key::LineEnding::LF).unwrap())
            .collect();
        Agent::new(&files.iter().map(|f| f.as_bytes()).collect::<Vec<_>>()).unwrap()
    }

    fn sign_request(key: &PrivateKey, data: &[u8], flags: u32) -> Vec<u8> {
        let mut m = vec![SIGN_REQUEST];
        put_string(&mut m, &key.public_key().to_bytes().unwrap());
        put_string(&mut m, data);
        put_u32(&mut m, flags);
        m
    }

    #[test]
    fn it_lists_its_keys_and_signs_with_each_as_the_client_asks() {
        let ed = ed25519();
        let rsa = PrivateKey::from_openssh(RSA_TEST_KEY).unwrap();
        let agent = agent(&[&ed, &rsa]);

        let answer = agent.answer(&[REQUEST_IDENTITIES]);
        let mut rest = &answer[1..];
        assert_eq!(answer[0], IDENTITIES_ANSWER);
        assert_eq!(take_u32(&mut rest), Some(2));
        for key in [&ed, &rsa] {
            assert_eq!(
                take_string(&mut rest).unwrap(),
                key.public_key().to_bytes().unwrap()
            );
            assert_eq!(take_string(&mut rest).unwrap(), key.comment().as_bytes());
        }

        let cases: [(&PrivateKey, u32, Option<Algorithm>); 4] = [
            (&ed, 0, Some(Algorithm::Ed25519)),
            (
                &rsa,
                RSA_SHA2_256,
                Some(Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                }),
            ),
            (
                &rsa,
                RSA_SHA2_512,
                Some(Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                }),
            ),
            (&rsa, 0, None), // ssh-rsa with SHA-1 is not offered
        ];
        for (key, flags, algorithm) in cases {
            let answer = agent.answer(&sign_request(key, b"to sign", flags));
            let Some(algorithm) = algorithm else {
                assert_eq!(answer, [FAILURE], "{flags}");
                continue;
            };
            assert_eq!(answer[0], SIGN_RESPONSE, "{algorithm:?} {flags}");
            let mut rest = &answer[1..];
            let mut blob = take_string(&mut rest).unwrap();
            let signature = Signature::decode(&mut blob).unwrap();
            assert_eq!(signature.algorithm(), algorithm, "{flags}");
            key.public_key()
                .key_data()
                .verify(b"to sign", &signature)
                .unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        }
    }

    #[test]
    fn it_refuses_unknown_keys_and_every_other_request() {
        let agent = agent(&[&ed25519()]);
        assert_eq!(agent.answer(&sign_request(&ed25519(), b"x", 0)), [FAILURE]);
        for other in [&[17u8][..], &[18], &[19], &[25], &[27], &[]] {
            assert_eq!(agent.answer(other), [FAILURE], "{other:?}");
        }
        assert!(Agent::new(&[b"not a key"]).unwrap_err().contains("key 0"));
    }

    #[test]
    fn messages_are_cut_at_their_lengths_across_chunks() {
        let mut buffer = Vec::new();
        let two = [frame(&[11]), frame(&[13, 1, 2])].concat();
        buffer.extend_from_slice(&two[..3]);
        assert_eq!(take_messages(&mut buffer).unwrap(), Vec::<Vec<u8>>::new());
        buffer.extend_from_slice(&two[3..7]);
        assert_eq!(take_messages(&mut buffer).unwrap(), [vec![11]]);
        buffer.extend_from_slice(&two[7..]);
        assert_eq!(take_messages(&mut buffer).unwrap(), [vec![13, 1, 2]]);
        assert!(buffer.is_empty());
        let mut huge = ((MAX_MESSAGE + 1) as u32).to_be_bytes().to_vec();
        assert!(take_messages(&mut huge).unwrap_err().contains("at most"));
    }
}
