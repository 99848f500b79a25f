//! Client-side TLS for a load driver that speaks only `ws://`: accepts
//! plain TCP on LISTEN and forwards every connection over TLS to TARGET
//! (trusting only the certificate in CA.pem, for the name `localhost`).
//! Pin it with the driver, away from the relay under test, so the relay's
//! CPU is what TLS costs the relay (the certificate must be an end-entity
//! one, `CA:FALSE`, for `localhost`):
//!
//!     taskset -c 1 target/release/examples/tls_shim 127.0.0.1:9200 127.0.0.1:9100 cert.pem &
//!     taskset -c 1 target/release/loadtest headline --url ws://127.0.0.1:9200 --relay-pid $PID

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// Copy buffer per direction: whole TLS records at a time.
const BUF: usize = 256 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target, ca] = &args[..] else {
        return Err("usage: tls_shim LISTEN TARGET CA.pem".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let listener = TcpListener::bind(listen).await?;
    let target = target.clone();
    loop {
        let (mut plain, _) = listener.accept().await?;
        let connector = connector.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let _ = plain.set_nodelay(true);
            let Ok(tcp) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from("localhost").expect("a valid name");
            let mut tls = match connector.connect(name, tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("tls_shim: TLS handshake with {target} failed: {e}");
                    return;
                }
            };
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut plain, &mut tls, BUF, BUF).await;
        });
    }
}
