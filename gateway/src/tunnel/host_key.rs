//! The gateway's SSH host key: loaded, or generated on first start and written durably
//! (mode 0600) so a power cut never leaves a truncated key behind.

use std::path::Path;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::PrivateKey;
use tracing::info;

use super::BrokerError;

/// Load the ed25519 host key, or create one (mode 0600) when the file does not exist.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, BrokerError> {
    let err = |message: String| BrokerError::HostKey {
        path: path.display().to_string(),
        message,
    };
    match std::fs::metadata(path) {
        Ok(_) => russh::keys::load_secret_key(path, None).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore as _;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let text = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create its directory: {e}")))?;
            }
            signer_common::durable::durable_create_path(path, text.as_bytes(), 0o600)
                .map_err(|e| err(format!("cannot create: {e}")))?;
            info!(path = %path.display(), "generated a new ed25519 SSH host key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}
