//! The `bitstream-relay` binary: parse options (flags, `RELAY_*` variables,
//! a config file), set up logging, run until SIGINT/SIGTERM, close every
//! peer with 1001 and exit 0. Subcommands mint tokens, publish a test
//! pattern, watch a channel, run a demo, check the configuration, and
//! print shell completions or the man page.

mod cli;
mod tools;

use cli::{config_file, manual, preflight};

use std::io::IsTerminal;

use bitstream_relay::Server;
use bitstream_relay::{Config, LogFormat, TokenArgs};
use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use config_file::Parsed;
use tools::demo::DemoArgs;
use tools::pattern::PatternArgs;
use tools::watch::WatchArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Task polls between two looks for socket events on a busy worker.
const EVENT_INTERVAL: u32 = 8;

/// `--version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RELAY_GIT_COMMIT"),
    ")"
);

/// The command line: the relay's options, and an optional subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "bitstream-relay",
    version = VERSION,
    about = "Fan-out WebSocket relay for PROTOCOL.md bitstreams",
    after_help = "Every option is also read from its RELAY_* variable and from the config file \
                  (--config): a flag beats its variable, which beats the file, which beats the default. \
                  Relay options go before a subcommand: bitstream-relay --addr 0.0.0.0:9100 demo"
)]
struct Cli {
    /// A TOML file of relay options: every long flag without `--` is a key
    /// (`max-receivers = 5000`); unknown keys are refused. See
    /// relay.example.toml and `check-config`.
    #[arg(long, env = "RELAY_CONFIG", global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    relay: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a token signed with --jwt-secret-file (HS256), e.g.
    /// `bitstream-relay token --channel cam --role source --ttl 1h`.
    Token(TokenArgs),
    /// Publish a moving test picture to a channel: motion, the send time
    /// and the header timestamp (to read latency off), and the signal state.
    /// Reconnects when the relay restarts.
    Pattern(PatternArgs),
    /// Join a channel as a receiver and print, once a second, pictures per
    /// second, MB/s, latency (from the header timestamp) and the totals of
    /// sequence gaps, catch-ups, protocol errors and reconnections. Exit
    /// status: 0, 1 when the first connection fails, 2 on a protocol error
    /// with --fail-on-error.
    Watch(WatchArgs),
    /// Serve the relay (its options as usual, before `demo`) and publish the
    /// test pattern on a channel of it, printing the page to open.
    Demo(DemoArgs),
    /// Check the configuration (flags, RELAY_* variables, --config file,
    /// the files they name) and print the options in effect, each with where
    /// its value came from. Exit status 0 when it is usable, 2 when not.
    CheckConfig(CheckConfigArgs),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: manual::Shell,
    },
    /// Print the man page (roff) to stdout, e.g.
    /// `bitstream-relay man > bitstream-relay.1`.
    Man,
}

/// `check-config`'s options.
#[derive(Debug, clap::Args)]
struct CheckConfigArgs {
    /// Print the example configuration file instead: every option with its
    /// help and default (the repository's relay.example.toml).
    #[arg(long)]
    example: bool,
}

/// The relay's options as keys of the config file.
fn relay_keys() -> clap::Command {
    Config::command()
}

fn main() {
    let parsed = match config_file::parse::<Cli>(std::env::args_os().collect(), &relay_keys()) {
        Ok(parsed) => parsed,
        Err(e) => {
            if let Some(code) = e.clap_exit() {
                std::process::exit(code);
            }
            eprintln!("bitstream-relay: {e}");
            std::process::exit(2);
        }
    };
    let Parsed { cli, .. } = &parsed;
    let config = cli.relay.clone();
    init_logging(config.log_format);
    let code = match &cli.command {
        None => serve(&parsed, None),
        Some(Command::Demo(args)) => serve(&parsed, Some(args.clone())),
        Some(Command::Token(args)) => token(&config, args),
        Some(Command::Pattern(args)) => {
            run_tool(tools::pattern::run(&args.url, &args.options), |_| 1)
        }
        Some(Command::Watch(args)) => run_tool(tools::watch::run(args.clone()), |e| e.exit_code()),
        Some(Command::CheckConfig(args)) => check_config(&parsed, args),
        Some(Command::Completions { shell }) => {
            manual::completions(*shell, Cli::command(), &mut std::io::stdout());
            0
        }
        Some(Command::Man) => match manual::man_page(Cli::command(), &mut std::io::stdout()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bitstream-relay man: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

/// Logs to stderr at `RUST_LOG` (default info); colour only on a terminal.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `token`: prints a token, or why not (exit 2).
fn token(config: &Config, args: &TokenArgs) -> i32 {
    let minted = preflight::check_secret(config)
        .map_err(|e| e.to_string())
        .and_then(|()| bitstream_relay::mint_token(config, args).map_err(|e| e.to_string()));
    match minted {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(e) => {
            eprintln!("bitstream-relay token: {e}");
            2
        }
    }
}

/// `check-config`: the example, or the configuration in effect (exit 0),
/// or why it cannot work (exit 2).
fn check_config(parsed: &Parsed<Cli>, args: &CheckConfigArgs) -> i32 {
    let keys = relay_keys();
    if args.example {
        print!("{}", config_file::example(&keys));
        return 0;
    }
    print!("{}", config_file::effective(&keys, parsed));
    match preflight::check(&parsed.cli.relay) {
        Ok(()) => {
            eprintln!("bitstream-relay check-config: the configuration is usable");
            0
        }
        Err(e) => {
            eprintln!("bitstream-relay check-config: {e}");
            2
        }
    }
}

/// Runs a tool on a small runtime; its error is printed, with the exit
/// status `code` gives it.
fn run_tool<E: std::fmt::Display>(
    tool: impl std::future::Future<Output = Result<(), E>>,
    code: impl Fn(&E) -> i32,
) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitstream-relay: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(tool) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bitstream-relay: {e}");
            code(&e)
        }
    }
}

/// Serves the relay (and with `demo`, publishes the pattern on it) until
/// SIGINT/SIGTERM; the exit status.
fn serve(parsed: &Parsed<Cli>, demo: Option<DemoArgs>) -> i32 {
    let mut config = parsed.cli.relay.clone();
    if let Err(e) = preflight::check(&config) {
        eprintln!("bitstream-relay: {e}");
        return 1;
    }
    let explicit = parsed.source_of("max_connections") != "default";
    fit_open_files(&mut config, explicit);
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
            return 1;
        }
    };
    let result = rt.block_on(async move {
        let server = Server::bind(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(args) = demo {
            tools::demo::start(&config, server.local_addr(), args).map_err(|e| e.to_string())?;
        }
        let relay = server.relay().clone();
        tokio::spawn(reload_on_sighup(relay.clone()));
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: closing every peer with 1001");
            relay.begin_shutdown();
        });
        server.run().await.map_err(|e| e.to_string())
    });
    // Connection tasks still lingering are dropped with the runtime.
    rt.shutdown_background();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bitstream-relay: {e}");
            1
        }
    }
}

/// File descriptors kept for everything but peers (listener, GC, logs…).
const RESERVED_FDS: u64 = 64;

/// Raises the open-file soft limit to the hard limit, and caps
/// `--max-connections` to what the limit allows: past it, `accept` would
/// fail instead of the relay refusing with a clear 503. Only a value the
/// user asked for (`explicit`) is worth a warning when it cannot be met;
/// the default is fitted quietly.
fn fit_open_files(config: &mut bitstream_relay::Config, explicit: bool) {
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
        if explicit {
            tracing::warn!(
                requested = config.max_connections,
                allowed,
                open_files = lim.rlim_cur,
                "--max-connections capped to the open-file limit"
            );
        } else {
            tracing::debug!(
                default = config.max_connections,
                allowed,
                open_files = lim.rlim_cur,
                "--max-connections fitted to the open-file limit"
            );
        }
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

/// Waits for SIGTERM or SIGINT.
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
