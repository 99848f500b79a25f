//! TLS on the relay's port (`--tls-cert`, `--tls-key`): loading the PEM
//! certificate chain and key into a rustls configuration (ring provider),
//! reloading them for new connections on SIGHUP, and the server side of a
//! TLS handshake, after which a connection is a [`Conn`] like any other.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::relay::net::conn::Conn;
use crate::relay::resources::stats::Refusal;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Why the certificate or key could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No certificate in the certificate file.
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    /// No private key in the key file.
    #[error("{0}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("{cert} / {key}: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

/// The relay's TLS configuration: where the files are and what was last
/// loaded from them.
#[derive(Debug)]
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Loads the certificate chain and key.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            config: ArcSwap::from(server_config(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Loads the files again; new connections get the new pair, open ones
    /// keep theirs. On error the old pair stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        self.config.store(server_config(&self.cert, &self.key)?);
        Ok(())
    }

    /// The configuration for a new connection.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3,
/// `http/1.1` over ALPN) for the PEM files `cert` and `key`.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| TlsError::NoKey(key.to_owned()))?;
    let rustls_err = |source| TlsError::Rustls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server side of a TLS handshake on `tcp`, within `timeout`. A client
/// that speaks plain HTTP to the TLS port is answered in plain HTTP (400)
/// and refused; one that fails or stalls is refused. Each refusal is the
/// reason to count it by.
pub(crate) async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<Conn, (Refusal, Option<Conn>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => return Err((Refusal::TlsTimeout, None)),
        Ok(Err(_)) | Ok(Ok(0)) => return Err((Refusal::TlsFailed, None)),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE => {
            return Err((Refusal::TlsPlaintext, Some(Conn::from(tcp))))
        }
        Ok(Ok(_)) => {}
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let (tcp, session) = stream.into_inner();
            Ok(Conn::tls(tcp, session))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            Err((Refusal::TlsFailed, None))
        }
        Err(_) => Err((Refusal::TlsTimeout, None)),
    }
}
