//! TURN credentials in the "TURN REST API" scheme coturn implements with
//! `use-auth-secret`: the username is `<expiry unix time>:<id>` and the
//! password is `base64(HMAC-SHA1(secret, username))`, so the TURN server
//! checks it with the shared secret alone, and it stops working at the
//! expiry. Served by `GET /turn` (`endpoints::turn`).

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha1::Sha1;
use thiserror::Error;

use crate::relay::config::Config;

/// Why the TURN settings cannot be used.
#[derive(Debug, Error)]
pub enum TurnError {
    /// The secret file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The secret file is empty.
    #[error("{0}: the TURN secret is empty")]
    EmptySecret(PathBuf),
}

/// The TURN secret and the servers it is shared with.
#[derive(Clone)]
pub(crate) struct Turn {
    secret: Vec<u8>,
    uris: Vec<String>,
    ttl: u64,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Turn")
            .field("uris", &self.uris)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Reads the secret: the file's bytes, trailing whitespace removed.
fn read_secret(path: &Path) -> Result<Vec<u8>, TurnError> {
    let mut secret = std::fs::read(path).map_err(|source| TurnError::Read {
        path: path.to_owned(),
        source,
    })?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(TurnError::EmptySecret(path.to_owned()));
    }
    Ok(secret)
}

impl Turn {
    /// The TURN settings `config` asks for, `None` when not configured.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, TurnError> {
        let Some(path) = &config.turn_secret_file else {
            return Ok(None);
        };
        Ok(Some(Self {
            secret: read_secret(path)?,
            uris: config.turn_uris.clone(),
            ttl: config.turn_ttl,
        }))
    }

    /// Credentials for `id`, valid until `now + ttl` (Unix seconds).
    pub(crate) fn credentials(&self, id: &str, now: u64) -> serde_json::Value {
        let username = format!("{}:{id}", now.saturating_add(self.ttl));
        json!({
            "username": username,
            "credential": credential(&self.secret, &username),
            "ttl": self.ttl,
            "uris": self.uris,
        })
    }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub(crate) fn credential(secret: &[u8], username: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_the_rfc2202_hmac_sha1() {
        // RFC 2202 test case 2, base64 of effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            credential(b"Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }
}
