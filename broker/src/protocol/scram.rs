//! The server side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), as Kafka serves
//! them in SaslAuthenticate (KIP-84): two client messages, each answered by one of ours.
//!
//! 1. client-first `n,,n=<user>,r=<client nonce>` -> server-first
//!    `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`;
//! 2. client-final `c=biws,r=<nonce>,p=<proof>` -> server-final `v=<server signature>`.
//!
//! The server keeps, per user, a salt and for each of the user's passwords the StoredKey and
//! ServerKey derived from it ([`ScramUser`]); the proof is checked against each, so a user whose
//! password is being changed may log in with either, as with PLAIN. Passwords are used as their
//! UTF-8 bytes, without SASLprep, as Kafka does. Channel binding, mandatory extensions (`m=`),
//! Kafka's `tokenauth` extension (delegation tokens) and an authorization id other than the user
//! are refused; other extensions are ignored, as RFC 5802 asks.
//!
//! Which users exist is not told: every salt, a known user's or not, is an HMAC of the user name
//! under a key made when the broker starts, so it is the same at every attempt (and across
//! reloads of the users file), and an unknown user's proof is checked against made-up keys and
//! refused like a wrong password.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SecureRandom as _;
use ring::{digest, hmac, pbkdf2};

use crate::log_budget::client_text;

/// The two SCRAM mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scram {
    Sha256,
    Sha512,
}

impl Scram {
    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Kafka's number for the mechanism (`ScramMechanism`), as DescribeUserScramCredentials
    /// gives it.
    pub fn kafka_type(self) -> i8 {
        match self {
            Scram::Sha256 => 1,
            Scram::Sha512 => 2,
        }
    }

    /// The mechanism with Kafka's number `code`.
    pub fn from_kafka_type(code: i8) -> Option<Scram> {
        [Scram::Sha256, Scram::Sha512]
            .into_iter()
            .find(|m| m.kafka_type() == code)
    }

    pub fn from_name(name: &str) -> Option<Scram> {
        [Scram::Sha256, Scram::Sha512]
            .into_iter()
            .find(|m| m.name() == name)
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Scram::Sha256 => hmac::HMAC_SHA256,
            Scram::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Scram::Sha256 => &digest::SHA256,
            Scram::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Scram::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Scram::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }
}

/// Iterations of the salted password: Kafka's minimum, and what `kafka-configs` uses by default.
pub const ITERATIONS: u32 = 4096;

/// Bytes of a made salt and of the server's nonce.
const RANDOM_BYTES: usize = 24;

fn random(n: usize) -> Result<Vec<u8>, ScramError> {
    let mut bytes = vec![0; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ScramError::NoRandomness)?;
    Ok(bytes)
}

/// `user`'s salt: an HMAC of the name under a key made once per process, so that a user's salt
/// stays the same from one attempt to the next whether the user exists or not.
pub fn salt(user: &str) -> Result<Vec<u8>, ScramError> {
    static KEY: std::sync::OnceLock<Option<hmac::Key>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        random(32)
            .ok()
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k))
    });
    let key = key.as_ref().ok_or(ScramError::NoRandomness)?;
    Ok(hmac::sign(key, user.as_bytes()).as_ref()[..RANDOM_BYTES].to_vec())
}

/// What the server keeps of one user's passwords for one mechanism (RFC 5802, section 3).
pub struct ScramUser {
    salt: Vec<u8>,
    iterations: u32,
    /// StoredKey and ServerKey of each password.
    keys: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ScramUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: with a StoredKey and one overheard exchange a user can be impersonated.
        f.debug_struct("ScramUser")
            .field("passwords", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl ScramUser {
    /// Derives the keys of `passwords` with `salt` (PBKDF2 with [`ITERATIONS`]).
    pub fn derive<'a>(
        mechanism: Scram,
        passwords: impl IntoIterator<Item = &'a [u8]>,
        salt: Vec<u8>,
    ) -> ScramUser {
        let iterations = ITERATIONS;
        let keys = passwords
            .into_iter()
            .map(|password| {
                let mut salted = vec![0; mechanism.digest().output_len()];
                pbkdf2::derive(
                    mechanism.pbkdf2(),
                    NonZeroU32::new(iterations).expect("non-zero"),
                    &salt,
                    password,
                    &mut salted,
                );
                let key = hmac::Key::new(mechanism.hmac(), &salted);
                let client_key = hmac::sign(&key, b"Client Key");
                let stored = digest::digest(mechanism.digest(), client_key.as_ref());
                let server_key = hmac::sign(&key, b"Server Key");
                (stored.as_ref().to_vec(), server_key.as_ref().to_vec())
            })
            .collect();
        ScramUser {
            salt,
            iterations,
            keys,
        }
    }
}

impl ScramUser {
    /// The keys of a password the client salted itself (AlterUserScramCredentials sends the
    /// salted password, never the password).
    pub fn from_salted_password(
        mechanism: Scram,
        salt: Vec<u8>,
        iterations: u32,
        salted: &[u8],
    ) -> ScramUser {
        let key = hmac::Key::new(mechanism.hmac(), salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored = digest::digest(mechanism.digest(), client_key.as_ref());
        let server_key = hmac::sign(&key, b"Server Key");
        ScramUser {
            salt,
            iterations,
            keys: vec![(stored.as_ref().to_vec(), server_key.as_ref().to_vec())],
        }
    }

    /// A user kept as Kafka keeps one: salt, iterations, StoredKey and ServerKey.
    pub fn from_keys(
        salt: Vec<u8>,
        iterations: u32,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    ) -> ScramUser {
        ScramUser {
            salt,
            iterations,
            keys: vec![(stored_key, server_key)],
        }
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// StoredKey and ServerKey of the user's first password.
    pub fn first_keys(&self) -> Option<(&[u8], &[u8])> {
        self.keys.first().map(|(a, b)| (a.as_slice(), b.as_slice()))
    }
}

/// Bytes of a salted password for `mechanism` (the digest's size).
pub fn salted_password_len(mechanism: Scram) -> usize {
    mechanism.digest().output_len()
}

/// Why a SCRAM exchange failed; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    #[error("the c= attribute of the final SCRAM message does not match the GS2 header")]
    BindingMismatch,
    #[error("no randomness for SCRAM on this machine")]
    NoRandomness,
    #[error("SCRAM extension \"{}\" is not supported", client_text(.0))]
    Extension(String),
    #[error("the authorization id must be the user name")]
    AuthorizationId,
    #[error("the nonce of the final SCRAM message is not the one agreed")]
    Nonce,
    #[error("unknown user or wrong password for user \"{}\"", client_text(.0))]
    BadCredentials(String),
    #[error("the SCRAM exchange is over")]
    Over,
}

/// What the server answers to a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The server-first message; the exchange goes on.
    Challenge(Vec<u8>),
    /// The proof holds: `user` is authenticated, and the server-final message proves the
    /// server knew the password too.
    Success { user: String, server_final: Vec<u8> },
}

/// The server's side of one SCRAM exchange on one connection.
#[derive(Debug)]
pub struct ScramExchange {
    mechanism: Scram,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    Challenged {
        user: String,
        /// None for an unknown user, who is refused after the proof.
        keys: Option<std::sync::Arc<ScramUser>>,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        client_nonce: String,
        nonce: String,
    },
    Over,
}

impl ScramExchange {
    pub fn new(mechanism: Scram) -> ScramExchange {
        ScramExchange {
            mechanism,
            state: State::Start,
        }
    }

    pub fn mechanism(&self) -> Scram {
        self.mechanism
    }

    /// Whether the server's challenge was sent and the client's proof is awaited.
    pub fn under_way(&self) -> bool {
        matches!(self.state, State::Challenged { .. })
    }

    /// Handles the next client message; `user_keys` finds a user's keys for this mechanism.
    /// After an error the exchange is over.
    pub fn step(
        &mut self,
        message: &[u8],
        user_keys: impl FnOnce(&str) -> Option<std::sync::Arc<ScramUser>>,
    ) -> Result<Step, ScramError> {
        let nonce = match self.state {
            State::Start => random(RANDOM_BYTES).map(|n| BASE64.encode(n)),
            _ => Ok(String::new()),
        };
        match nonce {
            Ok(nonce) => self.step_with(message, user_keys, nonce),
            Err(e) => {
                self.state = State::Over;
                Err(e)
            }
        }
    }

    fn step_with(
        &mut self,
        message: &[u8],
        user_keys: impl FnOnce(&str) -> Option<std::sync::Arc<ScramUser>>,
        server_nonce: String,
    ) -> Result<Step, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Over);
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        match state {
            State::Start => {
                let first = ClientFirst::parse(text)?;
                let keys = user_keys(&first.user);
                let (salt, iterations) = match &keys {
                    Some(k) => (k.salt.clone(), k.iterations),
                    None => (salt(&first.user)?, ITERATIONS),
                };
                let nonce = format!("{}{server_nonce}", first.nonce);
                let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
                let challenge = server_first.clone().into_bytes();
                self.state = State::Challenged {
                    user: first.user,
                    keys,
                    gs2_header: first.gs2_header,
                    client_first_bare: first.bare,
                    server_first,
                    client_nonce: first.nonce,
                    nonce,
                };
                Ok(Step::Challenge(challenge))
            }
            State::Challenged {
                user,
                keys,
                gs2_header,
                client_first_bare,
                server_first,
                client_nonce,
                nonce,
            } => {
                let (without_proof, proof) = text
                    .rsplit_once(",p=")
                    .ok_or(ScramError::Malformed("no proof"))?;
                let mut attributes = without_proof.split(',');
                let binding = attributes
                    .next()
                    .and_then(|a| a.strip_prefix("c="))
                    .ok_or(ScramError::Malformed("no channel binding attribute"))?;
                if BASE64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
                    return Err(ScramError::BindingMismatch);
                }
                let agreed = attributes
                    .next()
                    .and_then(|a| a.strip_prefix("r="))
                    .ok_or(ScramError::Malformed("no nonce"))?;
                // librdkafka before 2.6.1 (Debian's and Ubuntu's kcat among them) repeats its own
                // nonce before the agreed one (confluentinc/librdkafka#4895); Kafka 3.8.1 to 3.9
                // took that, and so do we. The server's fresh nonce is in it either way, and the
                // proof covers the message as sent.
                if agreed != nonce && agreed.strip_prefix(client_nonce.as_str()) != Some(&nonce) {
                    return Err(ScramError::Nonce);
                }
                // Extensions after the nonce are ignored (RFC 5802, section 5.1).
                let proof = BASE64
                    .decode(proof)
                    .map_err(|_| ScramError::Malformed("the proof is not base64"))?;
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let refused = ScramError::BadCredentials(user.clone());
                let Some(keys) = keys else {
                    // The same work as for a wrong password, against keys nobody has.
                    let made_up = vec![0; self.mechanism.digest().output_len()];
                    proof_holds(self.mechanism, &proof, &made_up, &auth_message);
                    return Err(refused);
                };
                let alg = self.mechanism.hmac();
                let server_key = keys
                    .keys
                    .iter()
                    .find(|(stored_key, _)| {
                        proof_holds(self.mechanism, &proof, stored_key, &auth_message)
                    })
                    .map(|(_, server_key)| server_key)
                    .ok_or(refused)?;
                let signature =
                    hmac::sign(&hmac::Key::new(alg, server_key), auth_message.as_bytes());
                Ok(Step::Success {
                    user,
                    server_final: format!("v={}", BASE64.encode(signature)).into_bytes(),
                })
            }
            State::Over => Err(ScramError::Over),
        }
    }
}

/// Whether `proof` shows the client knew the password whose StoredKey is `stored_key`:
/// ClientKey = proof XOR HMAC(StoredKey, AuthMessage), and H(ClientKey) must be StoredKey.
fn proof_holds(mechanism: Scram, proof: &[u8], stored_key: &[u8], auth_message: &str) -> bool {
    let signature = hmac::sign(
        &hmac::Key::new(mechanism.hmac(), stored_key),
        auth_message.as_bytes(),
    );
    if proof.len() != signature.as_ref().len() {
        return false;
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(signature.as_ref())
        .map(|(p, s)| p ^ s)
        .collect();
    let hashed = digest::digest(mechanism.digest(), &client_key);
    // Compared without stopping at the first difference.
    hashed.as_ref().len() == stored_key.len()
        && hashed
            .as_ref()
            .iter()
            .zip(stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A parsed client-first message.
struct ClientFirst {
    gs2_header: String,
    bare: String,
    user: String,
    nonce: String,
}

impl ClientFirst {
    fn parse(text: &str) -> Result<ClientFirst, ScramError> {
        // gs2-header: a channel-binding flag, an optional authorization id, each ended by ','.
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        let authzid = match authzid {
            "" => None,
            a => Some(unescape(
                a.strip_prefix("a=")
                    .ok_or(ScramError::Malformed("bad authorization id"))?,
            )?),
        };
        let mut attributes = bare.split(',');
        let user = attributes.next().unwrap_or_default();
        if user.starts_with("m=") {
            return Err(ScramError::Extension(user.to_string()));
        }
        let user = user
            .strip_prefix("n=")
            .ok_or(ScramError::Malformed("no user name"))?;
        let user = unescape(user)?;
        if user.is_empty() {
            return Err(ScramError::Malformed("empty user name"));
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .ok_or(ScramError::Malformed("no nonce"))?;
        // Kafka's delegation tokens are not served; other extensions are ignored.
        if let Some(token) = attributes.find(|a| a.starts_with("tokenauth=")) {
            return Err(ScramError::Extension(token.to_string()));
        }
        if authzid.is_some_and(|a| a != user) {
            return Err(ScramError::AuthorizationId);
        }
        Ok(ClientFirst {
            gs2_header: text[..flag.len() + 1 + rest.len() - bare.len()].to_string(),
            bare: bare.to_string(),
            user,
            nonce: nonce.to_string(),
        })
    }
}

/// A SCRAM `saslname`: `=2C` is ',' and `=3D` is '='; any other '=' is an error.
/// The client's side of a SCRAM exchange (RFC 5802, section 3), for a broker that logs in to
/// another (a follower to its leader): [`ScramClient::first`], then [`ScramClient::last`] with
/// the server's first message, then [`ScramClient::verify`] with its final one.
pub struct ScramClient {
    mechanism: Scram,
    password: String,
    client_first_bare: String,
    nonce: String,
    /// AuthMessage and the ServerKey, once the last message is made.
    expect: Option<(String, Vec<u8>)>,
}

impl ScramClient {
    pub fn new(mechanism: Scram, user: &str, password: &str) -> Result<ScramClient, ScramError> {
        let nonce = BASE64.encode(random(RANDOM_BYTES)?);
        let user = user.replace('=', "=3D").replace(',', "=2C");
        Ok(ScramClient {
            mechanism,
            password: password.to_string(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            expect: None,
        })
    }

    /// The client's first message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client's final message, from the server's first.
    pub fn last(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("server-first is not UTF-8"))?;
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(name))
                .ok_or(ScramError::Malformed("server-first lacks a field"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Malformed(
                "the server's nonce does not extend ours",
            ));
        }
        let salt = BASE64
            .decode(field("s=")?)
            .map_err(|_| ScramError::Malformed("bad salt"))?;
        let iterations = field("i=")?
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or(ScramError::Malformed("bad iteration count"))?;
        let (last, auth, server_key) = final_message(
            self.mechanism,
            self.password.as_bytes(),
            (&salt, iterations),
            (&self.client_first_bare, server_first),
            nonce,
        );
        self.expect = Some((auth, server_key));
        Ok(last.into_bytes())
    }

    /// Checks the server's final message: it proves the server knows the password's keys.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let (auth, server_key) = self
            .expect
            .as_ref()
            .ok_or(ScramError::Malformed("no final message was sent"))?;
        let sent = std::str::from_utf8(server_final)
            .ok()
            .and_then(|s| s.strip_prefix("v="))
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or(ScramError::Malformed("bad server-final"))?;
        let key = hmac::Key::new(self.mechanism.hmac(), server_key);
        hmac::verify(&key, auth.as_bytes(), &sent)
            .map_err(|_| ScramError::Malformed("the server's signature does not hold"))
    }
}

/// A client's final message for `password` salted as the server said, agreeing on `nonce`
/// after the first messages `firsts` (client-first-bare, server-first); with the AuthMessage and
/// the ServerKey that check the server's signature.
fn final_message(
    m: Scram,
    password: &[u8],
    (salt, iterations): (&[u8], NonZeroU32),
    (client_first_bare, server_first): (&str, &str),
    nonce: &str,
) -> (String, String, Vec<u8>) {
    let mut salted = vec![0; m.digest().output_len()];
    pbkdf2::derive(m.pbkdf2(), iterations, salt, password, &mut salted);
    let key = hmac::Key::new(m.hmac(), &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored = digest::digest(m.digest(), client_key.as_ref());
    let without_proof = format!("c=biws,r={nonce}");
    let auth = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac::sign(&hmac::Key::new(m.hmac(), stored.as_ref()), auth.as_bytes());
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
    let last = format!("{without_proof},p={}", BASE64.encode(proof));
    (last, auth, server_key)
}

fn unescape(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_exchange() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let user = Arc::new(ScramUser::derive(Scram::Sha256, [&b"pencil"[..]], salt));
        let mut x = ScramExchange::new(Scram::Sha256);
        let first = x
            .step_with(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                |u| (u == "user").then(|| user.clone()),
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            )
            .unwrap();
        assert_eq!(
            first,
            Step::Challenge(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .to_vec()
            )
        );
        let last = x
            .step_with(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                |_| unreachable!(),
                String::new(),
            )
            .unwrap();
        assert_eq!(
            last,
            Step::Success {
                user: "user".into(),
                server_final: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
        assert_eq!(x.step(b"n,,n=user,r=a", |_| None), Err(ScramError::Over));
    }

    #[test]
    fn the_client_side_logs_in_and_checks_the_server() {
        for m in [Scram::Sha256, Scram::Sha512] {
            for (password, ok) in [("secret", true), ("wrong", false)] {
                let keys = Arc::new(ScramUser::derive(
                    m,
                    [b"secret".as_slice()],
                    salt("a,b=c").unwrap(),
                ));
                let mut client = ScramClient::new(m, "a,b=c", password).unwrap();
                let mut server = ScramExchange::new(m);
                let Ok(Step::Challenge(first)) =
                    server.step(&client.first(), |u| (u == "a,b=c").then(|| keys.clone()))
                else {
                    panic!("no challenge")
                };
                let last = client.last(&first).unwrap();
                match server.step(&last, |_| unreachable!()) {
                    Ok(Step::Success { user, server_final }) => {
                        assert!(ok);
                        assert_eq!(user, "a,b=c");
                        client.verify(&server_final).unwrap();
                        assert!(client.verify(b"v=AAAA").is_err());
                    }
                    Err(ScramError::BadCredentials(_)) => assert!(!ok),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    fn challenged(mechanism: Scram, passwords: &[&str], first: &str) -> ScramExchange {
        let keys = Arc::new(ScramUser::derive(
            mechanism,
            passwords.iter().map(|p| p.as_bytes()),
            salt("alice").unwrap(),
        ));
        let mut x = ScramExchange::new(mechanism);
        x.step_with(
            first.as_bytes(),
            |u| (u == "alice").then(|| keys.clone()),
            "server".into(),
        )
        .unwrap();
        x
    }

    /// The client's side, written from RFC 5802, section 3.
    fn client_final(x: &ScramExchange, password: &str) -> String {
        let State::Challenged { nonce, .. } = &x.state else {
            panic!("not challenged")
        };
        client_final_with_nonce(x, password, nonce)
    }

    /// The same, sending `nonce` as the agreed one.
    fn client_final_with_nonce(x: &ScramExchange, password: &str, nonce: &str) -> String {
        let State::Challenged {
            keys,
            client_first_bare,
            server_first,
            ..
        } = &x.state
        else {
            panic!("not challenged")
        };
        let salt = &keys.as_ref().unwrap().salt;
        let n = NonZeroU32::new(ITERATIONS).unwrap();
        let firsts = (client_first_bare.as_str(), server_first.as_str());
        final_message(x.mechanism, password.as_bytes(), (salt, n), firsts, nonce).0
    }

    #[test]
    fn either_password_of_a_user_logs_in_with_sha_512_and_a_wrong_one_does_not() {
        for (password, ok) in [("old", true), ("new", true), ("neither", false)] {
            let mut x = challenged(Scram::Sha512, &["old", "new"], "n,,n=alice,r=abc");
            let last = client_final(&x, password);
            let step = x.step(last.as_bytes(), |_| unreachable!());
            match step {
                Ok(Step::Success { user, .. }) => assert!(ok && user == "alice"),
                Err(e) => assert!(!ok && e == ScramError::BadCredentials("alice".into())),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_nonce_old_librdkafka_sends_is_taken_and_no_other() {
        // Before 2.6.1 librdkafka sends its own nonce and then the agreed one, which already
        // starts with it; the proof is computed over that message.
        let mut x = challenged(Scram::Sha256, &["pw"], "n,,n=alice,r=abc");
        let twice = client_final_with_nonce(&x, "pw", "abcabcserver");
        assert!(matches!(
            x.step(twice.as_bytes(), |_| None),
            Ok(Step::Success { .. })
        ));
        for other in ["abcabcabcserver", "xabcserver", "abcserve", "server"] {
            let mut x = challenged(Scram::Sha256, &["pw"], "n,,n=alice,r=abc");
            let last = client_final_with_nonce(&x, "pw", other);
            assert_eq!(
                x.step(last.as_bytes(), |_| None),
                Err(ScramError::Nonce),
                "{other}"
            );
        }
    }

    #[test]
    fn an_unknown_user_is_challenged_like_a_known_one_and_refused_after_the_proof() {
        let mut x = ScramExchange::new(Scram::Sha256);
        let Ok(Step::Challenge(first)) = x.step(b"n,,n=mallory,r=abc", |_| None) else {
            panic!()
        };
        let first = String::from_utf8(first).unwrap();
        assert!(first.starts_with("r=abc") && first.contains(",s=") && first.ends_with(",i=4096"));
        // Asked again, the same salt, as a known user's would be.
        let salt = |message: &[u8]| match ScramExchange::new(Scram::Sha256).step(message, |_| None)
        {
            Ok(Step::Challenge(c)) => String::from_utf8(c)
                .unwrap()
                .split(',')
                .nth(1)
                .map(String::from),
            other => panic!("{other:?}"),
        };
        assert_eq!(salt(b"n,,n=mallory,r=x"), salt(b"n,,n=mallory,r=y"));
        assert_ne!(salt(b"n,,n=mallory,r=x"), salt(b"n,,n=trudy,r=x"));
        let nonce = first.split(',').next().unwrap();
        let last = format!("c=biws,{nonce},p={}", BASE64.encode([0u8; 32]));
        assert_eq!(
            x.step(last.as_bytes(), |_| None),
            Err(ScramError::BadCredentials("mallory".into()))
        );
    }

    #[test]
    fn bad_client_messages_are_refused_with_the_reason() {
        let first = |m: &str| ScramExchange::new(Scram::Sha256).step(m.as_bytes(), |_| None);
        assert_eq!(
            first("p=tls-unique,,n=a,r=b"),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            first("n,,n=a,r=b,tokenauth=true"),
            Err(ScramError::Extension("tokenauth=true".into()))
        );
        assert_eq!(
            first("n,,m=future,n=a,r=b"),
            Err(ScramError::Extension("m=future".into()))
        );
        assert!(first("n,,n=a,r=b,x=ignored").is_ok());
        assert_eq!(
            first("n,a=bob,n=alice,r=b"),
            Err(ScramError::AuthorizationId)
        );
        assert!(first("n,a=alice,n=alice,r=b").is_ok());
        assert_eq!(
            first("n,,n=a=2Xb,r=b"),
            Err(ScramError::Malformed("bad escape in a name"))
        );
        assert_eq!(first("n,,r=b"), Err(ScramError::Malformed("no user name")));
        assert_eq!(first("n,,n=a"), Err(ScramError::Malformed("no nonce")));
        assert_eq!(
            first("garbage"),
            Err(ScramError::Malformed("no GS2 header"))
        );
        let mut x = ScramExchange::new(Scram::Sha256);
        assert_eq!(
            x.step(&[0xff, 0xfe], |_| None),
            Err(ScramError::Malformed("not UTF-8"))
        );
        assert_eq!(x.step(b"n,,n=a,r=b", |_| None), Err(ScramError::Over));
        // The escaped name is the user: "a,b=c".
        let mut x = ScramExchange::new(Scram::Sha256);
        let mut asked = String::new();
        x.step(b"n,,n=a=2Cb=3Dc,r=xyz", |u| {
            asked = u.to_string();
            None
        })
        .unwrap();
        assert_eq!(asked, "a,b=c");

        let mut x = challenged(Scram::Sha256, &["pw"], "n,,n=alice,r=abc");
        let good = client_final(&x, "pw");
        let wrong_nonce = good.replace("r=abcserver", "r=abcother");
        assert_eq!(
            x.step(wrong_nonce.as_bytes(), |_| None),
            Err(ScramError::Nonce)
        );
        let mut x = challenged(Scram::Sha256, &["pw"], "n,,n=alice,r=abc");
        let bound = good.replace("c=biws", "c=cD10bHMtdW5pcXVlLCw=");
        assert_eq!(
            x.step(bound.as_bytes(), |_| None),
            Err(ScramError::BindingMismatch)
        );
        let mut x = challenged(Scram::Sha256, &["pw"], "n,,n=alice,r=abc");
        assert_eq!(
            x.step(b"c=biws,r=abcserver", |_| None),
            Err(ScramError::Malformed("no proof"))
        );
    }
}
