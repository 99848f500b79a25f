//! The `bitstream-relay` binary: parse options, set up logging, run until
//! SIGINT/SIGTERM, close every peer with 1001 and exit 0. `bitstream-relay
//! token …` mints a token instead.

use bitstream_relay::Server;
use bitstream_relay::{Config, LogFormat, TokenArgs};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Task polls between two looks for socket events on a busy worker.
const EVENT_INTERVAL: u32 = 8;

/// The command line: the relay's options, and an optional subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "bitstream-relay",
    version,
    about = "Fan-out WebSocket relay for PROTOCOL.md bitstreams"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a token signed with --jwt-secret-file (HS256), e.g.
    /// `bitstream-relay token --channel cam --role source --ttl 1h`.
    Token(TokenArgs),
}

fn main() {
    let Cli {
        mut config,
        command,
    } = Cli::parse();
    if let Some(Command::Token(args)) = command {
        match bitstream_relay::mint_token(&config, &args) {
            Ok(token) => println!("{token}"),
            Err(e) => {
                eprintln!("bitstream-relay token: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    fit_open_files(&mut config);
    // One core (e.g. under `taskset -c 0`) gets a current-thread runtime: no
    // work-stealing bookkeeping for a scheduler that cannot steal.
    let threads = config.worker_threads();
    let mut rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // A saturated worker looks for new socket events every EVENT_INTERVAL
    // task polls (tokio's default is 61): with a few peers uploading large
    // messages, each poll a ~0.6 ms read, 61 polls kept a healthy peer's
    // next bytes, or a health check, waiting ~40 ms per readiness. An idle
    // worker polls for events at once either way.
    rt.enable_all().event_interval(EVENT_INTERVAL);
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitstream-relay: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        let server = Server::bind(config).await.map_err(|e| e.to_string())?;
        let relay = server.relay().clone();
        tokio::spawn(reload_on_sighup(relay.clone()));
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: closing every peer with 1001");
            relay.begin_shutdown();
        });
        server.run().await.map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        eprintln!("bitstream-relay: {e}");
        std::process::exit(1);
    }
    // Connection tasks still lingering are dropped with the runtime.
    rt.shutdown_background();
}

/// File descriptors kept for everything but peers (listener, GC, logs…).
const RESERVED_FDS: u64 = 64;

/// Raises the open-file soft limit to the hard limit, and caps
/// `--max-connections` to what the limit allows (with a log line): past it,
/// `accept` would fail instead of the relay refusing with a clear 503.
fn fit_open_files(config: &mut bitstream_relay::Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let allowed = lim.rlim_cur.saturating_sub(RESERVED_FDS) as usize;
    if config.max_connections > allowed {
        tracing::warn!(
            requested = config.max_connections,
            allowed,
            open_files = lim.rlim_cur,
            "--max-connections capped to the open-file limit"
        );
        config.max_connections = allowed;
    }
}

/// Reloads the TLS certificate and key on every SIGHUP (new connections
/// get them; open ones keep theirs; a bad file keeps the previous pair).
async fn reload_on_sighup(relay: std::sync::Arc<bitstream_relay::Relay>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match relay.reload_tls() {
            Ok(true) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
            Ok(false) => tracing::info!("SIGHUP: no --tls-cert, nothing to reload"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed, keeping the previous certificate")
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the relay still runs; it just cannot drain.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
