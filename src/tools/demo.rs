//! `bitstream-relay demo`: the relay and the test pattern in one process.
//! The caller binds the relay as usual; [`start`] then publishes the
//! pattern on a channel of it and prints the page to open.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bitstream_relay::{mint_token, AuthError, Config, TokenArgs};
use thiserror::Error;

use super::pattern::{self, PatternOptions};

/// Lifetime of the tokens the demo mints for itself when the relay
/// requires tokens: long enough for any demo.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The demo's channel and picture.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// Channel the pattern is published on.
    #[arg(long, env = "RELAY_DEMO_CHANNEL", default_value = "demo",
          value_parser = bitstream_relay::parse_channel_name)]
    pub(crate) channel: String,
    /// The picture and its pace.
    #[command(flatten)]
    pub(crate) options: PatternOptions,
}

/// Why the demo cannot publish.
#[derive(Debug, Error)]
pub(crate) enum DemoError {
    /// The pattern speaks `ws://` only.
    #[error("demo publishes over ws://: run it without --tls-cert (TLS is for the real relay)")]
    Tls,
    /// A token for the pattern could not be minted.
    #[error("cannot mint the demo's tokens: {0}")]
    Token(#[from] AuthError),
}

/// A token for `role` on `channel`, when the relay requires tokens.
fn token(config: &Config, channel: &str, role: &str) -> Result<Option<String>, AuthError> {
    if config.jwt_secret_file.is_none() {
        return Ok(None);
    }
    let args = TokenArgs {
        channels: vec![channel.to_owned()],
        roles: vec![role.to_owned()],
        ttl: DEMO_TOKEN_TTL,
        sub: Some("demo".to_owned()),
    };
    mint_token(config, &args).map(Some)
}

/// The address a browser on this machine reaches `addr` at.
fn local_view(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Starts publishing the pattern to the relay listening on `addr` (a task
/// of the current runtime) and prints the URLs to open.
pub(crate) fn start(config: &Config, addr: SocketAddr, args: DemoArgs) -> Result<(), DemoError> {
    if config.tls_cert.is_some() {
        return Err(DemoError::Tls);
    }
    if config.jwt_secret_file.is_none() && config.jwt_public_key_file.is_some() {
        return Err(DemoError::Token(AuthError::NoSecret));
    }
    let addr = local_view(addr);
    let channel = &args.channel;
    let query = |role| -> Result<String, AuthError> {
        Ok(token(config, channel, role)?.map_or(String::new(), |t| format!("token={t}")))
    };
    let (source_q, receiver_q) = (query("source")?, query("receiver")?);
    let url = format!("ws://{addr}/source/{channel}?{source_q}");
    let url = url.trim_end_matches('?').to_owned();
    let (amp, question) = if receiver_q.is_empty() {
        ("", "")
    } else {
        ("&", "?")
    };
    println!("bitstream-relay demo: publishing a test pattern on channel {channel:?}");
    println!("  open  http://{addr}/?channel={channel}{amp}{receiver_q}");
    println!("  watch bitstream-relay watch ws://{addr}/stream/{channel}{question}{receiver_q}");
    println!("  stats http://{addr}/dashboard.html");
    let options = args.options;
    tokio::spawn(async move {
        if let Err(e) = pattern::run(&url, &options).await {
            tracing::error!(error = %e, "demo pattern stopped");
        }
    });
    Ok(())
}
