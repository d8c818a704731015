//! The Pi's identity key.

use std::path::Path;

use rand::RngCore as _;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

/// Load an OpenSSH private key (unencrypted: the service starts unattended).
pub fn load(path: &Path) -> Result<PrivateKey, String> {
    russh::keys::load_secret_key(path, None).map_err(|e| format!("identity key {}: {e}", path.display()))
}

/// Write a new ed25519 key to `path` (0600) and `path.pub`; returns the public-key line for
/// the gateway config. Refuses to overwrite an existing key.
pub fn generate(path: &Path, comment: &str) -> Result<String, String> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(|e| e.to_string())?;
    let public = key.public_key().to_openssh().map_err(|e| e.to_string())?;
    // Written durably (temp file, fsync, link into place, directory fsync): a power cut
    // leaves no key or a whole one, never a truncated one. Never overwrites a key.
    let write = |p: &Path, text: &str, mode: u32| -> Result<(), String> {
        signer_common::durable::durable_create_path(p, text.as_bytes(), mode)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    write(path, &private, 0o600)?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    write(Path::new(&pub_path), &format!("{public}\n"), 0o644)?;
    Ok(public)
}

/// SHA256 fingerprint of a key's public half.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}
