//! Who a client is: the principal of a connection, and the gate that keeps an unauthenticated
//! connection from doing anything but authenticate.
//!
//! An [`Identity`] belongs to one client connection and is shared by all its sessions (every
//! bidirectional stream of a QUIC connection), so a principal proven on one stream applies to
//! all of them. It is one of:
//!
//! - anonymous (`User:ANONYMOUS`) or certified (`User:<CN>` of a verified TLS client
//!   certificate): known from the handshake, nothing to do;
//! - SASL-required: until a SaslAuthenticate succeeds, every request except ApiVersions,
//!   SaslHandshake and SaslAuthenticate is refused, and a refusal or a failed authentication asks
//!   the listener to close the whole connection with the reason ([`Identity::closed`]).
//!
//! Re-authentication (KIP-368): on a Kafka listener with `broker.connections_max_reauth` set, a
//! SASL login lasts that long at most; an OAUTHBEARER login lasts no longer than its token in
//! any case, as in Kafka. SaslAuthenticate tells the client (`session_lifetime_ms`). Before then
//! the client logs in again on the same connection, with the same mechanism and as the same
//! principal (a SaslHandshake starts it, and nothing but SaslAuthenticate may follow it until
//! it is done); a connection whose login has run out may send nothing but that, and is closed
//! otherwise. So a removed user, a changed password or an expired token ends the connections
//! made with it within that time, as in Kafka.
//!
//! Tokens are kept as SHA-256 digests, so looking one up takes the same time whatever its bytes.
//! A [`TokenFile`] is read again when it changes, so devices are added or revoked without a
//! restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use kafka_protocol::messages::ApiKey;
use tokio::sync::watch;

use super::oauth::{OAUTHBEARER, OAuthError, OAuthValidator};
use super::scram::{Scram, ScramError, ScramExchange, ScramUser, Step};
use super::scram_store::ScramStore;
use crate::log_budget::client_text;

/// The principal of a client that proved nothing.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// SASL PLAIN: the user name and the secret in the clear (over TLS, or a trusted network).
pub const PLAIN: &str = "PLAIN";

/// The SASL mechanisms a listener with credentials serves, in the order the handshake names them.
pub const MECHANISMS: [&str; 3] = [PLAIN, "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Credentials: device tokens (QUIC), or users and their passwords (a Kafka listener's
/// `sasl_plain_file`). A device token is found by its SHA-256, since a device may give its
/// token alone, so a token belongs to one device; device tokens are kept only as their SHA-256,
/// and devices log in with PLAIN only. Users are found by name, and two users may have the
/// same password; their secrets are kept, so that their SCRAM keys can be derived on first use.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Device tokens (empty for a users file).
    by_digest: HashMap<[u8; 32], String>,
    /// Some for a users file (SCRAM offered).
    users: Option<HashMap<String, User>>,
}

/// One user's secrets, and the SCRAM keys made from them (one salt for all of them, so that a
/// proof can be checked against each).
struct User {
    secrets: Vec<String>,
    /// SHA-256 of each secret, for PLAIN.
    digests: Vec<[u8; 32]>,
    /// By [`Scram`] mechanism.
    scram: [OnceLock<Arc<ScramUser>>; 2],
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("User")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected \"{expected}\"")]
    BadLine {
        path: String,
        line: usize,
        expected: &'static str,
    },
    #[error("{path}:{line}: this token is already given to {device}")]
    Duplicate {
        path: String,
        line: usize,
        device: String,
    },
    #[error("{path}: no {what}")]
    Empty { path: String, what: &'static str },
}

/// `line` without its comment: a `#` at the start of the line or after a space starts one; a
/// `#` inside a secret is part of it.
fn without_comment(line: &str) -> &str {
    let mut after_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && after_space {
            return &line[..i];
        }
        after_space = c.is_whitespace();
    }
    line
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Tokens {
    /// Reads a token file: one `<device-name> <token>` per line (`<user> <secret>` in a users
    /// file), blank lines and `#` comments ignored. A token may belong to one device only.
    pub fn load(path: &Path, users: bool) -> Result<Tokens, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        if users {
            Tokens::parse_users(&text, &shown)
        } else {
            Tokens::parse(&text, &shown)
        }
    }

    /// Parses the text of a token file; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Tokens, TokenFileError> {
        Tokens::parse_with(text, path, None)
    }

    /// Parses a users file: the same lines, `<user> <secret>`, whose secrets SCRAM may use.
    pub fn parse_users(text: &str, path: &str) -> Result<Tokens, TokenFileError> {
        Tokens::parse_with(text, path, Some(HashMap::new()))
    }

    fn parse_with(
        text: &str,
        path: &str,
        users: Option<HashMap<String, User>>,
    ) -> Result<Tokens, TokenFileError> {
        let mut tokens = Tokens {
            by_digest: HashMap::new(),
            users,
        };
        let (expected, what) = match tokens.users {
            Some(_) => ("<user> <secret>", "users"),
            None => ("<device-name> <token>", "tokens"),
        };
        for (i, line) in text.lines().enumerate() {
            let line = without_comment(line).trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(device), Some(token), None) = (words.next(), words.next(), words.next())
            else {
                return Err(TokenFileError::BadLine {
                    path: path.into(),
                    line: i + 1,
                    expected,
                });
            };
            if let Some(users) = tokens.users.as_mut() {
                let user = users.entry(device.to_string()).or_insert_with(|| User {
                    secrets: Vec::new(),
                    digests: Vec::new(),
                    scram: Default::default(),
                });
                user.secrets.push(token.to_string());
                user.digests.push(digest(token.as_bytes()));
            } else if let Some(device) = tokens
                .by_digest
                .insert(digest(token.as_bytes()), device.to_string())
            {
                return Err(TokenFileError::Duplicate {
                    path: path.into(),
                    line: i + 1,
                    device,
                });
            }
        }
        if tokens.entries() == 0 {
            return Err(TokenFileError::Empty {
                path: path.into(),
                what,
            });
        }
        Ok(tokens)
    }

    /// The device a token belongs to (device tokens only).
    pub fn device(&self, token: &[u8]) -> Option<&str> {
        self.by_digest.get(&digest(token)).map(String::as_str)
    }

    /// How many devices or users there are.
    pub fn entries(&self) -> usize {
        self.users
            .as_ref()
            .map_or(self.by_digest.len(), HashMap::len)
    }

    /// Who a PLAIN login of `user` (which may be empty for a device token) with `secret` is.
    fn plain_login(&self, user: &str, secret: &[u8]) -> Option<&str> {
        let Some(users) = &self.users else {
            return self
                .device(secret)
                .filter(|d| user.is_empty() || *d == user);
        };
        let (name, u) = users.get_key_value(user)?;
        let d = digest(secret);
        // Every digest compared in full, without stopping at the first difference.
        let matches = u.digests.iter().fold(false, |found, x| {
            found | (x.iter().zip(&d).fold(0u8, |a, (p, q)| a | (p ^ q)) == 0)
        });
        matches.then_some(name.as_str())
    }

    /// The SASL mechanisms these credentials serve.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self.users {
            Some(_) => &MECHANISMS,
            None => &MECHANISMS[..1],
        }
    }

    /// `user`'s SCRAM keys for `mechanism`, derived from the user's secrets the first time
    /// (none without randomness for the salt).
    pub fn scram_user(&self, mechanism: Scram, user: &str) -> Option<Arc<ScramUser>> {
        let u = self.users.as_ref()?.get(user)?;
        if let Some(keys) = u.scram[mechanism as usize].get() {
            return Some(keys.clone());
        }
        let salt = super::scram::salt(user).ok()?;
        let keys = u.scram[mechanism as usize].get_or_init(|| {
            Arc::new(ScramUser::derive(
                mechanism,
                u.secrets.iter().map(|s| s.as_bytes()),
                salt,
            ))
        });
        Some(keys.clone())
    }
}

/// What identifies one version of a file: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// A token file kept in force: [`TokenFile::current`] reads it again whenever its modification
/// time or length changed since the last good read, so tokens added, changed or removed apply to
/// the next connection without a restart (connections already authenticated keep their
/// principal, as Kafka keeps a SASL session until it re-authenticates). A changed file that
/// cannot be read or parsed (say, caught half-written) leaves the last good tokens in force,
/// with one warning per version of the file, and is tried again on the next connection.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// A users file ([`Tokens::parse_users`]) rather than device tokens.
    users: bool,
    state: Mutex<TokenState>,
}

#[derive(Debug)]
struct TokenState {
    tokens: Arc<Tokens>,
    /// The version `tokens` was read from.
    good: Option<Stamp>,
    /// A version that failed to load, warned about once.
    bad: Option<Stamp>,
    /// The file was missing at the last look (warned about once).
    gone: bool,
}

impl TokenFile {
    /// Reads a device token file; at start-up a bad file is an error (the broker does not
    /// start).
    pub fn open(path: &Path) -> Result<TokenFile, TokenFileError> {
        TokenFile::open_with(path, false)
    }

    fn kind(&self) -> &'static str {
        if self.users {
            "users file"
        } else {
            "token file"
        }
    }

    fn entries(&self) -> &'static str {
        if self.users { "users" } else { "tokens" }
    }

    /// Reads a users file (a Kafka listener's `sasl_plain_file`: PLAIN and SCRAM).
    pub fn open_users(path: &Path) -> Result<TokenFile, TokenFileError> {
        TokenFile::open_with(path, true)
    }

    fn open_with(path: &Path, users: bool) -> Result<TokenFile, TokenFileError> {
        let good = stamp(path);
        let tokens = Arc::new(Tokens::load(path, users)?);
        Ok(TokenFile {
            path: path.to_owned(),
            users,
            state: Mutex::new(TokenState {
                tokens,
                good,
                bad: None,
                gone: false,
            }),
        })
    }

    /// The tokens in force, read again first if the file changed.
    pub fn current(&self) -> Arc<Tokens> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(now) = stamp(&self.path) else {
            if !state.gone {
                tracing::warn!(path = %self.path.display(), "{} is gone; the {} read last stay in force", self.kind(), self.entries());
                state.gone = true;
            }
            return state.tokens.clone();
        };
        state.gone = false;
        if Some(now) == state.good || Some(now) == state.bad {
            return state.tokens.clone();
        }
        match Tokens::load(&self.path, self.users) {
            Ok(tokens) => {
                tracing::info!(path = %self.path.display(), entries = tokens.entries(), "{} read again", self.kind());
                state.tokens = Arc::new(tokens);
                state.good = Some(now);
                state.bad = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "{} changed but cannot be used; the {} read last stay in force", self.kind(), self.entries());
                state.bad = Some(now);
            }
        }
        state.tokens.clone()
    }
}

/// Why a SASL PLAIN authentication failed; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed SASL PLAIN message (expected authzid NUL user NUL token)")]
    Malformed,
    #[error(
        "unknown token or password, or one that does not belong to user \"{}\"",
        client_text(user)
    )]
    BadToken { user: String },
    /// A login of a Kafka listener's users file (no device tokens there).
    #[error("unknown user \"{}\" or wrong password", client_text(user))]
    BadPassword { user: String },
    #[error("this connection is already authenticated")]
    AlreadyAuthenticated,
    #[error(
        "re-authentication as {} on a connection of {was}: a connection keeps its principal",
        client_text(now)
    )]
    OtherPrincipal { was: String, now: String },
    #[error(
        "re-authentication with {now} on a connection that logged in with {was}: a connection \
         keeps its mechanism"
    )]
    OtherMechanism {
        was: &'static str,
        now: &'static str,
    },
    #[error("the authorization id must be the user name")]
    AuthorizationId,
    #[error("this listener does not use SASL (no token_file or sasl_plain_file is set)")]
    NotEnabled,
    #[error(
        "SaslAuthenticate before a SaslHandshake: a client names its mechanism with a \
         SaslHandshake (v1) first"
    )]
    NoHandshake,
    #[error("{0}")]
    Scram(#[from] ScramError),
    #[error("{0}")]
    OAuth(#[from] OAuthError),
}

/// Why a SaslHandshake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefused {
    /// The mechanism is not served here.
    Unsupported,
    /// A SCRAM exchange is under way on this connection.
    MidExchange,
    /// The connection has logged in, and logins do not expire here
    /// (`broker.connections_max_reauth` is 0).
    LoggedIn,
}

/// What a SaslAuthenticate leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Authenticated {
    /// The client is `principal`; `reply` goes back to it (SCRAM's server-final message).
    /// `lifetime_ms`: how long the login lasts before the client must log in again (0: for
    /// ever), as SaslAuthenticate's `session_lifetime_ms`.
    Done {
        principal: String,
        reply: Vec<u8>,
        lifetime_ms: i64,
    },
    /// The exchange goes on: `reply` is the server's challenge.
    Continue(Vec<u8>),
}

/// The largest request a connection that must authenticate may send before it has, and the most
/// bytes all its streams together may hold unread until then: ample for ApiVersions and the SASL
/// requests, and small enough that unauthenticated clients cannot make the broker hold much
/// (Kafka's `sasl.server.max.receive.size`, 512 KiB).
pub const MAX_UNAUTHENTICATED_REQUEST_BYTES: usize = 512 * 1024;

/// What one stream (one TCP connection, or one QUIC stream) holds of request bytes before its
/// connection has authenticated, counted on the connection's [`Identity`], so that all its streams
/// together are held to [`MAX_UNAUTHENTICATED_REQUEST_BYTES`]. Dropping it releases its share.
pub struct PreAuthHold {
    identity: Arc<Identity>,
    held: usize,
}

impl PreAuthHold {
    pub fn new(identity: Arc<Identity>) -> PreAuthHold {
        PreAuthHold { identity, held: 0 }
    }

    /// This stream now holds `bytes`; returns what the connection's streams hold together.
    pub fn set(&mut self, bytes: usize) -> usize {
        let counter = &self.identity.held_before_auth;
        if bytes == self.held {
            return counter.load(Ordering::Relaxed);
        }
        let total = if bytes > self.held {
            let more = bytes - self.held;
            counter.fetch_add(more, Ordering::Relaxed) + more
        } else {
            let less = self.held - bytes;
            counter.fetch_sub(less, Ordering::Relaxed) - less
        };
        self.held = bytes;
        total
    }
}

impl Drop for PreAuthHold {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// One step of a SASL exchange, before it is taken as the connection's login.
enum Exchanged {
    Challenge(Vec<u8>),
    Done {
        principal: String,
        reply: Vec<u8>,
        /// An OAUTHBEARER token's `exp`.
        token_expiry: Option<i64>,
    },
}

/// Why and how a connection is to be closed ([`Identity::close`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// Told to the client.
    pub reason: String,
    /// A response explaining the refusal is on its way: give the client a moment to read it
    /// (and hang up) before closing.
    pub after_reply: bool,
}

/// Who the client of one connection is (see the module docs).
#[derive(Debug)]
pub struct Identity {
    /// Set once: at creation when the handshake decides it, or by a successful SASL exchange.
    principal: OnceLock<String>,
    /// Some: the client must authenticate with SASL PLAIN against these tokens.
    tokens: Option<Arc<Tokens>>,
    /// SCRAM credentials made over the protocol, which a Kafka listener's users may log in
    /// with too (before those of `tokens`).
    scram_store: Option<Arc<ScramStore>>,
    /// Set when the connection must be closed.
    close: watch::Sender<Option<Closing>>,
    /// Request bytes the connection's streams hold before it has authenticated
    /// ([`PreAuthHold`]).
    held_before_auth: AtomicUsize,
    /// The SCRAM exchange the handshake chose; none for PLAIN.
    scram: Mutex<Option<ScramExchange>>,
    /// Some: the listener takes OAUTHBEARER tokens, checked by this.
    oauth: Option<Arc<OAuthValidator>>,
    /// The handshake chose OAUTHBEARER.
    oauth_chosen: std::sync::atomic::AtomicBool,
    /// Some: logins last at most this long (KIP-368, `broker.connections_max_reauth`).
    max_reauth: Option<Duration>,
    /// The users file `tokens` was read from: a re-authentication is checked against what it
    /// holds then, so that a removed user or a changed password is refused.
    users_file: Option<Arc<TokenFile>>,
    /// The mechanism of the last handshake, and of the login.
    login: Mutex<Login>,
    /// When the login runs out, in [`mono_ms`]; `u64::MAX` for never.
    expires_at: AtomicU64,
    /// A re-authentication is under way ([`Login::again`], read without the lock): only
    /// SaslAuthenticate is taken until it is done.
    reauthenticating: std::sync::atomic::AtomicBool,
}

/// The mechanisms of a connection's SASL exchanges.
#[derive(Debug, Default)]
struct Login {
    /// Named by the last SaslHandshake.
    chosen: Option<&'static str>,
    /// The login's.
    mechanism: Option<&'static str>,
    /// A SaslHandshake after the login started a re-authentication, not yet done.
    again: bool,
    /// The re-authentication's handshake named another mechanism than the login's: its
    /// SaslAuthenticate is refused, saying so (as Kafka answers it).
    other_mechanism: Option<&'static str>,
}

/// Milliseconds since this process first asked: a clock that never goes back.
fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Identity {
    fn new(principal: Option<String>, tokens: Option<Arc<Tokens>>) -> Arc<Identity> {
        let cell = OnceLock::new();
        if let Some(p) = principal {
            let _ = cell.set(p);
        }
        Arc::new(Identity {
            principal: cell,
            tokens,
            scram_store: None,
            close: watch::channel(None).0,
            held_before_auth: AtomicUsize::new(0),
            scram: Mutex::new(None),
            oauth: None,
            oauth_chosen: std::sync::atomic::AtomicBool::new(false),
            max_reauth: None,
            users_file: None,
            login: Mutex::new(Login::default()),
            expires_at: AtomicU64::new(u64::MAX),
            reauthenticating: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A client that proves nothing: `User:ANONYMOUS`.
    pub fn anonymous() -> Arc<Identity> {
        Identity::new(Some(ANONYMOUS.to_string()), None)
    }

    /// A client known from the handshake (e.g. `User:<CN>` of a verified certificate).
    pub fn certified(principal: String) -> Arc<Identity> {
        Identity::new(Some(principal), None)
    }

    /// A client that must authenticate with SASL PLAIN and one of `tokens` first.
    pub fn sasl(tokens: Arc<Tokens>) -> Arc<Identity> {
        Identity::new(None, Some(tokens))
    }

    /// A client of a Kafka listener with a users file: SASL PLAIN or SCRAM against `users`, or
    /// SCRAM against the credentials of `store`.
    pub fn sasl_users(users: Arc<Tokens>, store: Arc<ScramStore>) -> Arc<Identity> {
        let mut identity = Identity::new(None, Some(users));
        Arc::get_mut(&mut identity).expect("just made").scram_store = Some(store);
        identity
    }

    /// A client of a Kafka listener that takes SASL: PLAIN and SCRAM for the users of
    /// `users` (and SCRAM for those of `store`) when it has a users file, OAUTHBEARER tokens
    /// when `oauth` is given. At least one of the two.
    /// Logins last at most `max_reauth` (none: for ever).
    pub fn sasl_listener(
        users: Option<Arc<TokenFile>>,
        store: Arc<ScramStore>,
        oauth: Option<Arc<OAuthValidator>>,
        max_reauth: Option<Duration>,
    ) -> Arc<Identity> {
        let mut identity = Identity::new(None, users.as_ref().map(|file| file.current()));
        let this = Arc::get_mut(&mut identity).expect("just made");
        this.scram_store = Some(store);
        this.oauth = oauth;
        this.max_reauth = max_reauth.filter(|d| !d.is_zero());
        this.users_file = users;
        identity
    }

    /// The principal, once known (`None` while a SASL client has not authenticated).
    pub fn principal(&self) -> Option<&str> {
        self.principal.get().map(String::as_str)
    }

    /// Whether this connection takes SASL.
    pub fn uses_sasl(&self) -> bool {
        self.tokens.is_some() || self.oauth.is_some()
    }

    /// Whether this connection must still authenticate with SASL.
    pub fn awaits_sasl(&self) -> bool {
        self.uses_sasl() && self.principal().is_none()
    }

    /// Whether a request of `api` may be handled now. Before authentication only the requests
    /// that lead to it are.
    pub fn admits(&self, api: ApiKey) -> bool {
        if self.reauthenticating.load(Ordering::Relaxed) {
            // As Kafka: between a re-authentication's handshake and its end, nothing else.
            return api == ApiKey::SaslAuthenticate;
        }
        self.principal().is_some() || Identity::leads_to_login(api)
    }

    fn leads_to_login(api: ApiKey) -> bool {
        matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    }

    /// Why a request of `api` ends the connection: its login has run out and the request does
    /// not log in again (KIP-368).
    pub fn expired_for(&self, api: ApiKey) -> Option<String> {
        let at = self.expires_at.load(Ordering::Relaxed);
        // As Kafka: a handshake starts the login again, and its SaslAuthenticate ends it.
        let logs_in = api == ApiKey::SaslHandshake
            || (api == ApiKey::SaslAuthenticate && self.reauthenticating.load(Ordering::Relaxed));
        if at == u64::MAX || logs_in || mono_ms() < at {
            return None;
        }
        Some(format!(
            "the SASL login ran out (broker.connections_max_reauth, or its token's expiry) and \
             the client sent {api:?} instead of logging in again"
        ))
    }

    /// The users of this connection's listener who may log in with SCRAM, sorted by name (none
    /// without a users file).
    pub fn scram_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .tokens
            .as_ref()
            .and_then(|t| t.users.as_ref())
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// The SASL mechanisms this connection may use (none without SASL).
    pub fn mechanisms(&self) -> &'static [&'static str] {
        const WITH_OAUTH: [&str; 4] = [MECHANISMS[0], MECHANISMS[1], MECHANISMS[2], OAUTHBEARER];
        match (&self.tokens, &self.oauth) {
            (Some(t), None) => t.mechanisms(),
            (Some(_), Some(_)) => &WITH_OAUTH,
            (None, Some(_)) => &WITH_OAUTH[3..],
            (None, None) => &[],
        }
    }

    /// Takes the mechanism a SaslHandshake names for the authentication that follows. Refused
    /// when it is not one of [`Identity::mechanisms`] (nothing changes), and while a SCRAM
    /// exchange is under way: a client may not start again with another user name.
    /// After the login, a handshake starts a re-authentication, where logins expire, with the
    /// login's mechanism only.
    pub fn choose_mechanism(&self, name: &str) -> Result<(), HandshakeRefused> {
        let Some(&name) = self.mechanisms().iter().find(|m| **m == name) else {
            return Err(HandshakeRefused::Unsupported);
        };
        let mut login = self.login.lock().unwrap_or_else(|e| e.into_inner());
        if self.principal().is_some() {
            // A login that lasts for ever is not made again.
            if self.expires_at.load(Ordering::Relaxed) == u64::MAX {
                return Err(HandshakeRefused::LoggedIn);
            }
            let was = login.mechanism.unwrap_or(PLAIN);
            login.other_mechanism = (was != name).then_some(name);
            login.again = true;
            self.reauthenticating.store(true, Ordering::Relaxed);
            if was != name {
                return Ok(());
            }
        }
        login.chosen = Some(name);
        drop(login);
        let mut scram = self.scram.lock().unwrap_or_else(|e| e.into_inner());
        if scram.as_ref().is_some_and(ScramExchange::under_way) {
            return Err(HandshakeRefused::MidExchange);
        }
        *scram = Scram::from_name(name).map(ScramExchange::new);
        self.oauth_chosen
            .store(name == OAUTHBEARER, Ordering::Relaxed);
        Ok(())
    }

    /// Handles one SaslAuthenticate message with the mechanism the handshake chose (none
    /// chosen: refused, [`AuthError::NoHandshake`]). On success the principal is that of the
    /// whole connection; in a re-authentication it must be the one it had.
    pub fn authenticate(&self, message: &[u8]) -> Result<Authenticated, AuthError> {
        let again = self.principal().is_some();
        if !again && self.uses_sasl() {
            // As Kafka: before a login, only ApiVersions and SaslHandshake are taken.
            let login = self.login.lock().unwrap_or_else(|e| e.into_inner());
            if login.chosen.is_none() {
                return Err(AuthError::NoHandshake);
            }
        }
        if again {
            let login = self.login.lock().unwrap_or_else(|e| e.into_inner());
            if !login.again {
                return Err(AuthError::AlreadyAuthenticated);
            }
            if let Some(now) = login.other_mechanism {
                let was = login.mechanism.unwrap_or(PLAIN);
                return Err(AuthError::OtherMechanism { was, now });
            }
        }
        let (principal, reply, token_expiry) = match self.exchange(message, again)? {
            Exchanged::Challenge(challenge) => return Ok(Authenticated::Continue(challenge)),
            Exchanged::Done {
                principal,
                reply,
                token_expiry,
            } => (principal, reply, token_expiry),
        };
        let mut login = self.login.lock().unwrap_or_else(|e| e.into_inner());
        if again {
            let was = self.principal().unwrap_or_default();
            if was != principal {
                return Err(AuthError::OtherPrincipal {
                    was: was.to_string(),
                    now: principal,
                });
            }
            login.again = false;
            self.reauthenticating.store(false, Ordering::Relaxed);
        } else {
            // Two streams racing to authenticate: the first one wins, the other is refused.
            self.principal
                .set(principal.clone())
                .map_err(|_| AuthError::AlreadyAuthenticated)?;
            login.mechanism = login.chosen;
        }
        let lifetime_ms = self.start_lifetime(token_expiry);
        Ok(Authenticated::Done {
            principal,
            reply,
            lifetime_ms,
        })
    }

    /// Starts the login's lifetime: `broker.connections_max_reauth`, and no longer than its
    /// token (`exp`, seconds since the epoch) whatever that is, as Kafka has it. Returns it in
    /// milliseconds, 0 for no end (and 0 for a token already past its `exp`, within the clock
    /// skew allowed: the login then ends at the next request, as in Kafka).
    fn start_lifetime(&self, token_expiry: Option<i64>) -> i64 {
        let max_ms = self
            .max_reauth
            .map(|max| i64::try_from(max.as_millis()).unwrap_or(i64::MAX));
        let ms = match (token_expiry, max_ms) {
            (None, None) => return 0,
            (None, Some(max)) => max,
            (Some(exp), max) => {
                let left = exp
                    .saturating_mul(1000)
                    .saturating_sub(crate::broker::now_ms());
                left.max(0).min(max.unwrap_or(i64::MAX))
            }
        };
        let at = mono_ms().saturating_add(ms as u64);
        self.expires_at.store(at, Ordering::Relaxed);
        ms
    }

    /// One message of the chosen mechanism's exchange (`again`: a re-authentication).
    fn exchange(&self, message: &[u8], again: bool) -> Result<Exchanged, AuthError> {
        if let Some(oauth) = &self.oauth
            && self.oauth_chosen.load(Ordering::Relaxed)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let (principal, exp) = oauth.authenticate_until(message, now)?;
            return Ok(Exchanged::Done {
                principal,
                reply: Vec::new(),
                token_expiry: Some(exp),
            });
        }
        // Logged in already: the users file as it is now.
        let now = self
            .users_file
            .as_ref()
            .filter(|_| again)
            .map(|f| f.current());
        let tokens = match (now.or_else(|| self.tokens.clone()), &self.oauth) {
            (Some(tokens), _) => tokens,
            (None, Some(_)) => return Err(AuthError::NoHandshake),
            (None, None) => return Err(AuthError::NotEnabled),
        };
        let mut scram = self.scram.lock().unwrap_or_else(|e| e.into_inner());
        let Some(exchange) = scram.as_mut() else {
            drop(scram);
            return Ok(Exchanged::Done {
                principal: plain_principal(&tokens, message)?,
                reply: Vec::new(),
                token_expiry: None,
            });
        };
        let mechanism = exchange.mechanism();
        let lookup = |user: &str| {
            self.scram_store
                .as_ref()
                .and_then(|store| store.get(mechanism, user))
                .or_else(|| tokens.scram_user(mechanism, user))
        };
        match exchange.step(message, lookup)? {
            Step::Challenge(challenge) => Ok(Exchanged::Challenge(challenge)),
            Step::Success { user, server_final } => Ok(Exchanged::Done {
                principal: format!("User:{user}"),
                reply: server_final,
                token_expiry: None,
            }),
        }
    }

    /// Checks a SASL PLAIN message (`authzid NUL user NUL token`, RFC 4616) and on success
    /// returns the principal, now that of the whole connection. An empty user name is allowed
    /// (the token names the device); a non-empty one must be the token's device.
    pub fn authenticate_plain(&self, message: &[u8]) -> Result<String, AuthError> {
        if self.tokens.is_none() {
            return Err(AuthError::NotEnabled);
        }
        if self.principal().is_some() {
            return Err(AuthError::AlreadyAuthenticated);
        }
        let tokens = self.tokens.as_ref().ok_or(AuthError::NotEnabled)?;
        let principal = plain_principal(tokens, message)?;
        // Two streams racing to authenticate: the first one wins, the other is refused.
        self.principal
            .set(principal.clone())
            .map_err(|_| AuthError::AlreadyAuthenticated)?;
        Ok(principal)
    }
}

/// The principal a SASL PLAIN message proves against `tokens`.
fn plain_principal(tokens: &Tokens, message: &[u8]) -> Result<String, AuthError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(token), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let user = String::from_utf8_lossy(user).into_owned();
    // As Kafka: an authorization id, when given, must be the user.
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(AuthError::AuthorizationId);
    }
    let device = tokens.plain_login(&user, token).ok_or_else(|| {
        if tokens.users.is_some() {
            AuthError::BadPassword { user: user.clone() }
        } else {
            AuthError::BadToken { user: user.clone() }
        }
    })?;
    Ok(format!("User:{device}"))
}

impl Identity {
    /// Asks the listener to close the connection, telling the client `reason`; with
    /// `after_reply`, once the client had a moment to read the response being sent. The first
    /// request to close wins.
    /// Returns whether this call was the first (so that a refusal is counted once).
    pub fn close(&self, reason: String, after_reply: bool) -> bool {
        self.close.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(Closing {
                reason,
                after_reply,
            });
            true
        })
    }

    /// Whether [`Identity::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// Resolves once [`Identity::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = Closing> + Send + 'static {
        let mut rx = self.close.subscribe();
        async move {
            loop {
                if let Some(c) = rx.borrow_and_update().clone() {
                    return c;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Arc<Tokens> {
        Arc::new(
            Tokens::parse(
                "# devices\nsensor-7  t0k3n-seven\n\npump-2 pump-secret # spare\n",
                "tokens",
            )
            .unwrap(),
        )
    }

    #[test]
    fn token_file_lines_and_errors() {
        let t = tokens();
        assert_eq!(t.device(b"t0k3n-seven"), Some("sensor-7"));
        assert_eq!(t.device(b"pump-secret"), Some("pump-2"));
        assert_eq!(t.device(b"sensor-7"), None);
        let bad = Tokens::parse("a b c\n", "f").unwrap_err().to_string();
        assert_eq!(bad, "f:1: expected \"<device-name> <token>\"");
        let dup = Tokens::parse("a x\nb x\n", "f").unwrap_err().to_string();
        assert_eq!(dup, "f:2: this token is already given to a");
        assert_eq!(
            Tokens::parse("# nothing\n", "f").unwrap_err().to_string(),
            "f: no tokens"
        );
    }

    #[test]
    fn users_files_take_shared_passwords_and_hashes_inside_secrets() {
        let t = Tokens::parse_users(
            "# users\nalice same#pw\nbob same#pw # bob's\ncarol c4rol\n",
            "users",
        )
        .unwrap();
        assert_eq!(t.entries(), 3);
        assert_eq!(t.plain_login("alice", b"same#pw"), Some("alice"));
        assert_eq!(t.plain_login("bob", b"same#pw"), Some("bob"));
        assert_eq!(t.plain_login("bob", b"same"), None);
        assert_eq!(t.plain_login("carol", b"same#pw"), None);
        assert_eq!(t.plain_login("", b"c4rol"), None, "a user names themself");
        assert_eq!(
            Tokens::parse_users("dave my pass\n", "users")
                .unwrap_err()
                .to_string(),
            "users:1: expected \"<user> <secret>\""
        );
        assert_eq!(
            Tokens::parse_users("\n", "users").unwrap_err().to_string(),
            "users: no users"
        );
        let id = Identity::sasl(Arc::new(t));
        assert_eq!(
            id.authenticate_plain(b"bob\0alice\0same#pw"),
            Err(AuthError::AuthorizationId)
        );
        assert_eq!(
            id.authenticate_plain(b"alice\0alice\0same#pw").as_deref(),
            Ok("User:alice")
        );
    }

    #[test]
    fn a_login_lasts_its_lifetime_and_is_renewed_with_its_mechanism_as_its_principal() {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::meta::MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let store = Arc::new(ScramStore::open(meta).unwrap());
        let path = dir.path().join("users");
        std::fs::write(&path, "alice pw\nbob pw2\n").unwrap();
        let users = Arc::new(TokenFile::open_users(&path).unwrap());
        let lifetime = Some(Duration::from_millis(300));
        let id = Identity::sasl_listener(Some(users.clone()), store.clone(), None, lifetime);
        id.choose_mechanism(PLAIN).unwrap();
        let done = |result: Result<Authenticated, AuthError>| match result {
            Ok(Authenticated::Done {
                principal,
                lifetime_ms,
                ..
            }) => (principal, lifetime_ms),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            done(id.authenticate(b"\0alice\0pw")),
            ("User:alice".to_string(), 300)
        );
        assert_eq!(id.expired_for(ApiKey::Metadata), None);
        // Again only after a handshake, with the login's mechanism, as the same principal.
        assert_eq!(
            id.authenticate(b"\0alice\0pw"),
            Err(AuthError::AlreadyAuthenticated)
        );
        // Another mechanism: the handshake is taken, its SaslAuthenticate refused with why.
        id.choose_mechanism("SCRAM-SHA-256").unwrap();
        assert!(
            !id.admits(ApiKey::Metadata),
            "nothing but SaslAuthenticate meanwhile"
        );
        assert!(id.admits(ApiKey::SaslAuthenticate));
        assert!(matches!(
            id.authenticate(b"n,,n=alice,r=abc"),
            Err(AuthError::OtherMechanism {
                was: PLAIN,
                now: "SCRAM-SHA-256"
            })
        ));
        id.choose_mechanism(PLAIN).unwrap();
        assert!(matches!(
            id.authenticate(b"\0bob\0pw2"),
            Err(AuthError::OtherPrincipal { .. })
        ));
        assert_eq!(id.principal(), Some("User:alice"));
        // Run out: nothing but logging in again is taken.
        std::thread::sleep(Duration::from_millis(350));
        let why = id.expired_for(ApiKey::Metadata).expect("ran out");
        assert!(why.contains("connections_max_reauth"), "{why}");
        assert_eq!(id.expired_for(ApiKey::SaslHandshake), None);
        assert!(id.expired_for(ApiKey::ApiVersions).is_some());
        id.choose_mechanism(PLAIN).unwrap();
        assert_eq!(done(id.authenticate(b"\0alice\0pw")).1, 300);
        assert_eq!(id.expired_for(ApiKey::Metadata), None);
        // Without a lifetime a login lasts as long as its connection, and is made once.
        let once = Identity::sasl_listener(Some(users), store, None, Some(Duration::ZERO));
        once.choose_mechanism(PLAIN).unwrap();
        assert_eq!(done(once.authenticate(b"\0alice\0pw")).1, 0);
        assert_eq!(
            once.choose_mechanism(PLAIN),
            Err(HandshakeRefused::LoggedIn)
        );
        assert_eq!(once.expired_for(ApiKey::Metadata), None);
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes_and_a_bad_change_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "sensor-7 seven\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.current().device(b"seven"), Some("sensor-7"));

        // A device added and one revoked: the next look sees it (the lengths differ, so the
        // change shows even where the clock has coarse file times).
        std::fs::write(&path, "pump-2 two-two\n").unwrap();
        let t = file.current();
        assert_eq!(
            (t.device(b"two-two"), t.device(b"seven")),
            (Some("pump-2"), None)
        );

        // A broken version keeps the tokens read last; fixing it applies the fix.
        std::fs::write(&path, "pump-2 two-two extra-word\n").unwrap();
        assert_eq!(file.current().device(b"two-two"), Some("pump-2"));
        assert_eq!(file.current().device(b"two-two"), Some("pump-2"));
        std::fs::write(&path, "gate-1 one\n").unwrap();
        assert_eq!(file.current().device(b"one"), Some("gate-1"));

        // A file that disappears keeps the last tokens too.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.current().device(b"one"), Some("gate-1"));

        // At start-up a bad file is an error.
        std::fs::write(&path, "lonely\n").unwrap();
        assert!(TokenFile::open(&path).is_err());
    }

    #[test]
    fn sasl_identity_admits_only_authentication_until_it_succeeds() {
        let id = Identity::sasl(tokens());
        assert!(id.admits(ApiKey::ApiVersions) && id.admits(ApiKey::SaslAuthenticate));
        assert!(!id.admits(ApiKey::Produce));
        assert_eq!(
            id.authenticate_plain(b"\0sensor-7\0wrong"),
            Err(AuthError::BadToken {
                user: "sensor-7".into()
            })
        );
        assert_eq!(
            id.authenticate_plain(b"\0pump-2\0t0k3n-seven"),
            Err(AuthError::BadToken {
                user: "pump-2".into()
            })
        );
        assert_eq!(
            id.authenticate_plain(b"no separators"),
            Err(AuthError::Malformed)
        );
        assert_eq!(id.principal(), None);
        assert_eq!(
            id.authenticate_plain(b"\0sensor-7\0t0k3n-seven").as_deref(),
            Ok("User:sensor-7")
        );
        assert!(id.admits(ApiKey::Produce));
        assert_eq!(
            id.authenticate_plain(b"\0\0pump-secret"),
            Err(AuthError::AlreadyAuthenticated)
        );
        assert_eq!(id.principal(), Some("User:sensor-7"));
    }

    #[test]
    fn users_files_offer_scram_and_device_tokens_only_plain() {
        let devices = Identity::sasl(tokens());
        assert_eq!(devices.mechanisms(), ["PLAIN"]);
        assert_eq!(
            devices.choose_mechanism("SCRAM-SHA-256"),
            Err(HandshakeRefused::Unsupported)
        );
        assert_eq!(devices.choose_mechanism("PLAIN"), Ok(()));
        let users = Identity::sasl(Arc::new(Tokens::parse_users("alice pw\n", "f").unwrap()));
        assert_eq!(
            users.mechanisms(),
            ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        );
        // A SaslAuthenticate must follow a handshake, which names its mechanism.
        assert!(matches!(
            users.authenticate(b"\0alice\0pw"),
            Err(AuthError::NoHandshake)
        ));
        assert_eq!(users.principal(), None);
        assert_eq!(
            users.choose_mechanism("GSSAPI"),
            Err(HandshakeRefused::Unsupported)
        );
        assert!(matches!(
            users.authenticate(b"\0alice\0pw"),
            Err(AuthError::NoHandshake)
        ));
        assert_eq!(users.choose_mechanism("SCRAM-SHA-512"), Ok(()));
        // The handshake's mechanism is the one SaslAuthenticate uses: a SCRAM first message is
        // answered with the server's challenge, and nobody is logged in yet.
        let Ok(Authenticated::Continue(challenge)) = users.authenticate(b"n,,n=alice,r=abc") else {
            panic!("no challenge")
        };
        assert!(challenge.starts_with(b"r=abc"));
        assert_eq!(users.principal(), None);
        // Starting again under way, say with another user name, is refused.
        assert_eq!(
            users.choose_mechanism("SCRAM-SHA-512"),
            Err(HandshakeRefused::MidExchange)
        );
        assert!(Identity::anonymous().mechanisms().is_empty());
    }

    #[test]
    fn anonymous_and_certified_need_nothing() {
        assert_eq!(Identity::anonymous().principal(), Some(ANONYMOUS));
        let c = Identity::certified("User:gw-1".into());
        assert!(c.admits(ApiKey::Produce));
        assert_eq!(c.authenticate_plain(b"\0a\0b"), Err(AuthError::NotEnabled));
    }

    #[tokio::test]
    async fn close_keeps_the_first_reason() {
        let id = Identity::anonymous();
        let closed = id.closed();
        id.close("first".into(), true);
        id.close("second".into(), false);
        assert_eq!(
            closed.await,
            Closing {
                reason: "first".into(),
                after_reply: true
            }
        );
    }
}
