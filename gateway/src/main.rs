//! `signer-gateway`: flags, logging, signals; everything else is in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signer_gateway::config::{Config, EtcdSettings, LogFormat, Settings, StoreSettings};
use signer_gateway::metrics::StoreMetrics;
use signer_gateway::payload::Kind;
use signer_gateway::tezos::{ChainId, Pkh};
use signer_gateway::watermark::{
    encode_marks, parse_marks, read_octez_dir, FileStore, IfMissing, Mark, MarkKey, WatermarkStore,
};
use signer_gateway::{open_store, Gateway};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Any other failure to start or run.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "signer-gateway",
    version,
    about = "Tezos remote-signer gateway with a durable high watermark"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(
        long,
        short,
        global = true,
        env = "SIGNER_GATEWAY_CONFIG",
        default_value = "/etc/signer-gateway/gateway.yaml"
    )]
    config: PathBuf,
    /// Log format (overrides the config's `log_format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    CheckConfig,
    /// Inspect, set, export or import high watermarks. With the file store the gateway must be
    /// stopped (the store is locked); with etcd it may run (import never lowers a mark).
    Watermark {
        #[command(subcommand)]
        action: WatermarkCommand,
    },
}

#[derive(Subcommand)]
enum WatermarkCommand {
    /// Print every mark.
    List {
        /// JSON output instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a mark (raise or lower): for moving a baker to this gateway, a new chain, or
    /// restoring a backup. Logged at warn level with the old and new values.
    Set {
        /// Chain id (`Net…`).
        #[arg(long)]
        chain: ChainId,
        /// Signing key (`tz1…`).
        #[arg(long)]
        key: Pkh,
        /// block, preattestation or attestation; repeat or omit for all three.
        #[arg(long, value_parser = parse_kind)]
        kind: Vec<Kind>,
        /// Level: requests at or below (level, round) will be refused.
        #[arg(long)]
        level: i32,
        /// Round at that level.
        #[arg(long, default_value_t = 0)]
        round: i32,
    },
    /// Print every mark as JSON (the file store's format), for `import` into another store.
    Export,
    /// Raise marks to those of an export (or of octez-signer's files); never lowers a mark.
    Import {
        /// A file written by `export` (`-` for stdin).
        #[arg(required_unless_present = "octez", conflicts_with = "octez")]
        file: Option<PathBuf>,
        /// octez-signer's base directory (`-d`): its `*_high_watermarks` files.
        #[arg(long, value_name = "DIR")]
        octez: Option<PathBuf>,
    },
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of block, preattestation, attestation"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("signer-gateway: {e}");
            return ExitCode::from(signer_common::EXIT_CONFIG);
        }
    };
    signer_common::init_tracing(cli.log_format.unwrap_or(settings.config.log_format));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signer-gateway: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(settings)),
        Command::CheckConfig => {
            println!("config {} is valid", cli.config.display());
            Ok(())
        }
        Command::Watermark { action } => runtime.block_on(watermark(settings, action)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("signer-gateway: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let gateway = Gateway::start(settings).await?;
    let (api, admin) = (gateway.api_addr()?, gateway.admin_addr()?);
    info!(%api, %admin, "signer-gateway listening");
    // One machine-readable line on stdout: tests and scripts wait for it.
    let mut ready = format!("signer-gateway ready api={api} admin={admin}");
    if let (Some(ssh), Some(fp)) = (gateway.ssh_addr(), gateway.ssh_fingerprint()) {
        ready.push_str(&format!(" ssh={ssh} host_key={fp}"));
    }
    if let Some(socket) = gateway.socket_addr() {
        info!(%socket, "socket protocol front end listening");
        ready.push_str(&format!(" socket={socket}"));
    }
    println!("{ready}");
    let shutdown = CancellationToken::new();
    tokio::spawn(signer_common::cancel_on_signals(shutdown.clone()));
    gateway.run(shutdown).await;
    Ok(())
}

/// Open the configured store for a `watermark` command. `create`: the operator's explicit
/// decision to start a file store (a first set-up, or a restore after lost state).
async fn open_for_cli(settings: &Settings, create: bool) -> anyhow::Result<Arc<dyn WatermarkStore>> {
    match &settings.store {
        StoreSettings::File { dir, .. } => {
            let if_missing = if create { IfMissing::Create } else { IfMissing::Refuse };
            Ok(Arc::new(FileStore::open_with(dir, if_missing)?))
        }
        StoreSettings::Memory => anyhow::bail!("watermark commands need `watermark.backend: file` or `etcd`"),
        StoreSettings::Etcd(etcd) => {
            // As with the file store, set and import may create the store under its prefix.
            let etcd = StoreSettings::Etcd(EtcdSettings {
                create_if_missing: etcd.create_if_missing || create,
                ..etcd.clone()
            });
            let store = open_store(&etcd, &StoreMetrics::new()?).await?;
            let health = store.health();
            if !health.healthy {
                anyhow::bail!(
                    "etcd is not answering: {}",
                    health.last_error.as_deref().unwrap_or("unknown error")
                );
            }
            Ok(store)
        }
    }
}

async fn watermark(settings: Settings, action: WatermarkCommand) -> anyhow::Result<()> {
    match action {
        WatermarkCommand::List { json } => {
            let marks = open_for_cli(&settings, false).await?.list().await?;
            if json {
                let rows: Vec<_> = marks
                    .iter()
                    .map(|(k, m)| {
                        serde_json::json!({
                            "chain": k.chain, "key": k.pkh, "kind": k.kind,
                            "level": m.level, "round": m.round,
                            "digest": m.digest.map(hex::encode), "signature": m.signature,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<16} {:<37} {:<15} {:>10} {:>6}",
                    "CHAIN", "KEY", "KIND", "LEVEL", "ROUND"
                );
                for (k, m) in marks {
                    println!(
                        "{:<16} {:<37} {:<15} {:>10} {:>6}",
                        k.chain, k.pkh, k.kind, m.level, m.round
                    );
                }
            }
        }
        WatermarkCommand::Set {
            chain,
            key,
            kind,
            level,
            round,
        } => {
            if level < 0 || round < 0 {
                anyhow::bail!("--level and --round must not be negative");
            }
            let store = open_for_cli(&settings, true).await?;
            let kinds = if kind.is_empty() { Kind::ALL.to_vec() } else { kind };
            for kind in kinds {
                let mk = MarkKey { chain, pkh: key, kind };
                let old = store.set(mk, level, round).await?;
                let old_text = old.map(|m| format!("level {} round {}", m.level, m.round));
                warn!(%chain, key = %key, %kind, old = old_text.as_deref().unwrap_or("none"), level, round, "watermark set by operator");
                println!(
                    "{chain} {key} {kind}: {} -> level {level} round {round}",
                    old_text.as_deref().unwrap_or("none")
                );
            }
        }
        WatermarkCommand::Export => {
            let marks = open_for_cli(&settings, false).await?.list().await?;
            let bytes = encode_marks(&marks)?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?;
        }
        WatermarkCommand::Import { file, octez } => {
            let marks: Vec<(MarkKey, Mark)> = match (file, octez) {
                (_, Some(dir)) => read_octez_dir(&dir)?,
                (Some(path), None) => {
                    let bytes = if path.as_os_str() == "-" {
                        let mut b = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b)?;
                        b
                    } else {
                        std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                    };
                    parse_marks(&bytes)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                        .into_iter()
                        .collect()
                }
                (None, None) => anyhow::bail!("give an export file or --octez DIR"),
            };
            let store = open_for_cli(&settings, true).await?;
            let (mut raised, mut kept) = (0, 0);
            for (key, mark) in marks {
                let (level, round) = (mark.level, mark.round);
                if store.raise(key, mark).await? {
                    raised += 1;
                    warn!(%key, level, round, "watermark raised by import");
                    println!("{key}: raised to level {level} round {round}");
                } else {
                    kept += 1;
                    println!("{key}: kept (the store is at or above level {level} round {round})");
                }
            }
            println!("{raised} marks raised, {kept} kept");
        }
    }
    Ok(())
}
