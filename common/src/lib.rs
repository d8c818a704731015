//! What `signer-gateway` and `signer-tunnel` share: loading a strict YAML config with errors
//! that name the field, the exit code for a bad config, logging set-up, turning SIGTERM /
//! SIGINT into a cancellation, and files written durably ([`durable`]). Kept tiny: the Pi
//! binary links it too.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod durable;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

/// A signer's wire protocol, in both programs' configs: the gateway speaks it to the signer,
/// `signer-tunnel` probes the local signer in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerProtocol {
    /// octez-signer's HTTP protocol.
    #[default]
    Http,
    /// octez's binary socket protocol (`octez-signer launch socket signer`, a Russignol;
    /// `tcp://` key URIs).
    Socket,
}

/// EX_USAGE: the configuration is wrong; restarting will not help (systemd units use
/// `RestartPreventExitStatus=64`).
pub const EXIT_CONFIG: u8 = 64;

/// Why a configuration was refused. Every message names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file given with `--config`.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// Not valid YAML, or not the expected shape (unknown field, wrong type…).
    #[error("config {path}: {message}")]
    Parse {
        /// The file given with `--config` (`<text>` when parsed from a string).
        path: PathBuf,
        /// serde-saphyr's message, with line, column and field.
        message: String,
    },
    /// Parsed, but a value or a combination of values is not acceptable.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `signers[1].address`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A [`ConfigError::Invalid`] for `field`.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parse YAML text into `T` (whose structs use `deny_unknown_fields`).
///
/// YAML is read with `serde-saphyr`: `serde_yaml` is archived; serde-saphyr keeps the same
/// serde model, is pure Rust, and reports errors with the line, column and field.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
        path: PathBuf::from("<text>"),
        message: e.to_string(),
    })
}

/// Read a config file and hand its text to `parse` (which parses and validates), naming the
/// file in parse errors.
pub fn load_file<S>(path: &Path, parse: impl FnOnce(&str) -> Result<S, ConfigError>) -> Result<S, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

/// Accept `host:port` (or `ip:port`) with a non-empty host and a port in 1..=65535. Names
/// are resolved when connecting, so a Kubernetes service name works.
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(format!("{s:?}: port must be 1-65535"));
    }
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':'));
    if !host_ok {
        return Err(format!("{s:?}: invalid host name"));
    }
    Ok(())
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (event fields under `fields`, so a field named `level` does
    /// not clash with the log level).
    Json,
}

/// Log to stderr in `format`, filtered by `RUST_LOG` (default `info`); colours only on a
/// terminal.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancel `shutdown` on SIGTERM (systemd, Kubernetes) or SIGINT; a second signal while the
/// graceful stop runs exits the process at once (status 130), as an operator who presses
/// Ctrl-C twice expects.
pub async fn cancel_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal received: exiting now, without waiting for the graceful stop");
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        for ok in [
            "127.0.0.1:6732",
            "signer-gateway:6732",
            "gw.example.net:2222",
            "[::1]:22",
        ] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in ["nohost", ":22", "h:0", "h:70000", "h:x", "h o:1", "127.0.0.1:0"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let e = load_file(Path::new("/nonexistent/x.yaml"), |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.yaml"));
        let dir = std::env::temp_dir().join(format!("signer-common-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(&f, "a: [").unwrap();
        let e = load_file(&f, parse_yaml::<std::collections::BTreeMap<String, u32>>).unwrap_err();
        assert!(e.to_string().contains("c.yaml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
