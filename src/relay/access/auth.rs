//! Tokens: who may publish, watch or signal on which channel.
//!
//! With `--jwt-secret-file` (HS256) and/or `--jwt-public-key-file` (RS256,
//! ES256 or EdDSA, PEM), every WebSocket request for a channel and every
//! HTTP request for a channel's data carries a JWT, as `?token=…` or
//! `Authorization: Bearer …`. Its claims:
//!
//! - `ch`: a channel name, a list of names, or `*` (every channel);
//! - `role`: `source`, `receiver` or `signal`, or a list of them;
//! - `exp`: expiry, seconds since the Unix epoch (required);
//! - `sub`: who it is for (logged, optional).
//!
//! Checking a token is pure: [`Verifier::check`] takes the token, the
//! channel and the role and answers with a [`Grant`] or why not
//! ([`Denied`]: 401 for a missing, malformed, badly signed or expired token,
//! 403 for a good token for something else). The relay closes a connection
//! whose token expires while it is open with [`CLOSE_TOKEN_EXPIRED`].

#![deny(clippy::arithmetic_side_effects)]

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use bitstream_wire::handshake::Request;

use crate::relay::config::Config;
use crate::relay::resources::stats::Refusal;

/// Close code sent to a peer whose token expired while it was connected
/// (private-use range; mirrors HTTP 401, so a client knows to fetch a new
/// token before it reconnects).
pub(crate) const CLOSE_TOKEN_EXPIRED: u16 = 4401;

/// The claim `ch` grants every channel.
const ANY_CHANNEL: &str = "*";

/// One string or a list of them (`ch` and `role` accept both).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    /// A single value.
    One(String),
    /// A list of values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// Whether any value equals `want`.
    fn contains(&self, want: &str) -> bool {
        match self {
            OneOrMany::One(v) => v == want,
            OneOrMany::Many(vs) => vs.iter().any(|v| v == want),
        }
    }

    /// The values as a list (one or many).
    fn from_list(mut values: Vec<String>) -> Self {
        if values.len() == 1 {
            OneOrMany::One(values.remove(0))
        } else {
            OneOrMany::Many(values)
        }
    }
}

/// The claims of a relay token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct Claims {
    /// Channels granted: names, or `*`.
    pub(crate) ch: OneOrMany,
    /// Roles granted: `source`, `receiver`, `signal`.
    pub(crate) role: OneOrMany,
    /// Expiry, seconds since the Unix epoch.
    pub(crate) exp: u64,
    /// Who the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sub: Option<String>,
}

impl Claims {
    /// Whether these claims let their holder act as `role` on `channel`.
    pub(crate) fn allows(&self, channel: &str, role: &str) -> bool {
        self.allows_channel(channel) && self.role.contains(role)
    }

    /// Whether `channel` is granted (by name or by `*`).
    pub(crate) fn allows_channel(&self, channel: &str) -> bool {
        self.ch.contains(ANY_CHANNEL) || self.ch.contains(channel)
    }

    /// Whether every channel is granted (`ch` holds `*`).
    pub(crate) fn allows_every_channel(&self) -> bool {
        self.ch.contains(ANY_CHANNEL)
    }
}

/// Why a request's token does not admit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum Denied {
    /// No token in the query or the `Authorization` header.
    #[error("a token is required (?token= or Authorization: Bearer)")]
    Missing,
    /// Not a JWT, an unexpected algorithm, a bad signature or claims.
    #[error("invalid token")]
    Invalid,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Valid, but for another channel or role.
    #[error("token does not grant this channel and role")]
    Forbidden,
}

impl Denied {
    /// The HTTP status the handshake is refused with.
    pub(crate) fn status(self) -> u16 {
        match self {
            Denied::Forbidden => 403,
            Denied::Missing | Denied::Invalid | Denied::Expired => 401,
        }
    }

    /// How the refusal is counted.
    pub(crate) fn refusal(self) -> Refusal {
        match self {
            Denied::Missing => Refusal::TokenMissing,
            Denied::Invalid => Refusal::TokenInvalid,
            Denied::Expired => Refusal::TokenExpired,
            Denied::Forbidden => Refusal::TokenForbidden,
        }
    }
}

/// A token that admits a request: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The token's `sub`, if any.
    pub(crate) sub: Option<String>,
    /// The token's `exp` (seconds since the Unix epoch).
    pub(crate) exp: u64,
    /// Whether it grants the channel's `source` role (the legacy `/` path
    /// needs to know).
    pub(crate) may_publish: bool,
    /// Whether it grants the channel's `receiver` role.
    pub(crate) may_receive: bool,
}

impl Grant {
    /// Time left until the token expires, from `now` (Unix seconds).
    pub(crate) fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now))
    }

    /// When a connection admitted by this token must end: `None` when its
    /// `exp` lies beyond what the clock can represent (an issuer's
    /// `u64::MAX` for "never" must not overflow `Instant` and panic the
    /// handshake after it took its slots).
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        tokio::time::Instant::now().checked_add(self.remaining(unix_now()))
    }
}

/// Why the token keys could not be loaded, or a token minted.
#[derive(Debug, Error)]
pub enum AuthError {
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The secret file is empty.
    #[error("{0}: the secret is empty")]
    EmptySecret(PathBuf),
    /// The public key file holds no usable key.
    #[error("{0}: not an RSA, EC P-256 or Ed25519 public key in PEM")]
    BadPublicKey(PathBuf),
    /// Minting needs the HS256 secret.
    #[error("minting a token needs --jwt-secret-file (or RELAY_JWT_SECRET_FILE)")]
    NoSecret,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Makes the RustCrypto backend jsonwebtoken's provider for this process
/// (idempotent; only one backend is compiled in, so this only makes the
/// choice explicit).
fn install_crypto() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// Reads a key file.
fn read_file(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads the HS256 secret: the file's bytes, trailing whitespace removed
/// (so `echo secret > file` works).
fn read_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let mut secret = read_file(path)?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(AuthError::EmptySecret(path.to_owned()));
    }
    Ok(secret)
}

/// Checks tokens against the configured keys.
pub(crate) struct Verifier {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.secret.is_some())
            .field("public", &self.public.as_ref().map(|(_, alg)| alg))
            .finish()
    }
}

impl Verifier {
    /// The verifier `config` asks for, `None` when neither key is given
    /// (the relay is open).
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, AuthError> {
        if config.jwt_secret_file.is_none() && config.jwt_public_key_file.is_none() {
            return Ok(None);
        }
        install_crypto();
        let secret = match &config.jwt_secret_file {
            Some(path) => Some(
                DecodingKey::from_secret(&read_secret(path)?)
                    .map_err(|_| AuthError::EmptySecret(path.clone()))?,
            ),
            None => None,
        };
        let public = match &config.jwt_public_key_file {
            Some(path) => Some(public_key(path, &read_file(path)?)?),
            None => None,
        };
        Ok(Some(Self { secret, public }))
    }

    /// Verifies `token`'s signature and expiry and returns its claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, Denied> {
        // The client hears only "invalid token"; the debug log says which.
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            tracing::debug!(error = ?e.kind(), "token refused: malformed, not a JWT");
            Denied::Invalid
        })?;
        let key = match (&self.secret, &self.public) {
            (Some(secret), _) if header.alg == Algorithm::HS256 => secret,
            (_, Some((public, alg))) if header.alg == *alg => public,
            _ => {
                tracing::debug!(alg = ?header.alg, "token refused: no key here verifies its algorithm");
                return Err(Denied::Invalid);
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(Denied::Expired),
            Err(e) => {
                // InvalidSignature: forged, or signed with another key.
                tracing::debug!(error = ?e.kind(), "token refused: signature or claims");
                Err(Denied::Invalid)
            }
        }
    }

    /// Whether `token` lets its holder act as one of `roles` on `channel`
    /// (any of them; the first is what the grant is for).
    pub(crate) fn check(
        &self,
        token: Option<&str>,
        channel: &str,
        roles: &[&str],
    ) -> Result<Grant, Denied> {
        let claims = self.verify(token.ok_or(Denied::Missing)?)?;
        if !roles.iter().any(|role| claims.allows(channel, role)) {
            return Err(Denied::Forbidden);
        }
        Ok(Grant {
            may_publish: claims.allows(channel, "source"),
            may_receive: claims.allows(channel, "receiver"),
            sub: claims.sub,
            exp: claims.exp,
        })
    }

    /// Whether `token` grants every channel (for listings of all channels).
    pub(crate) fn check_every_channel(&self, token: Option<&str>) -> Result<Grant, Denied> {
        let claims = self.verify(token.ok_or(Denied::Missing)?)?;
        if !claims.allows_every_channel() {
            return Err(Denied::Forbidden);
        }
        Ok(Grant {
            may_publish: false,
            may_receive: false,
            sub: claims.sub,
            exp: claims.exp,
        })
    }
}

/// The public key in `pem` and the one algorithm it verifies.
fn public_key(path: &Path, pem: &[u8]) -> Result<(DecodingKey, Algorithm), AuthError> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, Algorithm::ES256));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, Algorithm::EdDSA));
    }
    Err(AuthError::BadPublicKey(path.to_owned()))
}

/// The token a request carries: `?token=` in its target, else
/// `Authorization: Bearer`.
pub(crate) fn token_of(req: &Request) -> Option<&str> {
    let query = req.target.split_once('?').map(|(_, q)| q);
    let from_query = query.and_then(|q| {
        q.split(['&', '#'])
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
    });
    from_query.or_else(|| {
        let auth = req.authorization.as_deref()?;
        let (scheme, token) = auth.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    })
}

/// Seconds since the Unix epoch now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `bitstream-relay token` mints.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Channel the token grants; repeat or comma-separate for several, `*`
    /// for every channel.
    #[arg(long = "channel", required = true, value_delimiter = ',',
          value_parser = parse_token_channel)]
    pub channels: Vec<String>,
    /// Role the token grants: source, receiver or signal; repeat or
    /// comma-separate for several.
    #[arg(long = "role", required = true, value_delimiter = ',',
          value_parser = ["source", "receiver", "signal"])]
    pub roles: Vec<String>,
    /// Lifetime: a number with s, m, h or d (90s, 15m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Who the token is for (its `sub` claim, which the relay logs).
    #[arg(long)]
    pub sub: Option<String>,
}

/// Parses a channel name, refusing one the relay would refuse (1–64 bytes
/// of `[A-Za-z0-9._-]`, PROTOCOL.md) with that rule as the reason.
pub fn parse_channel_name(s: &str) -> Result<String, String> {
    if bitstream_wire::protocol::valid_channel_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a channel name the relay accepts: 1-64 characters of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// A channel a token may grant: a channel name, or `*` for every channel.
fn parse_token_channel(s: &str) -> Result<String, String> {
    if s == ANY_CHANNEL {
        return Ok(s.to_owned());
    }
    parse_channel_name(s).map_err(|e| format!("{e} (or * for every channel)"))
}

/// Parses a lifetime: a number followed by `s`, `m`, `h` or `d` (seconds
/// without a unit), more than zero (a token that lives 0 s is expired
/// before anyone can use it).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d (e.g. 1h)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    match n.checked_mul(secs) {
        Some(0) => Err(format!(
            "{s:?}: a lifetime of 0 mints a token that is already expired"
        )),
        Some(n) => Ok(Duration::from_secs(n)),
        None => Err(format!("{s:?}: too long")),
    }
}

/// Mints an HS256 token with the secret of `--jwt-secret-file`.
pub fn mint_token(config: &Config, args: &TokenArgs) -> Result<String, AuthError> {
    let path = config.jwt_secret_file.as_ref().ok_or(AuthError::NoSecret)?;
    let secret = read_secret(path)?;
    let claims = Claims {
        ch: OneOrMany::from_list(args.channels.clone()),
        role: OneOrMany::from_list(args.roles.clone()),
        exp: unix_now().saturating_add(args.ttl.as_secs()),
        sub: args.sub.clone(),
    };
    sign_hs256(&secret, &claims)
}

/// Signs `claims` with an HS256 `secret`.
pub(crate) fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    install_crypto();
    let key = EncodingKey::from_secret(secret).map_err(|e| AuthError::Sign(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| AuthError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitstream_wire::handshake::parse_request;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        install_crypto();
        Verifier {
            secret: DecodingKey::from_secret(SECRET).ok(),
            public: None,
        }
    }

    fn claims(ch: OneOrMany, role: OneOrMany, exp: u64) -> Claims {
        Claims {
            ch,
            role,
            exp,
            sub: Some("alice".into()),
        }
    }

    fn one(s: &str) -> OneOrMany {
        OneOrMany::One(s.into())
    }

    fn many(v: &[&str]) -> OneOrMany {
        OneOrMany::Many(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn claims_match_channels_and_roles() {
        let c = claims(one("cam"), one("source"), 0);
        assert!(c.allows("cam", "source"));
        assert!(!c.allows("cam", "receiver"));
        assert!(!c.allows("cam2", "source"));
        let c = claims(many(&["a", "b"]), many(&["receiver", "signal"]), 0);
        assert!(c.allows("b", "signal") && c.allows("a", "receiver"));
        assert!(!c.allows("c", "receiver") && !c.allows("a", "source"));
        assert!(!c.allows_every_channel());
        let c = claims(one("*"), one("receiver"), 0);
        assert!(c.allows("anything", "receiver") && c.allows_every_channel());
        // A channel literally named like a prefix does not match.
        assert!(!claims(one("ca"), one("source"), 0).allows("cam", "source"));
    }

    #[test]
    fn claims_parse_one_or_many() {
        let c: Claims =
            serde_json::from_str(r#"{"ch":["a","b"],"role":"receiver","exp":5}"#).unwrap();
        assert_eq!(c.ch, many(&["a", "b"]));
        assert_eq!(c.role, one("receiver"));
        assert_eq!(c.sub, None);
        assert!(serde_json::from_str::<Claims>(r#"{"ch":"a","role":"source"}"#).is_err());
    }

    #[test]
    fn tokens_are_checked() {
        let v = verifier();
        let later = unix_now() + 3600;
        let good = sign_hs256(SECRET, &claims(one("cam"), one("source"), later)).unwrap();
        let grant = v.check(Some(&good), "cam", &["source"]).unwrap();
        assert_eq!(grant.sub.as_deref(), Some("alice"));
        assert!(grant.may_publish);
        assert_eq!(v.check(None, "cam", &["source"]), Err(Denied::Missing));
        assert_eq!(
            v.check(Some(&good), "other", &["source"]),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            v.check(Some(&good), "cam", &["receiver"]),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            v.check(Some(&good), "cam", &["receiver", "source"])
                .map(|g| g.exp),
            Ok(later)
        );
        assert_eq!(v.check_every_channel(Some(&good)), Err(Denied::Forbidden));
        let expired = sign_hs256(SECRET, &claims(one("cam"), one("source"), 1000)).unwrap();
        assert_eq!(
            v.check(Some(&expired), "cam", &["source"]),
            Err(Denied::Expired)
        );
        let forged = sign_hs256(
            b"another secret, long enough to be",
            &claims(one("cam"), one("source"), later),
        )
        .unwrap();
        assert_eq!(
            v.check(Some(&forged), "cam", &["source"]),
            Err(Denied::Invalid)
        );
        assert_eq!(
            v.check(Some("not.a.token"), "cam", &["source"]),
            Err(Denied::Invalid)
        );
        // A token signed for an algorithm the relay has no key for.
        let mut tampered = good.clone();
        tampered.replace_range(..good.find('.').unwrap(), "eyJhbGciOiJub25lIn0");
        assert_eq!(
            v.check(Some(&tampered), "cam", &["source"]),
            Err(Denied::Invalid)
        );
        assert_eq!(Denied::Forbidden.status(), 403);
        assert_eq!(Denied::Expired.status(), 401);
    }

    #[test]
    fn the_token_comes_from_the_query_or_the_bearer_header() {
        let req = |head: &str| parse_request(head.as_bytes()).unwrap().unwrap().0;
        let r = req("GET /stream/a?x=1&token=abc.def.ghi HTTP/1.1\r\n\r\n");
        assert_eq!(token_of(&r), Some("abc.def.ghi"));
        let r = req("GET /stream/a HTTP/1.1\r\nAuthorization: Bearer  t.k.n \r\n\r\n");
        assert_eq!(token_of(&r), Some("t.k.n"));
        let r = req("GET /stream/a HTTP/1.1\r\nAuthorization: Basic dXNlcjpw\r\n\r\n");
        assert_eq!(token_of(&r), None);
        let r = req("GET /stream/a?token= HTTP/1.1\r\n\r\n");
        assert_eq!(token_of(&r), None);
        let r = req("GET /stream/a?mytoken=x HTTP/1.1\r\n\r\n");
        assert_eq!(token_of(&r), None);
    }

    #[test]
    fn token_channels_follow_the_relay_rule() {
        assert_eq!(parse_token_channel("cam-1.b_2"), Ok("cam-1.b_2".to_owned()));
        assert_eq!(parse_token_channel("*"), Ok("*".to_owned()));
        let e = parse_token_channel("my cam!").unwrap_err();
        assert!(e.contains("A-Z a-z 0-9 . _ -"), "{e}");
        assert!(parse_channel_name("*").is_err());
        assert!(parse_channel_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").unwrap_err().contains("already expired"));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("").is_err());
    }
}
