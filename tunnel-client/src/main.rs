//! `signer-tunnel`: flags, logging, signals; the work is in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signer_tunnel::config::{Config, LogFormat};
use signer_tunnel::session::Session;
use signer_tunnel::{keys, probe, supervisor};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "signer-tunnel",
    version,
    about = "Keeps a reverse SSH tunnel from this signer to signer-gateway"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(
        long,
        short,
        global = true,
        env = "SIGNER_TUNNEL_CONFIG",
        default_value = "/etc/signer-tunnel/config.yaml"
    )]
    config: PathBuf,
    /// Log format (overrides the config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Keep the tunnel up (the default).
    Run,
    /// Connect once over every uplink, report each step, exit 0 when every step passed and
    /// the local signer answers, 1 otherwise.
    Check {
        /// Also request the remote forward. On a Pi whose service is running this takes the
        /// route over from the live session for a moment (the gateway's newest session wins).
        #[arg(long)]
        forward: bool,
    },
    /// Write a new ed25519 identity and print the line to list in the gateway config.
    Keygen {
        /// Where to write the private key (`.pub` is written beside it).
        #[arg(long, default_value = "/etc/signer-tunnel/id_ed25519")]
        out: PathBuf,
        /// Comment in the public key line.
        #[arg(long)]
        comment: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen { out, comment }) = &cli.command {
        let comment = comment.clone().unwrap_or_else(default_comment);
        return match keys::generate(out, &comment) {
            Ok(line) => {
                println!("{line}");
                eprintln!(
                    "wrote {} (list the line above under the signer's tunnel.keys in the gateway config)",
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("signer-tunnel keygen: {e}");
                ExitCode::from(1)
            }
        };
    }
    let settings = match Config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("signer-tunnel: {e}");
            return ExitCode::from(signer_common::EXIT_CONFIG);
        }
    };
    signer_common::init_tracing(cli.log_format.unwrap_or(settings.config.log_format));
    let key = match keys::load(&settings.config.identity) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            error!("{e}");
            eprintln!("signer-tunnel: {e}");
            return ExitCode::from(signer_common::EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signer-tunnel: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { forward } => runtime.block_on(check(settings, key, forward)),
        _ => {
            let replicas: Vec<String> = settings
                .replicas
                .iter()
                .map(|r| format!("{} ({})", r.name, r.addresses.join(", ")))
                .collect();
            info!(identity = %keys::fingerprint(&key), gateways = ?replicas, "signer-tunnel starting");
            let shutdown = CancellationToken::new();
            runtime.spawn(signer_common::cancel_on_signals(shutdown.clone()));
            match runtime.block_on(supervisor::run(settings, key, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "signer-tunnel stopped on an internal error");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn default_comment() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "signer-tunnel".into()
    } else {
        format!("signer-tunnel@{host}")
    }
}

/// Connect once over every uplink to every address of every replica, printing each step.
async fn check(
    settings: signer_tunnel::config::Settings,
    key: Arc<russh::keys::PrivateKey>,
    forward: bool,
) -> ExitCode {
    let cfg = &settings.config;
    println!("identity {} ({})", cfg.identity.display(), keys::fingerprint(&key));
    let local = probe::probe(cfg).await;
    let asked = probe::describe(cfg);
    match &local {
        Ok(()) => println!("ok   local signer {} answers {asked}", cfg.signer),
        Err(e) => println!("FAIL local signer {} {asked}: {e}", cfg.signer),
    }
    if forward {
        println!("note: --forward takes the route over from a running signer-tunnel for a moment");
    } else {
        println!(
            "note: the remote forward is not requested (it would disturb a running tunnel); add --forward to test it"
        );
    }
    let mut ok = local.is_ok();
    let several = settings.replicas.len() > 1;
    for replica in &settings.replicas {
        if several {
            println!("==   replica {}", replica.name);
        }
        for (u, uplink) in settings.uplinks.iter().enumerate() {
            for gw in &replica.addresses {
                println!("--   gateway {gw} via uplink {}", uplink.name);
                let mut step = |s: String| println!("ok   {s}");
                match Session::connect(&settings, &replica.pin, Arc::clone(&key), gw, u, forward, &mut step).await {
                    Ok(session) => session.close("check done").await,
                    Err(e) => {
                        println!("FAIL {e}");
                        ok = false;
                    }
                }
            }
        }
    }
    if ok {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("some checks failed");
        ExitCode::from(1)
    }
}
