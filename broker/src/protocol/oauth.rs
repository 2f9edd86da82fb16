//! SASL OAUTHBEARER (RFC 7628, Kafka's KIP-255 and KIP-768): a client logs in with a JSON Web
//! Token its identity provider signed, and is `User:<sub>` (or the claim `principal_claim`
//! names). The broker checks the token as Kafka's JWKS validator does: the signature against
//! the provider's public keys (a JWKS file, read again when it changes, so keys rotate without a
//! restart), the expiry and not-before times (within `clock_skew`), and, when configured, the
//! issuer and the audience. RS256/384/512, PS256/384/512 and ES256/384 signatures are taken;
//! unsigned tokens (`alg: none`) never are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// The mechanism's name in SaslHandshake.
pub const OAUTHBEARER: &str = "OAUTHBEARER";

/// Longest token taken (Kafka has no bound of its own beyond the SASL message's 512 KiB; a JWT
/// is a few KiB at most).
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why a token was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("malformed OAUTHBEARER message (expected the GS2 header, then auth=Bearer <token>)")]
    Malformed,
    #[error("the token is not a signed JWT: {0}")]
    NotAJwt(String),
    #[error(
        "the token's signature algorithm {0:?} is not taken (RS256/384/512, PS256/384/512, ES256/384)"
    )]
    Algorithm(String),
    #[error("no key {0:?} in the identity provider's keys (JWKS)")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token expired at {0} (Unix seconds)")]
    Expired(i64),
    #[error("the token is not valid before {0} (Unix seconds)")]
    NotYetValid(i64),
    #[error("the token has no expiry (exp)")]
    NoExpiry,
    #[error("the token's issuer {found:?} is not {expected:?}")]
    Issuer { found: String, expected: String },
    #[error("the token's audience {found:?} names none of {expected:?}")]
    Audience {
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("the token has no {0:?} claim to name the principal")]
    NoPrincipal(String),
    #[error("the token's {0:?} claim has control characters")]
    BadPrincipal(String),
    #[error("the token's {0:?} claim is not a number of seconds")]
    BadTime(String),
    #[error("the token has no issue time (iat)")]
    NoIssueTime,
    #[error("key {kid:?} is for {key}, the token is signed with {token}")]
    KeyAlgorithm {
        kid: String,
        key: String,
        token: String,
    },
    #[error("the authorization id {asked:?} is not the token's principal {principal:?}")]
    AuthorizationId { asked: String, principal: String },
}

/// What a broker checks OAUTHBEARER tokens against (`[oauthbearer]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    pub jwks_file: PathBuf,
    pub expected_issuer: String,
    pub expected_audience: Vec<String>,
    pub principal_claim: String,
    pub clock_skew: Duration,
}

/// One verification key of a JWKS, with the algorithm it is for when the JWKS says.
#[derive(Debug, Clone)]
struct Key {
    alg: Option<String>,
    material: KeyMaterial,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 || x || y) on P-256 or P-384.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(rename = "use", default)]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The keys of a JWKS, by key id ("" for a key without one).
#[derive(Debug, Default)]
struct Keys(HashMap<String, Key>);

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("a key has no {field:?}"))?;
    B64URL
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("a key's {field:?} is not base64url: {e}"))
}

impl Keys {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys of other types or uses are skipped, as
    /// Kafka's validator skips them, and so is a malformed key (with a warning), so that one
    /// bad entry does not take the provider's other keys with it; at least one must be good.
    fn parse(text: &str) -> Result<Keys, String> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            let kid = jwk.kid.clone().unwrap_or_default();
            match Keys::key(jwk) {
                Ok(None) => {}
                Ok(Some(key)) => {
                    if keys.insert(kid.clone(), key).is_some() {
                        tracing::warn!(kid = %kid, "two keys of the JWKS have this id; the last is used");
                    }
                }
                Err(e) => tracing::warn!(kid = %kid, error = %e, "a key of the JWKS is skipped"),
            }
        }
        if keys.is_empty() {
            return Err("no usable RSA or EC signing key in it".to_string());
        }
        Ok(Keys(keys))
    }

    /// One key of a JWKS: `None` for one that is not for signatures by RSA or EC.
    fn key(jwk: Jwk) -> Result<Option<Key>, String> {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let material = match jwk.kty.as_str() {
            "RSA" => KeyMaterial::Rsa {
                n: b64("n", jwk.n.as_ref())?,
                e: b64("e", jwk.e.as_ref())?,
            },
            "EC" => {
                let (p384, len) = match jwk.crv.as_deref() {
                    Some("P-256") => (false, 32),
                    Some("P-384") => (true, 48),
                    _ => return Ok(None),
                };
                let (x, y) = (b64("x", jwk.x.as_ref())?, b64("y", jwk.y.as_ref())?);
                if x.len() != len || y.len() != len {
                    return Err("an EC key's x or y has the wrong length".to_string());
                }
                let mut point = vec![0x04];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::Ec { p384, point }
            }
            _ => return Ok(None),
        };
        Ok(Some(Key {
            alg: jwk.alg,
            material,
        }))
    }
}

/// A file's modification time and length: a new version when either changes.
type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Checks OAUTHBEARER tokens; shared by every connection of the listeners that take them.
#[derive(Debug)]
pub struct OAuthValidator {
    settings: OAuthSettings,
    /// The keys in force, the version of the file they were read from, and whether the file
    /// was missing at the last look (said once).
    keys: Mutex<(Arc<Keys>, Option<Stamp>, bool)>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The signature algorithms taken.
const ALGORITHMS: [&str; 8] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

impl OAuthValidator {
    /// Reads the JWKS file; a file that cannot be read or holds no key is an error (the broker
    /// does not start).
    pub fn open(settings: OAuthSettings) -> anyhow::Result<OAuthValidator> {
        let path = &settings.jwks_file;
        let version = stamp(path);
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("oauthbearer.jwks_file {}: {e}", path.display()))?;
        let keys = Keys::parse(&text)
            .map_err(|e| anyhow::anyhow!("oauthbearer.jwks_file {}: {e}", path.display()))?;
        Ok(OAuthValidator {
            keys: Mutex::new((Arc::new(keys), version, false)),
            settings,
        })
    }

    /// The keys in force, read again first if the file changed. A changed file that cannot
    /// be used keeps the keys read last (with a warning).
    fn keys(&self) -> Arc<Keys> {
        let mut state = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.settings.jwks_file);
        if now.is_none() && !state.2 {
            tracing::warn!(path = %self.settings.jwks_file.display(), "the JWKS file is gone; the keys read last stay in force");
        }
        state.2 = now.is_none();
        if now.is_none() || now == state.1 {
            return state.0.clone();
        }
        state.1 = now;
        let path = &self.settings.jwks_file;
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Keys::parse(&t))
        {
            Ok(keys) => {
                tracing::info!(path = %path.display(), keys = keys.0.len(), "JWKS file read again");
                state.0 = Arc::new(keys);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "JWKS file changed but cannot be used; the keys read last stay in force");
            }
        }
        state.0.clone()
    }

    /// Checks a SaslAuthenticate message of the OAUTHBEARER mechanism at `now` (Unix seconds)
    /// and returns the principal (`User:<claim>`).
    pub fn authenticate(&self, message: &[u8], now: i64) -> Result<String, OAuthError> {
        self.authenticate_until(message, now)
            .map(|(principal, _)| principal)
    }

    /// [`OAuthValidator::authenticate`], with the token's expiry (`exp`, seconds since the
    /// epoch), beyond which the login must not last (`broker.connections_max_reauth`).
    pub fn authenticate_until(
        &self,
        message: &[u8],
        now: i64,
    ) -> Result<(String, i64), OAuthError> {
        let (authzid, token) = client_first(message)?;
        let (name, exp) = self.validate_until(token, now)?;
        // As Kafka: an authorization id, when given, must be the token's principal.
        if let Some(asked) = authzid
            && asked != name
        {
            return Err(OAuthError::AuthorizationId {
                asked: asked.to_string(),
                principal: name,
            });
        }
        Ok((format!("User:{name}"), exp))
    }

    /// Checks a JWT and returns the name of the principal it names (`User:` not prefixed).
    pub fn validate(&self, token: &str, now: i64) -> Result<String, OAuthError> {
        self.validate_until(token, now).map(|(name, _)| name)
    }

    /// [`OAuthValidator::validate`], with the token's expiry.
    fn validate_until(&self, token: &str, now: i64) -> Result<(String, i64), OAuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OAuthError::NotAJwt("longer than 64 KiB".to_string()));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OAuthError::NotAJwt(
                "not three dot-separated parts".to_string(),
            ));
        };
        let decode = |what: &str, part: &str| {
            B64URL
                .decode(part.trim_end_matches('='))
                .map_err(|_| OAuthError::NotAJwt(format!("its {what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode("header", header_b64)?)
            .map_err(|e| OAuthError::NotAJwt(format!("its header: {e}")))?;
        if !ALGORITHMS.contains(&header.alg.as_str()) {
            return Err(OAuthError::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            // RFC 7515 4.1.11: a token naming extensions the broker does not know is refused.
            return Err(OAuthError::NotAJwt(
                "its header names critical extensions (crit), which are not understood here"
                    .to_string(),
            ));
        }
        let signature = decode("signature", sig_b64)?;
        // What was signed: the header and payload as sent, with the dot between them.
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let keys = self.keys();
        let kid = header.kid.unwrap_or_default();
        // A token without a key id is checked against the only key, when there is one.
        let key = keys
            .0
            .get(&kid)
            .or_else(|| {
                keys.0
                    .values()
                    .next()
                    .filter(|_| kid.is_empty() && keys.0.len() == 1)
            })
            .ok_or_else(|| OAuthError::UnknownKey(kid.clone()))?;
        if key.alg.as_ref().is_some_and(|a| *a != header.alg) {
            return Err(OAuthError::KeyAlgorithm {
                kid,
                key: key.alg.clone().unwrap_or_default(),
                token: header.alg,
            });
        }
        verify(&header.alg, &key.material, signed, &signature)?;
        let claims: serde_json::Value = serde_json::from_slice(&decode("payload", payload_b64)?)
            .map_err(|e| OAuthError::NotAJwt(format!("its claims: {e}")))?;
        self.check_claims(&claims, now)
    }

    /// Kafka's checks of a token's claims (its `BrokerJwtValidator`): expiry and issue time
    /// required, not-before when given, issuer and audience when configured, and the principal
    /// claim a non-empty string (trimmed), of which the principal's name is made.
    fn check_claims(
        &self,
        claims: &serde_json::Value,
        now: i64,
    ) -> Result<(String, i64), OAuthError> {
        let s = &self.settings;
        let skew = i64::try_from(s.clock_skew.as_secs()).unwrap_or(i64::MAX);
        let time = |name: &str| -> Result<Option<i64>, OAuthError> {
            match claims.get(name) {
                None => Ok(None),
                // Whole seconds; a fraction is dropped, a huge value saturates.
                Some(v) => v
                    .as_f64()
                    .filter(|t| t.is_finite())
                    .map(|t| Some(t as i64))
                    .ok_or_else(|| OAuthError::BadTime(name.to_string())),
            }
        };
        let exp = time("exp")?.ok_or(OAuthError::NoExpiry)?;
        if now > exp.saturating_add(skew) {
            return Err(OAuthError::Expired(exp));
        }
        time("iat")?.ok_or(OAuthError::NoIssueTime)?;
        if let Some(nbf) = time("nbf")?
            && now.saturating_add(skew) < nbf
        {
            return Err(OAuthError::NotYetValid(nbf));
        }
        if !s.expected_issuer.is_empty() {
            let found = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
            if found != s.expected_issuer {
                return Err(OAuthError::Issuer {
                    found: found.to_string(),
                    expected: s.expected_issuer.clone(),
                });
            }
        }
        if !s.expected_audience.is_empty() {
            let found: Vec<String> = match claims.get("aud") {
                Some(serde_json::Value::String(a)) => vec![a.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            if !found.iter().any(|a| s.expected_audience.contains(a)) {
                return Err(OAuthError::Audience {
                    found,
                    expected: s.expected_audience.clone(),
                });
            }
        }
        let name = claims
            .get(&s.principal_claim)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| OAuthError::NoPrincipal(s.principal_claim.clone()))?;
        // The name goes into logs and ACL decisions: no line breaks or other control bytes.
        if name.chars().any(char::is_control) {
            return Err(OAuthError::BadPrincipal(s.principal_claim.clone()));
        }
        Ok((name.to_string(), exp))
    }
}

/// The authorization id and the token of an OAUTHBEARER client's first message (RFC 7628
/// section 3.1), read as strictly as Kafka reads it: the GS2 header `n,` then `a=<authzid>` or
/// nothing and `,`; then `\x01`-separated `key=value` pairs, among them `auth=Bearer <token>`;
/// then `\x01\x01`.
fn client_first(message: &[u8]) -> Result<(Option<&str>, &str), OAuthError> {
    let text = std::str::from_utf8(message).map_err(|_| OAuthError::Malformed)?;
    let rest = text.strip_prefix("n,").ok_or(OAuthError::Malformed)?;
    let (authzid, rest) = rest.split_once(',').ok_or(OAuthError::Malformed)?;
    let authzid = match authzid {
        "" => None,
        a => Some(a.strip_prefix("a=").ok_or(OAuthError::Malformed)?),
    };
    let pairs = rest
        .strip_prefix('\x01')
        .and_then(|r| r.strip_suffix("\x01\x01"))
        .ok_or(OAuthError::Malformed)?;
    let mut token = None;
    for kv in pairs.split('\x01') {
        let (key, value) = kv.split_once('=').ok_or(OAuthError::Malformed)?;
        if key == "auth" {
            let (scheme, t) = value.split_once(' ').ok_or(OAuthError::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") || t.trim().is_empty() {
                return Err(OAuthError::Malformed);
            }
            token = Some(t.trim());
        }
    }
    Ok((authzid, token.ok_or(OAuthError::Malformed)?))
}

fn verify(alg: &str, key: &KeyMaterial, signed: &[u8], sig: &[u8]) -> Result<(), OAuthError> {
    use signature::VerificationAlgorithm;
    let rsa: Option<&'static signature::RsaParameters> = match alg {
        "RS256" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Some(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Some(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    let ec: Option<(&'static dyn VerificationAlgorithm, bool)> = match alg {
        "ES256" => Some((&signature::ECDSA_P256_SHA256_FIXED, false)),
        "ES384" => Some((&signature::ECDSA_P384_SHA384_FIXED, true)),
        _ => None,
    };
    let ok = match (key, rsa, ec) {
        (KeyMaterial::Rsa { n, e }, Some(params), _) => signature::RsaPublicKeyComponents { n, e }
            .verify(params, signed, sig)
            .is_ok(),
        (KeyMaterial::Ec { p384, point }, _, Some((algorithm, wants_p384)))
            if *p384 == wants_p384 =>
        {
            UnparsedPublicKey::new(algorithm, point)
                .verify(signed, sig)
                .is_ok()
        }
        (_, None, None) => return Err(OAuthError::Algorithm(alg.to_string())),
        // The key does not fit the algorithm the token names.
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(OAuthError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn key_pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn jwks(kid: &str, pair: &EcdsaKeyPair) -> String {
        let point = pair.public_key().as_ref();
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","x":"{}","y":"{}"}},{{"kty":"oct","k":"c2VjcmV0"}}]}}"#,
            B64URL.encode(&point[1..33]),
            B64URL.encode(&point[33..65])
        )
    }

    fn token(pair: &EcdsaKeyPair, kid: &str, claims: &str) -> String {
        let header = B64URL.encode(format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#));
        let payload = B64URL.encode(claims);
        let signed = format!("{header}.{payload}");
        let sig = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", B64URL.encode(sig.as_ref()))
    }

    fn validator(dir: &Path, jwks_text: &str) -> OAuthValidator {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks_text).unwrap();
        OAuthValidator::open(OAuthSettings {
            jwks_file: path,
            expected_issuer: "https://idp.example".into(),
            expected_audience: vec!["runnel".into()],
            principal_claim: "sub".into(),
            clock_skew: Duration::from_secs(30),
        })
        .unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    fn claims(extra: &str) -> String {
        format!(
            r#"{{"sub":"gateway-7","iss":"https://idp.example","aud":["other","runnel"],"exp":{},"iat":{}{extra}}}"#,
            NOW + 300,
            NOW
        )
    }

    #[test]
    fn a_signed_token_names_its_subject_and_every_check_refuses_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let pair = key_pair();
        let v = validator(dir.path(), &jwks("k1", &pair));
        let good = token(&pair, "k1", &claims(""));
        let message = format!("n,,\x01auth=Bearer {good}\x01\x01");
        assert_eq!(
            v.authenticate(message.as_bytes(), NOW).unwrap(),
            "User:gateway-7"
        );

        let err = |t: &str, now: i64| v.validate(t, now).unwrap_err();
        assert_eq!(err(&good, NOW + 331), OAuthError::Expired(NOW + 300));
        assert_eq!(
            v.validate(&good, NOW + 320).unwrap(),
            "gateway-7",
            "within the skew"
        );
        let later = token(&pair, "k1", &claims(&format!(r#","nbf":{}"#, NOW + 100)));
        assert_eq!(err(&later, NOW), OAuthError::NotYetValid(NOW + 100));
        let bad_iss = token(
            &pair,
            "k1",
            &claims("").replace("idp.example", "evil.example"),
        );
        assert!(matches!(err(&bad_iss, NOW), OAuthError::Issuer { .. }));
        let bad_aud = token(
            &pair,
            "k1",
            &claims("").replace(r#"["other","runnel"]"#, r#""x""#),
        );
        assert!(matches!(err(&bad_aud, NOW), OAuthError::Audience { .. }));
        let no_exp = token(
            &pair,
            "k1",
            r#"{"sub":"a","iss":"https://idp.example","aud":"runnel"}"#,
        );
        assert_eq!(err(&no_exp, NOW), OAuthError::NoExpiry);
        assert_eq!(
            err(&token(&pair, "k2", &claims("")), NOW),
            OAuthError::UnknownKey("k2".into())
        );
        // Signed by another key under the same id; a payload changed after signing.
        let other = token(&key_pair(), "k1", &claims(""));
        assert_eq!(err(&other, NOW), OAuthError::Signature);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = B64URL.encode(claims("").replace("gateway-7", "admin"));
        parts[1] = &forged;
        assert_eq!(err(&parts.join("."), NOW), OAuthError::Signature);
        // alg none is never taken.
        let none = format!(
            "{}.{}.",
            B64URL.encode(r#"{"alg":"none","kid":"k1"}"#),
            B64URL.encode(claims(""))
        );
        assert!(matches!(
            err(&none, NOW),
            OAuthError::Algorithm(_) | OAuthError::NotAJwt(_)
        ));
        assert!(matches!(err("abc", NOW), OAuthError::NotAJwt(_)));
        for bad in [
            &b"auth=Bearer x"[..],
            b"n,,\x01auth=Basic abc\x01\x01",
            b"\xff\x01",
        ] {
            assert_eq!(v.authenticate(bad, NOW), Err(OAuthError::Malformed));
        }
    }

    #[test]
    fn kafkas_stricter_rules_hold_too() {
        let dir = tempfile::tempdir().unwrap();
        let pair = key_pair();
        let v = validator(dir.path(), &jwks("k1", &pair));
        let err = |t: &str| v.validate(t, NOW).unwrap_err();
        let with = |extra: &str| token(&pair, "k1", &claims(extra));
        // A far-future expiry neither overflows nor is refused.
        let far = claims("").replace(&format!("{}", NOW + 300), "1e300");
        assert_eq!(
            v.validate(&token(&pair, "k1", &far), NOW).unwrap(),
            "gateway-7"
        );
        assert_eq!(
            err(&with(r#","nbf":"soon""#)),
            OAuthError::BadTime("nbf".into())
        );
        let no_iat = claims("").replace(&format!(r#","iat":{NOW}"#), "");
        assert_eq!(err(&token(&pair, "k1", &no_iat)), OAuthError::NoIssueTime);
        // The principal: trimmed, never blank, never with control characters.
        let spaced = claims("").replace("gateway-7", " gateway-7 ");
        assert_eq!(
            v.validate(&token(&pair, "k1", &spaced), NOW).unwrap(),
            "gateway-7"
        );
        let blank = claims("").replace("gateway-7", "   ");
        assert!(matches!(
            err(&token(&pair, "k1", &blank)),
            OAuthError::NoPrincipal(_)
        ));
        let forged = claims("").replace("gateway-7", "bob\\nINFO principal=User:admin");
        assert!(matches!(
            err(&token(&pair, "k1", &forged)),
            OAuthError::BadPrincipal(_)
        ));
        // Critical header extensions are not understood, so refused.
        let header = B64URL.encode(r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#);
        let payload = B64URL.encode(claims(""));
        let signed = format!("{header}.{payload}");
        let sig = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        let crit = format!("{signed}.{}", B64URL.encode(sig.as_ref()));
        assert!(matches!(err(&crit), OAuthError::NotAJwt(_)));
        // alg none is named as such whatever the key id.
        let none = format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), payload);
        assert_eq!(err(&none), OAuthError::Algorithm("none".into()));
        // The client's first message: only the `n,` header, an authorization id that is the
        // principal's name, and both terminators.
        let good = with("");
        let ok = format!("n,a=gateway-7,\x01auth=Bearer {good}\x01\x01");
        assert_eq!(
            v.authenticate(ok.as_bytes(), NOW).unwrap(),
            "User:gateway-7"
        );
        let other = format!("n,a=admin,\x01auth=Bearer {good}\x01\x01");
        assert!(matches!(
            v.authenticate(other.as_bytes(), NOW),
            Err(OAuthError::AuthorizationId { .. })
        ));
        let ext = format!("n,,\x01host=edge\x01auth=Bearer {good}\x01\x01");
        assert!(
            v.authenticate(ext.as_bytes(), NOW).is_ok(),
            "extensions are allowed"
        );
        for bad in [
            format!("y,,\x01auth=Bearer {good}\x01\x01"),
            format!("n,garbage\x01auth=Bearer {good}\x01\x01"),
            format!("n,,\x01auth=Bearer {good}"),
        ] {
            assert_eq!(
                v.authenticate(bad.as_bytes(), NOW),
                Err(OAuthError::Malformed),
                "{bad:?}"
            );
        }
        // A key that says which algorithm it is for takes only that one.
        let point = pair.public_key().as_ref();
        let pinned = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES384","x":"{}","y":"{}"}}]}}"#,
            B64URL.encode(&point[1..33]),
            B64URL.encode(&point[33..65])
        );
        let pinned_dir = dir.path().join("pinned");
        std::fs::create_dir_all(&pinned_dir).unwrap();
        let v2 = validator(&pinned_dir, &pinned);
        assert!(matches!(
            v2.validate(&good, NOW),
            Err(OAuthError::KeyAlgorithm { .. })
        ));
    }

    #[test]
    fn rotated_keys_apply_without_a_restart_and_a_broken_file_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (key_pair(), key_pair());
        let v = validator(dir.path(), &jwks("old", &old));
        assert!(v.validate(&token(&old, "old", &claims("")), NOW).is_ok());
        assert!(Keys::parse(r#"{"keys":[{"kty":"RSA","kid":"bad"}]}"#).is_err());
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks("new-key", &new)).unwrap();
        assert!(
            v.validate(&token(&new, "new-key", &claims("")), NOW)
                .is_ok()
        );
        assert!(v.validate(&token(&old, "old", &claims("")), NOW).is_err());
        std::fs::write(&path, "{ not json").unwrap();
        assert!(
            v.validate(&token(&new, "new-key", &claims("")), NOW)
                .is_ok()
        );
        assert!(Keys::parse(r#"{"keys":[]}"#).is_err());
    }
}
