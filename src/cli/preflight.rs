//! Checks of the configuration before the relay starts (and for
//! `check-config` and `token`), so a mistake is told with the flag that
//! names it: a file that cannot be read, an HS256 secret too short to be
//! safe.

use std::path::{Path, PathBuf};

use bitstream_relay::Config;
use thiserror::Error;

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: a key of at
/// least the hash's size, 256 bits).
pub(crate) const MIN_SECRET_LEN: usize = 32;

/// A configuration that cannot work.
#[derive(Debug, Error)]
pub(crate) enum PreflightError {
    /// A file named by a flag cannot be read.
    #[error("{flag}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The flag (its variable is named in `--help`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HS256 secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("--jwt-secret-file: the secret in {} is {len} bytes; use {MIN_SECRET_LEN} random bytes or more (e.g. `head -c 32 /dev/urandom | base64 > FILE`)", path.display())]
    ShortSecret {
        /// The file.
        path: PathBuf,
        /// Its length without trailing whitespace.
        len: usize,
    },
}

/// Reads the file of `flag`, if set.
fn read(flag: &'static str, path: Option<&PathBuf>) -> Result<Option<Vec<u8>>, PreflightError> {
    let Some(path) = path else { return Ok(None) };
    std::fs::read(path)
        .map(Some)
        .map_err(|source| PreflightError::Unreadable {
            flag,
            path: path.clone(),
            source,
        })
}

/// Checks the HS256 secret file alone (what `token` needs).
pub(crate) fn check_secret(config: &Config) -> Result<(), PreflightError> {
    let path = config.jwt_secret_file.as_ref();
    if let Some(secret) = read("--jwt-secret-file", path)? {
        let len = secret.trim_ascii_end().len();
        if len < MIN_SECRET_LEN {
            return Err(PreflightError::ShortSecret {
                path: path.map_or_else(PathBuf::new, |p| Path::to_owned(p)),
                len,
            });
        }
    }
    Ok(())
}

/// Checks every file the configuration names.
pub(crate) fn check(config: &Config) -> Result<(), PreflightError> {
    check_secret(config)?;
    read("--jwt-public-key-file", config.jwt_public_key_file.as_ref())?;
    read("--tls-cert", config.tls_cert.as_ref())?;
    read("--tls-key", config.tls_key.as_ref())?;
    read("--turn-secret-file", config.turn_secret_file.as_ref())?;
    read("--nats-creds-file", config.nats_creds_file.as_ref())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn with(flags: &[&str]) -> Config {
        let mut args = vec!["x"];
        args.extend_from_slice(flags);
        Config::parse_from(args)
    }

    #[test]
    fn files_are_named_by_their_flag_and_short_secrets_refused() {
        assert!(check(&Config::default()).is_ok());
        let e = check(&with(&[
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--tls-cert: cannot read /nonexistent/c.pem: "),
            "{e}"
        );
        let dir = std::env::temp_dir();
        let short = dir.join(format!("preflight-short-{}", std::process::id()));
        std::fs::write(&short, "0123456789\n").unwrap();
        let e = check(&with(&["--jwt-secret-file", short.to_str().unwrap()])).unwrap_err();
        assert!(
            matches!(e, PreflightError::ShortSecret { len: 10, .. }),
            "{e}"
        );
        let long = dir.join(format!("preflight-long-{}", std::process::id()));
        std::fs::write(&long, format!("{}\n", "k".repeat(MIN_SECRET_LEN))).unwrap();
        assert!(check(&with(&["--jwt-secret-file", long.to_str().unwrap()])).is_ok());
    }
}
