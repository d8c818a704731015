//! signer-gateway: see the crate README.
pub mod payload;
pub mod tezos;
pub mod watermark;
