//! The `callcode` command line: `serve` runs the engine, `check-config` validates a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use callcode::config::Config;

#[derive(Parser)]
#[command(
    name = "callcode",
    version,
    about = "Self-hosted phone verification: flash calls and voice passwords"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the HTTP API and the call engine.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Listen address; overrides `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Database URL; overrides `server.database` (e.g. `sqlite://callcode.db`).
        #[arg(long)]
        db: Option<String>,
    },
    /// Validate a configuration file and its prompts; names the offending key and line.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => match callcode::server::load_sounds(&config) {
                Ok(_) => {
                    println!(
                        "{}: ok ({} accounts, {} routes, {} backends)",
                        file.display(),
                        config.accounts.len(),
                        config.routes.len(),
                        config.backends.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: server.sounds: {e}", file.display());
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Serve { config, listen, db } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,sqlx=warn".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let mut cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(d) = db {
                cfg.server.database = d;
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(callcode::server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("callcode: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
