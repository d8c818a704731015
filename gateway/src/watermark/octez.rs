//! Import of octez-signer's high-watermark files, so a baker moving from `octez-signer -W`
//! keeps its marks (`signer-gateway watermark import --octez DIR`). Pure: reads files, returns
//! marks; storing them is the caller's business.
//!
//! # Where the format comes from
//!
//! Read in octez (tezos/tezos-mirror, commit `d26a8bef82159434e5a6db6a6d329f29dc8172dd`):
//!
//! - `src/bin_signer/handler.ml`, module `High_watermark`: `encoding` (the JSON shape) and
//!   `mark_if_block_or_attestation` (which file a payload's mark goes to, what `hash` is);
//! - `src/lib_client_base_unix/client_context_unix.ml`, `filename`: a wallet "alias file"
//!   `<name>_high_watermark` lives at `<base dir>/<name>_high_watermarks` (an `s` is added);
//! - `data-encoding/src/v1.ml` (`assoc` is a JSON object), `data-encoding/src/json.ml`
//!   (`bytes` is lower-case hex) and `json-data-encoding/src/json_encoding.ml` (`int32` is a
//!   JSON number; unknown fields are rejected);
//! - the rename `preendorsement`/`endorsement` → `preattestation`/`attestation` is octez
//!   commit `affbf7f561cff33fcef1c785e05581a8e756f3fd`, first released in octez v23.0
//!   (`docs/CHANGES.rst`: "Rename the preendorsement_high_watermarks and
//!   endorsement_high_watermarks files…"). Older signers wrote the old names; a signer
//!   upgraded across the rename starts new files and leaves the old ones behind.
//!
//! | file | our kind |
//! |---|---|
//! | `block_high_watermarks` | block (magic 0x11; also Emmy 0x01) |
//! | `preattestation_high_watermarks` | preattestation (0x12, octez ≥ v23) |
//! | `attestation_high_watermarks` | attestation (0x13, octez ≥ v23) |
//! | `preendorsement_high_watermarks` | preattestation (0x12, octez < v23) |
//! | `endorsement_high_watermarks` | attestation (0x13 before v23; Emmy 0x02 always) |
//!
//! Each file is one JSON object: chain id (`Net…`) → object of key hash (`tz1…`–`tz4…`) →
//! mark:
//!
//! ```json
//! { "NetXdQprcVkpaWU":
//!     { "tz1…": { "level": 9000000, "round": 0,
//!                 "hash": "<64 hex digits>", "signature": "edsig…" } } }
//! ```
//!
//! `level` (int32) and `hash` are required, `round` (int32) and `signature` optional.
//! octez writes `signature` with every mark; `round` is absent only for pre-Tenderbake
//! (Emmy) marks. A missing file means "no marks" to octez; an empty object too.
//!
//! # What a mark becomes
//!
//! octez's `hash` is `Blake2B.hash_bytes [bytes]`: blake2b-256 of the exact bytes signed,
//! magic byte included. That is our digest too ([`crate::tezos::blake2b_256`] of the
//! payload), so the digest is kept, and with it the signature: identical bytes repeated after
//! the move get the signature octez released (after the usual verification against the key),
//! other bytes at that (level, round) are refused, as octez did.
//!
//! A mark without `round` (Emmy era) becomes (level, `i32::MAX`) with no digest and no
//! signature: octez refused every round at that level except the same bytes, and Emmy bytes
//! can never be signed again, so refusing the whole level is the same rule, fail-closed.
//!
//! # Strictness
//!
//! Anything octez would not write is an error naming the file and the entry: not an object,
//! a chain id or key hash that does not decode, a chain or key or field twice, a missing or
//! unknown field, a level or round that is not an integer, negative or outside int32, a hash
//! that is not 32 bytes of hex, a signature that is not base58check with a signature prefix.
//! An empty (zero-byte) file is an error as well: octez writes at least `{}`, so it is a
//! truncated copy, and importing nothing from it would silently drop protection. Each file is
//! capped at [`OCTEZ_FILE_LIMIT`] bytes, checked before reading and while reading.
//!
//! # Two files for one kind
//!
//! When both the new and the old file of a kind are present, a (chain, key) in both keeps the
//! higher (level, round). At an equal (level, round) the mark keeps its digest only if both
//! files hold the same hash (and then whichever signature is known); with different hashes
//! octez has already signed two payloads there, and the mark keeps no digest, so nothing at
//! that (level, round) is signed again. The same (chain, key) twice within one file is an
//! error: octez never writes that.
//!
//! Caveat (not detectable here): octez before v23.0-rc2 (fix `554a85e7ac`, "Signer: fix tz4
//! highwatermark") read a tz4 key's (pre)attestation level and round at the tz1 offsets, so
//! tz4 marks written by those versions hold meaningless numbers. tz4 consensus keys only
//! became usable with the protocol octez v23 introduced, so this should not arise in practice.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{digest_eq, Mark, MarkKey};
use crate::payload::Kind;
use crate::tezos::{ChainId, Pkh, TezosError};

/// Largest octez high-watermark file read (16 MiB). A mark takes about 300 bytes, so this is
/// tens of thousands of (chain, key) pairs: far beyond any real signer, small enough to parse
/// in memory.
pub const OCTEZ_FILE_LIMIT: u64 = 16 * 1024 * 1024;

/// The files looked for, new names first, each with the kind its marks count against.
pub const OCTEZ_FILES: [(&str, Kind); 5] = [
    ("block_high_watermarks", Kind::Block),
    ("preattestation_high_watermarks", Kind::Preattestation),
    ("attestation_high_watermarks", Kind::Attestation),
    ("preendorsement_high_watermarks", Kind::Preattestation),
    ("endorsement_high_watermarks", Kind::Attestation),
];

/// The file names of [`OCTEZ_FILES`], comma-separated, for messages.
fn file_names() -> String {
    OCTEZ_FILES.map(|(name, _)| name).join(", ")
}

/// What is wrong with one field of one mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OctezMarkProblem {
    /// The mark is not a JSON object.
    NotAnObject,
    /// A required field (`level`, `hash`) is absent.
    Missing,
    /// A field octez's encoding does not have.
    Unknown,
    /// The same field twice.
    Duplicate,
    /// `level` or `round` is not a JSON integer.
    NotAnInteger,
    /// `level` or `round` is outside int32.
    OutOfRange,
    /// `level` or `round` is negative.
    Negative,
    /// `hash` is not a string of 64 hex digits.
    BadHash,
    /// `signature` is not a base58check string with a Tezos signature prefix.
    BadSignature,
}

impl fmt::Display for OctezMarkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OctezMarkProblem::NotAnObject => "is not a JSON object",
            OctezMarkProblem::Missing => "is missing",
            OctezMarkProblem::Unknown => "is not a field of an octez mark",
            OctezMarkProblem::Duplicate => "appears twice",
            OctezMarkProblem::NotAnInteger => "is not an integer",
            OctezMarkProblem::OutOfRange => "is outside the int32 range",
            OctezMarkProblem::Negative => "is negative",
            OctezMarkProblem::BadHash => "is not 32 bytes of hex",
            OctezMarkProblem::BadSignature => "is not a base58check Tezos signature",
        })
    }
}

/// Why an octez directory could not be imported. Nothing is imported on any error.
#[derive(Debug, thiserror::Error)]
pub enum OctezImportError {
    /// None of [`OCTEZ_FILES`] exists in the directory.
    #[error("no octez high-watermark file in {}: looked for {}", dir.display(), file_names())]
    NoFiles {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The path given is not a directory.
    #[error("{} is not a directory", dir.display())]
    NotADirectory {
        /// The path given.
        dir: PathBuf,
    },
    /// The directory or a file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A watermark file name is taken by something other than a regular file.
    #[error("{} is not a regular file", file.display())]
    NotAFile {
        /// The file.
        file: PathBuf,
    },
    /// A file is larger than the cap.
    #[error("{} is larger than {limit} bytes", file.display())]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A file has no content (octez writes at least `{}`): a truncated copy.
    #[error("{} is empty (octez writes at least {{}}): a truncated copy?", file.display())]
    Empty {
        /// The file.
        file: PathBuf,
    },
    /// Not JSON, or not an object of objects of marks.
    #[error("{} is not an octez high-watermark file: {message}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A top-level key is not a chain id.
    #[error("{}: {chain:?} is not a chain id: {reason}", file.display())]
    BadChain {
        /// The file.
        file: PathBuf,
        /// The key as written.
        chain: String,
        /// Why it does not decode.
        reason: TezosError,
    },
    /// A key under a chain is not a public key hash.
    #[error("{}: chain {chain}: {key:?} is not a public key hash: {reason}", file.display())]
    BadKey {
        /// The file.
        file: PathBuf,
        /// The chain it is under.
        chain: ChainId,
        /// The key as written.
        key: String,
        /// Why it does not decode.
        reason: TezosError,
    },
    /// The same chain twice in one file.
    #[error("{}: chain {chain} appears twice", file.display())]
    DuplicateChain {
        /// The file.
        file: PathBuf,
        /// The chain.
        chain: ChainId,
    },
    /// The same key twice under one chain in one file.
    #[error("{}: chain {chain}: key {pkh} appears twice", file.display())]
    DuplicateKey {
        /// The file.
        file: PathBuf,
        /// The chain.
        chain: ChainId,
        /// The key.
        pkh: Pkh,
    },
    /// A mark that is not what octez writes.
    #[error("{}: chain {chain}, key {pkh}: `{field}` {problem}", file.display())]
    BadMark {
        /// The file.
        file: PathBuf,
        /// The chain.
        chain: ChainId,
        /// The key.
        pkh: Pkh,
        /// The field (`mark` for the mark as a whole).
        field: String,
        /// What is wrong with it.
        problem: OctezMarkProblem,
    },
}

/// The kind of an [`OctezImportError`], `Copy + Eq` for tests and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OctezErrorKind {
    /// [`OctezImportError::NoFiles`].
    NoFiles,
    /// [`OctezImportError::NotADirectory`].
    NotADirectory,
    /// [`OctezImportError::Io`].
    Io,
    /// [`OctezImportError::NotAFile`].
    NotAFile,
    /// [`OctezImportError::TooLarge`].
    TooLarge,
    /// [`OctezImportError::Empty`].
    Empty,
    /// [`OctezImportError::Json`].
    Json,
    /// [`OctezImportError::BadChain`].
    BadChain,
    /// [`OctezImportError::BadKey`].
    BadKey,
    /// [`OctezImportError::DuplicateChain`].
    DuplicateChain,
    /// [`OctezImportError::DuplicateKey`].
    DuplicateKey,
    /// [`OctezImportError::BadMark`], with the problem.
    BadMark(OctezMarkProblem),
}

impl OctezImportError {
    /// The kind, for tests and callers that branch on it.
    pub fn kind(&self) -> OctezErrorKind {
        match self {
            OctezImportError::NoFiles { .. } => OctezErrorKind::NoFiles,
            OctezImportError::NotADirectory { .. } => OctezErrorKind::NotADirectory,
            OctezImportError::Io { .. } => OctezErrorKind::Io,
            OctezImportError::NotAFile { .. } => OctezErrorKind::NotAFile,
            OctezImportError::TooLarge { .. } => OctezErrorKind::TooLarge,
            OctezImportError::Empty { .. } => OctezErrorKind::Empty,
            OctezImportError::Json { .. } => OctezErrorKind::Json,
            OctezImportError::BadChain { .. } => OctezErrorKind::BadChain,
            OctezImportError::BadKey { .. } => OctezErrorKind::BadKey,
            OctezImportError::DuplicateChain { .. } => OctezErrorKind::DuplicateChain,
            OctezImportError::DuplicateKey { .. } => OctezErrorKind::DuplicateKey,
            OctezImportError::BadMark { problem, .. } => OctezErrorKind::BadMark(*problem),
        }
    }
}

/// Read the octez high-watermark files in `dir` (an octez-signer base directory) and return
/// their marks, sorted by key. Whichever of [`OCTEZ_FILES`] exist are read; at least one must.
/// See the module documentation for the format, the strictness and how the old and new file
/// of one kind are merged (the higher (level, round) wins).
pub fn read_octez_dir(dir: &Path) -> Result<Vec<(MarkKey, Mark)>, OctezImportError> {
    read_dir_capped(dir, OCTEZ_FILE_LIMIT)
}

/// [`read_octez_dir`] with the per-file cap as a parameter (tests use a small one).
fn read_dir_capped(dir: &Path, limit: u64) -> Result<Vec<(MarkKey, Mark)>, OctezImportError> {
    let meta = std::fs::metadata(dir).map_err(|source| OctezImportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(OctezImportError::NotADirectory { dir: dir.to_path_buf() });
    }
    let mut marks: BTreeMap<MarkKey, Mark> = BTreeMap::new();
    let mut found = false;
    for (name, kind) in OCTEZ_FILES {
        let file = dir.join(name);
        let Some(bytes) = read_capped(&file, limit)? else {
            continue;
        };
        found = true;
        // Within one file a (chain, key) is unique (checked by `parse_file`); a second entry
        // for a key here comes from the other name of the same kind.
        for (key, mark) in parse_file(&file, kind, &bytes)? {
            match marks.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(mark);
                }
                Entry::Occupied(mut o) => {
                    let merged = higher(o.get(), mark);
                    o.insert(merged);
                }
            }
        }
    }
    if !found {
        return Err(OctezImportError::NoFiles { dir: dir.to_path_buf() });
    }
    Ok(marks.into_iter().collect())
}

/// The mark to keep from two files' marks for one key: the higher (level, round); at equal
/// (level, round) the digest only if both agree on it.
fn higher(a: &Mark, b: Mark) -> Mark {
    match (a.level, a.round).cmp(&(b.level, b.round)) {
        std::cmp::Ordering::Greater => a.clone(),
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => match (&a.digest, &b.digest) {
            (Some(x), Some(y)) if digest_eq(x, y) => Mark {
                signature: a.signature.clone().or(b.signature),
                ..b
            },
            // Different bytes signed at the same point (or one side has no digest): refuse
            // everything there.
            _ => Mark {
                digest: None,
                signature: None,
                ..b
            },
        },
    }
}

/// The bytes of `file`, `None` if it does not exist, at most `limit` bytes.
fn read_capped(file: &Path, limit: u64) -> Result<Option<Vec<u8>>, OctezImportError> {
    let io = |source| OctezImportError::Io {
        path: file.to_path_buf(),
        source,
    };
    // Follows symlinks: a symlinked file is read, a symlink to nowhere is "absent".
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // Checked before opening: opening a FIFO would block.
    if !meta.is_file() {
        return Err(OctezImportError::NotAFile {
            file: file.to_path_buf(),
        });
    }
    let too_large = || OctezImportError::TooLarge {
        file: file.to_path_buf(),
        limit,
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let handle = std::fs::File::open(file).map_err(io)?;
    // The file may grow between `metadata` and the read: read one byte past the cap to see.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    handle
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        return Err(too_large());
    }
    Ok(Some(bytes))
}

/// Decode one file: every (chain, key) mark in it, for `kind`.
fn parse_file(file: &Path, kind: Kind, bytes: &[u8]) -> Result<Vec<(MarkKey, Mark)>, OctezImportError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OctezImportError::Empty {
            file: file.to_path_buf(),
        });
    }
    let raw: Entries<Entries<RawMark>> = serde_json::from_slice(bytes).map_err(|e| OctezImportError::Json {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut chains = BTreeSet::new();
    for (chain_text, keys) in raw.0 {
        let chain: ChainId = chain_text.parse().map_err(|reason| OctezImportError::BadChain {
            file: file.to_path_buf(),
            chain: chain_text.clone(),
            reason,
        })?;
        if !chains.insert(chain) {
            return Err(OctezImportError::DuplicateChain {
                file: file.to_path_buf(),
                chain,
            });
        }
        let mut pkhs = BTreeSet::new();
        for (key_text, raw_mark) in keys.0 {
            let pkh: Pkh = key_text.parse().map_err(|reason| OctezImportError::BadKey {
                file: file.to_path_buf(),
                chain,
                key: key_text.clone(),
                reason,
            })?;
            if !pkhs.insert(pkh) {
                return Err(OctezImportError::DuplicateKey {
                    file: file.to_path_buf(),
                    chain,
                    pkh,
                });
            }
            let mark = parse_mark(raw_mark).map_err(|(field, problem)| OctezImportError::BadMark {
                file: file.to_path_buf(),
                chain,
                pkh,
                field,
                problem,
            })?;
            out.push((MarkKey { chain, pkh, kind }, mark));
        }
    }
    Ok(out)
}

/// Decode one mark's fields (`level`, `round`, `hash`, `signature`), or name the bad field.
fn parse_mark(raw: RawMark) -> Result<Mark, (String, OctezMarkProblem)> {
    let RawMark::Object(fields) = raw else {
        return Err(("mark".into(), OctezMarkProblem::NotAnObject));
    };
    let mut level = None;
    let mut round = None;
    let mut hash = None;
    let mut signature = None;
    for (name, value) in fields {
        let slot = match name.as_str() {
            "level" => &mut level,
            "round" => &mut round,
            "hash" => &mut hash,
            "signature" => &mut signature,
            _ => return Err((name, OctezMarkProblem::Unknown)),
        };
        if slot.replace(value).is_some() {
            return Err((name, OctezMarkProblem::Duplicate));
        }
    }
    let field_err = |name: &str, problem| (name.to_string(), problem);
    let level = level.ok_or_else(|| field_err("level", OctezMarkProblem::Missing))?;
    let level = int32(&level).map_err(|p| field_err("level", p))?;
    let round = round
        .map(|r| int32(&r).map_err(|p| field_err("round", p)))
        .transpose()?;
    let hash = hash.ok_or_else(|| field_err("hash", OctezMarkProblem::Missing))?;
    let hash = hash32(&hash).ok_or_else(|| field_err("hash", OctezMarkProblem::BadHash))?;
    let signature = signature
        .map(|s| match s {
            Value::String(s) if is_signature(&s) => Ok(s),
            _ => Err(field_err("signature", OctezMarkProblem::BadSignature)),
        })
        .transpose()?;
    Ok(match round {
        Some(round) => Mark {
            level,
            round,
            digest: Some(hash),
            signature,
        },
        // Emmy mark: octez refused every later request at this level but identical bytes;
        // those bytes are obsolete, so refuse the whole level (module doc).
        None => Mark {
            level,
            round: i32::MAX,
            digest: None,
            signature: None,
        },
    })
}

/// A non-negative int32 written as a JSON integer.
fn int32(v: &Value) -> Result<i32, OctezMarkProblem> {
    let Value::Number(n) = v else {
        return Err(OctezMarkProblem::NotAnInteger);
    };
    let n = match (n.as_i64(), n.is_u64()) {
        (Some(n), _) => n,
        // Above i64::MAX.
        (None, true) => return Err(OctezMarkProblem::OutOfRange),
        (None, false) => return Err(OctezMarkProblem::NotAnInteger),
    };
    let n = i32::try_from(n).map_err(|_| OctezMarkProblem::OutOfRange)?;
    if n < 0 {
        return Err(OctezMarkProblem::Negative);
    }
    Ok(n)
}

/// 32 bytes written as 64 hex digits (octez writes lower case; either case is accepted).
fn hash32(v: &Value) -> Option<[u8; 32]> {
    let Value::String(s) = v else {
        return None;
    };
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Tezos signature encodings: text prefix, prefix bytes, payload lengths. From octez
/// `src/lib_crypto/base58.ml` (same commit as the module doc).
const SIGNATURE_PREFIXES: [(&str, &[u8], &[usize]); 6] = [
    ("edsig", &[9, 245, 205, 134, 18], &[64]),
    ("spsig1", &[13, 115, 101, 19, 63], &[64]),
    ("p2sig", &[54, 240, 44, 52], &[64]),
    ("BLsig", &[40, 171, 64, 207], &[96]),
    ("mdsig", &[1, 156, 45, 210, 3], &[2420]),
    // Generic: ed25519/secp256k1/p256 (64 bytes) or BLS (96).
    ("sig", &[4, 130, 43], &[64, 96]),
];

/// Whether `s` is a Tezos signature in one of [`SIGNATURE_PREFIXES`]. Only the encoding is
/// checked: a kept signature is verified against the key before it answers a repeat.
fn is_signature(s: &str) -> bool {
    let Ok(raw) = bs58::decode(s).with_check(None).into_vec() else {
        return false;
    };
    SIGNATURE_PREFIXES.iter().any(|(text, prefix, lens)| {
        s.starts_with(text) && raw.strip_prefix(*prefix).is_some_and(|rest| lens.contains(&rest.len()))
    })
}

/// A JSON object read as its entries in file order, duplicates kept (a map would silently
/// drop all but one).
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// One mark as written: an object's fields in order, or anything else (reported as
/// [`OctezMarkProblem::NotAnObject`] with the chain and key, rather than as a bare JSON error).
enum RawMark {
    Object(Vec<(String, Value)>),
    Other,
}

impl<'de> de::Deserialize<'de> for RawMark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMark;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mark")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMark, A::Error> {
                let Entries(fields) =
                    <Entries<Value> as de::Deserialize>::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawMark::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawMark, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawMark::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawMark, E> {
                Ok(RawMark::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawMark, E> {
                Ok(RawMark::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawMark, E> {
                Ok(RawMark::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawMark, E> {
                Ok(RawMark::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawMark, E> {
                Ok(RawMark::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawMark, E> {
                Ok(RawMark::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    //! The files below are written by hand in the shape octez-signer writes (module doc:
    //! `src/bin_signer/handler.ml` `High_watermark.encoding` at tezos-mirror
    //! d26a8bef82159434e5a6db6a6d329f29dc8172dd, printed by `Data_encoding.Json.to_string
    //! ~minify:false`). Keys, chain ids and signatures are valid base58check made for the
    //! tests; hashes are arbitrary 32-byte values.

    use super::*;
    use crate::tezos::{blake2b_256, Curve};
    use crate::watermark::{decide, Decision, MarkRequest, RefusalReason};

    const MAINNET: &str = "NetXdQprcVkpaWU";
    /// Chain id bytes 01 02 03 04.
    const OTHER_NET: &str = "NetXHAoG8TyXu4i";
    const TZ1: &str = "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx";
    /// Hash bytes 0x22 × 20, and so on.
    const TZ2: &str = "tz2BRiXV32sy4x7U4FMwuVwNYSyR4gVvF7wZ";
    const TZ3: &str = "tz3QzmQtDWvXA39s1yqVzcMkqvmdTJswaYkM";
    const TZ4: &str = "tz4FEDKB6iFtnFNpqdHdkQJ1scwLazRg9YAy";
    const EDSIG: &str =
        "edsigtvGQbupdxN1MAYrXni7Ng9o6bNjkTYLizvKU7LyyXxyJ16ezH5oDH4kxYNGTuy1kE9CHwt3A22D7d8FaVcpJBhsb43ThZ9";
    const SPSIG: &str =
        "spsig1UGcovCz9mnTVXrzcppLNmBxjNSPYy6q6oh49o9JLWt48LNCxkxW98zuC9DkstuFsKTpmL7RcYQ4ycvVMM9pusLbdkL4zw";
    const P2SIG: &str =
        "p2sigjmAKwhHmtkMaJ7zuPriWMyNCwK3jztYqgLamQSRpqQdEozB6ZwDRHhTnxbC3w2y7DkC3SVjWuCfFiuJa4vXRvVq3hsQCB";
    const BLSIG: &str = "BLsigBCkScDjMVVNJP2VauLfLfo6AvMBR9hTi6JsLW9LrN5k4uXFRqQw4KpYVGgyK8FMJNRhMPcRnV6ZmNZE16r9Zf9rKmUVAgZW5HKNUUX8hKe9DYXCvuhNxw434he6pPPCVceNXWq9ZY";
    const GENERIC_SIG: &str =
        "sigkSwUrbjgRpK7MsEegGBirWapYepUuU8dEZjNzyzXcxLhGiPnBt8C1X3VmefpVqPnbig2NFoBQFLtLDNqUUKzeoV786aTo";
    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// A block file: two chains, every key type.
    const BLOCK_FILE: &str = r#"{ "NetXdQprcVkpaWU":
    { "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx":
        { "level": 9000001, "round": 0,
          "hash":
            "1111111111111111111111111111111111111111111111111111111111111111",
          "signature":
            "edsigtvGQbupdxN1MAYrXni7Ng9o6bNjkTYLizvKU7LyyXxyJ16ezH5oDH4kxYNGTuy1kE9CHwt3A22D7d8FaVcpJBhsb43ThZ9" },
      "tz2BRiXV32sy4x7U4FMwuVwNYSyR4gVvF7wZ":
        { "level": 9000002, "round": 1,
          "hash":
            "2222222222222222222222222222222222222222222222222222222222222222",
          "signature":
            "spsig1UGcovCz9mnTVXrzcppLNmBxjNSPYy6q6oh49o9JLWt48LNCxkxW98zuC9DkstuFsKTpmL7RcYQ4ycvVMM9pusLbdkL4zw" },
      "tz3QzmQtDWvXA39s1yqVzcMkqvmdTJswaYkM":
        { "level": 9000003, "round": 2,
          "hash":
            "1111111111111111111111111111111111111111111111111111111111111111",
          "signature":
            "p2sigjmAKwhHmtkMaJ7zuPriWMyNCwK3jztYqgLamQSRpqQdEozB6ZwDRHhTnxbC3w2y7DkC3SVjWuCfFiuJa4vXRvVq3hsQCB" },
      "tz4FEDKB6iFtnFNpqdHdkQJ1scwLazRg9YAy":
        { "level": 9000004, "round": 3,
          "hash":
            "2222222222222222222222222222222222222222222222222222222222222222",
          "signature":
            "BLsigBCkScDjMVVNJP2VauLfLfo6AvMBR9hTi6JsLW9LrN5k4uXFRqQw4KpYVGgyK8FMJNRhMPcRnV6ZmNZE16r9Zf9rKmUVAgZW5HKNUUX8hKe9DYXCvuhNxw434he6pPPCVceNXWq9ZY" } },
  "NetXHAoG8TyXu4i":
    { "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx":
        { "level": 42, "round": 0,
          "hash":
            "2222222222222222222222222222222222222222222222222222222222222222",
          "signature":
            "sigkSwUrbjgRpK7MsEegGBirWapYepUuU8dEZjNzyzXcxLhGiPnBt8C1X3VmefpVqPnbig2NFoBQFLtLDNqUUKzeoV786aTo" } } }
"#;

    /// One mark per file; `body` is the mark object.
    fn file_with(chain: &str, pkh: &str, body: &str) -> String {
        format!("{{ \"{chain}\":\n    {{ \"{pkh}\":\n        {body} }} }}\n")
    }

    fn mark_json(level: i64, round: Option<i64>, hash: &str, sig: Option<&str>) -> String {
        let round = round.map(|r| format!(", \"round\": {r}")).unwrap_or_default();
        let sig = sig.map(|s| format!(", \"signature\": \"{s}\"")).unwrap_or_default();
        format!("{{ \"level\": {level}{round}, \"hash\": \"{hash}\"{sig} }}")
    }

    fn chain(s: &str) -> ChainId {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pkh(s: &str) -> Pkh {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn key(c: &str, p: &str, kind: Kind) -> MarkKey {
        MarkKey {
            chain: chain(c),
            pkh: pkh(p),
            kind,
        }
    }

    fn digest(hex_text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn mark(level: i32, round: i32, hash: &str, sig: Option<&str>) -> Mark {
        Mark {
            level,
            round,
            digest: Some(digest(hash)),
            signature: sig.map(str::to_string),
        }
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        dir
    }

    fn read(files: &[(&str, &str)]) -> Result<Vec<(MarkKey, Mark)>, OctezImportError> {
        let dir = dir_with(files);
        read_octez_dir(dir.path())
    }

    fn kind_of(r: Result<Vec<(MarkKey, Mark)>, OctezImportError>) -> Result<usize, OctezErrorKind> {
        r.map(|v| v.len()).map_err(|e| e.kind())
    }

    #[test]
    fn all_kinds_chains_and_key_types() {
        let pre = file_with(MAINNET, TZ1, &mark_json(9000005, Some(1), H2, Some(EDSIG)));
        let att = file_with(MAINNET, TZ4, &mark_json(9000004, Some(0), H1, Some(BLSIG)));
        let got = read(&[
            ("block_high_watermarks", BLOCK_FILE),
            ("preattestation_high_watermarks", &pre),
            ("attestation_high_watermarks", &att),
        ]);
        let mut want = vec![
            (key(MAINNET, TZ1, Kind::Block), mark(9000001, 0, H1, Some(EDSIG))),
            (key(MAINNET, TZ2, Kind::Block), mark(9000002, 1, H2, Some(SPSIG))),
            (key(MAINNET, TZ3, Kind::Block), mark(9000003, 2, H1, Some(P2SIG))),
            (key(MAINNET, TZ4, Kind::Block), mark(9000004, 3, H2, Some(BLSIG))),
            (key(OTHER_NET, TZ1, Kind::Block), mark(42, 0, H2, Some(GENERIC_SIG))),
            (
                key(MAINNET, TZ1, Kind::Preattestation),
                mark(9000005, 1, H2, Some(EDSIG)),
            ),
            (key(MAINNET, TZ4, Kind::Attestation), mark(9000004, 0, H1, Some(BLSIG))),
        ];
        want.sort_by_key(|a| a.0);
        assert_eq!(got.map_err(|e| e.to_string()), Ok(want));
        // The curves came through.
        assert_eq!(pkh(TZ2).curve, Curve::Secp256k1);
        assert_eq!(pkh(TZ3).curve, Curve::P256);
        assert_eq!(pkh(TZ4).curve, Curve::Bls);
    }

    #[test]
    fn old_names_alone() {
        let pre = file_with(MAINNET, TZ1, &mark_json(10, Some(2), H1, Some(EDSIG)));
        let end = file_with(MAINNET, TZ1, &mark_json(9, Some(0), H2, Some(EDSIG)));
        let got = read(&[
            ("preendorsement_high_watermarks", &pre),
            ("endorsement_high_watermarks", &end),
        ]);
        let want = vec![
            (key(MAINNET, TZ1, Kind::Preattestation), mark(10, 2, H1, Some(EDSIG))),
            (key(MAINNET, TZ1, Kind::Attestation), mark(9, 0, H2, Some(EDSIG))),
        ];
        assert_eq!(got.map_err(|e| e.to_string()), Ok(want));
    }

    #[test]
    fn both_names_take_the_higher_mark() {
        // (new file mark, old file mark, expected)
        let m = |level, round, hash, sig| Some(mark_json(level, Some(round), hash, sig));
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<String>, Option<String>, Mark)> = vec![
            ("new higher level",      m(100, 0, H1, Some(EDSIG)), m(99, 5, H2, Some(EDSIG)), mark(100, 0, H1, Some(EDSIG))),
            ("old higher level",      m(99, 5, H1, Some(EDSIG)),  m(100, 0, H2, Some(EDSIG)), mark(100, 0, H2, Some(EDSIG))),
            ("old higher round",      m(100, 0, H1, Some(EDSIG)), m(100, 1, H2, None),        mark(100, 1, H2, None)),
            ("new higher round",      m(100, 2, H1, None),        m(100, 1, H2, Some(EDSIG)), mark(100, 2, H1, None)),
            ("same point, same hash", m(100, 1, H1, None),        m(100, 1, H1, Some(EDSIG)), mark(100, 1, H1, Some(EDSIG))),
            ("same point, same hash, sig in new", m(100, 1, H1, Some(EDSIG)), m(100, 1, H1, None), mark(100, 1, H1, Some(EDSIG))),
            ("same point, other hash", m(100, 1, H1, Some(EDSIG)), m(100, 1, H2, Some(EDSIG)),
                Mark { level: 100, round: 1, digest: None, signature: None }),
            ("only in the new file",  m(7, 0, H1, Some(EDSIG)),   None,                       mark(7, 0, H1, Some(EDSIG))),
            ("only in the old file",  None,                       m(8, 0, H2, Some(EDSIG)),   mark(8, 0, H2, Some(EDSIG))),
        ];
        for (name, new, old, want) in cases {
            for (new_name, old_name, kind) in [
                (
                    "attestation_high_watermarks",
                    "endorsement_high_watermarks",
                    Kind::Attestation,
                ),
                (
                    "preattestation_high_watermarks",
                    "preendorsement_high_watermarks",
                    Kind::Preattestation,
                ),
            ] {
                let new_file = new.as_deref().map(|b| file_with(MAINNET, TZ1, b));
                let old_file = old.as_deref().map(|b| file_with(MAINNET, TZ1, b));
                // The file without this key still exists, with another key in it.
                let other = file_with(MAINNET, TZ2, &mark_json(1, Some(0), H1, None));
                let got = read(&[
                    (new_name, new_file.as_deref().unwrap_or(&other)),
                    (old_name, old_file.as_deref().unwrap_or(&other)),
                ])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                let ours = got.iter().find(|(k, _)| *k == key(MAINNET, TZ1, kind)).map(|(_, m)| m);
                assert_eq!(ours, Some(&want), "{name} ({kind})");
                assert!(got.iter().all(|(k, _)| k.kind == kind), "{name}");
            }
        }
    }

    #[test]
    fn mark_without_round_refuses_its_whole_level() {
        let f = file_with(MAINNET, TZ1, &mark_json(500, None, H1, Some(EDSIG)));
        let got = read(&[("endorsement_high_watermarks", &f)]).unwrap_or_else(|e| panic!("{e}"));
        let want = Mark {
            level: 500,
            round: i32::MAX,
            digest: None,
            signature: None,
        };
        assert_eq!(got, vec![(key(MAINNET, TZ1, Kind::Attestation), want.clone())]);
        let k = key(MAINNET, TZ1, Kind::Attestation);
        let req = |level, round| MarkRequest {
            key: k,
            level,
            round,
            digest: digest(H1),
        };
        assert!(decide(Some(&want), &req(500, 0)).is_err());
        assert!(decide(Some(&want), &req(500, i32::MAX)).is_err());
        assert_eq!(decide(Some(&want), &req(501, 0)), Ok(Decision::Record));
    }

    /// octez's `hash` is blake2b-256 of the signed bytes, as our digest: identical bytes repeat
    /// with octez's signature, other bytes at that point are refused.
    #[test]
    fn imported_digest_matches_our_digest() {
        let payload = b"\x13some attestation bytes";
        let h = hex::encode(blake2b_256(payload));
        let f = file_with(MAINNET, TZ1, &mark_json(100, Some(0), &h, Some(EDSIG)));
        let got = read(&[("attestation_high_watermarks", &f)]).unwrap_or_else(|e| panic!("{e}"));
        let [(k, m)] = got.as_slice() else { panic!("{got:?}") };
        let req = |bytes: &[u8]| MarkRequest {
            key: *k,
            level: 100,
            round: 0,
            digest: blake2b_256(bytes),
        };
        assert_eq!(decide(Some(m), &req(payload)), Ok(Decision::Repeat(Some(EDSIG.into()))));
        assert_eq!(
            decide(Some(m), &req(b"\x13other bytes")).map_err(|e| e.reason()),
            Err(RefusalReason::DifferentData)
        );
    }

    #[test]
    fn empty_objects_are_no_marks() {
        assert_eq!(kind_of(read(&[("block_high_watermarks", "{}")])), Ok(0));
        assert_eq!(kind_of(read(&[("block_high_watermarks", " { }\n")])), Ok(0));
        let no_keys = format!("{{ \"{MAINNET}\": {{}} }}");
        assert_eq!(kind_of(read(&[("attestation_high_watermarks", &no_keys)])), Ok(0));
        // One empty file and one with marks.
        let f = file_with(MAINNET, TZ1, &mark_json(1, Some(0), H1, None));
        assert_eq!(
            kind_of(read(&[
                ("block_high_watermarks", "{}"),
                ("attestation_high_watermarks", &f)
            ])),
            Ok(1)
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        for contents in ["", "\n", "  \n\t"] {
            let got = read(&[("block_high_watermarks", contents)]);
            assert_eq!(kind_of(got), Err(OctezErrorKind::Empty), "{contents:?}");
        }
    }

    #[test]
    fn malformed_json_and_wrong_shapes() {
        let good_mark = mark_json(1, Some(0), H1, None);
        let cases: Vec<(&str, String)> = vec![
            ("truncated", BLOCK_FILE[..BLOCK_FILE.len() / 2].to_string()),
            ("trailing comma", format!("{{ \"{MAINNET}\": {{}}, }}")),
            ("trailing garbage", "{} {}".into()),
            ("not JSON", "block level 12".into()),
            ("empty array", "[]".into()),
            ("array of pairs", format!("[[\"{MAINNET}\", {{}}]]")),
            ("null", "null".into()),
            ("string", "\"{}\"".into()),
            ("chain maps to array", format!("{{ \"{MAINNET}\": [] }}")),
            (
                "chain maps to list of pairs",
                format!("{{ \"{MAINNET}\": [[\"{TZ1}\", {good_mark}]] }}"),
            ),
            ("chain maps to null", format!("{{ \"{MAINNET}\": null }}")),
            ("invalid UTF-8", "{\"\u{fffd}\": {}}".replace('\u{fffd}', "\u{0}")),
        ];
        for (name, contents) in cases {
            let got = read(&[("block_high_watermarks", &contents)]);
            assert_eq!(kind_of(got), Err(OctezErrorKind::Json), "{name}");
        }
        // Bytes that are not UTF-8 at all.
        let dir = dir_with(&[]);
        std::fs::write(dir.path().join("block_high_watermarks"), b"{\"\xff\": {}}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kind_of(read_octez_dir(dir.path())), Err(OctezErrorKind::Json));
    }

    #[test]
    fn bad_marks_name_the_field() {
        use OctezMarkProblem as P;
        let long_level = "12345678901234567890123";
        #[rustfmt::skip]
        let cases: Vec<(&str, String, &str, OctezMarkProblem)> = vec![
            ("array mark",         "[1, 0]".into(),                                       "mark", P::NotAnObject),
            ("number mark",        "12".into(),                                           "mark", P::NotAnObject),
            ("null mark",          "null".into(),                                         "mark", P::NotAnObject),
            ("string mark",        "\"x\"".into(),                                        "mark", P::NotAnObject),
            ("missing level",      format!("{{ \"round\": 0, \"hash\": \"{H1}\" }}"),     "level", P::Missing),
            ("missing hash",       "{ \"level\": 1, \"round\": 0 }".into(),              "hash", P::Missing),
            ("unknown field",      format!("{{ \"level\": 1, \"hash\": \"{H1}\", \"slot\": 3 }}"), "slot", P::Unknown),
            ("duplicate level",    format!("{{ \"level\": 1, \"level\": 2, \"hash\": \"{H1}\" }}"), "level", P::Duplicate),
            ("level as string",    format!("{{ \"level\": \"1\", \"hash\": \"{H1}\" }}"), "level", P::NotAnInteger),
            ("level as float",     format!("{{ \"level\": 1.5, \"hash\": \"{H1}\" }}"),   "level", P::NotAnInteger),
            ("level null",         format!("{{ \"level\": null, \"hash\": \"{H1}\" }}"),  "level", P::NotAnInteger),
            ("negative level",     mark_json(-1, Some(0), H1, None),                      "level", P::Negative),
            ("level above int32",  mark_json(1 << 31, Some(0), H1, None),                 "level", P::OutOfRange),
            ("level below int32",  mark_json(-(1 << 31) - 1, Some(0), H1, None),          "level", P::OutOfRange),
            ("level above u64",    format!("{{ \"level\": {long_level}, \"hash\": \"{H1}\" }}"), "level", P::NotAnInteger),
            ("level above i64",    format!("{{ \"level\": 18446744073709551615, \"hash\": \"{H1}\" }}"), "level", P::OutOfRange),
            ("negative round",     mark_json(1, Some(-1), H1, None),                      "round", P::Negative),
            ("round above int32",  mark_json(1, Some(1 << 31), H1, None),                 "round", P::OutOfRange),
            ("round null",         format!("{{ \"level\": 1, \"round\": null, \"hash\": \"{H1}\" }}"), "round", P::NotAnInteger),
            ("short hash",         mark_json(1, Some(0), &H1[2..], None),                 "hash", P::BadHash),
            ("long hash",          mark_json(1, Some(0), &format!("{H1}00"), None),       "hash", P::BadHash),
            ("hash not hex",       mark_json(1, Some(0), &H1.replace('1', "g"), None),     "hash", P::BadHash),
            ("hash as number",     "{ \"level\": 1, \"hash\": 17 }".into(),               "hash", P::BadHash),
            ("b58 hash",           mark_json(1, Some(0), "BLockGenesisGenesisGenesisGenesisGenesisf79b5d1CoW2", None), "hash", P::BadHash),
            ("signature number",   format!("{{ \"level\": 1, \"hash\": \"{H1}\", \"signature\": 5 }}"), "signature", P::BadSignature),
            ("signature null",     format!("{{ \"level\": 1, \"hash\": \"{H1}\", \"signature\": null }}"), "signature", P::BadSignature),
            ("signature checksum", mark_json(1, Some(0), H1, Some(&EDSIG.replace('v', "w"))), "signature", P::BadSignature),
            ("signature is a key", mark_json(1, Some(0), H1, Some(TZ1)),                  "signature", P::BadSignature),
            ("signature empty",    mark_json(1, Some(0), H1, Some("")),                   "signature", P::BadSignature),
        ];
        for (name, body, field, problem) in cases {
            let f = file_with(MAINNET, TZ3, &body);
            let got = read(&[("preattestation_high_watermarks", &f)]);
            match got {
                Err(OctezImportError::BadMark {
                    file,
                    chain: c,
                    pkh: p,
                    field: got_field,
                    problem: got_problem,
                }) => {
                    assert_eq!((got_field.as_str(), got_problem), (field, problem), "{name}");
                    assert_eq!((c, p), (chain(MAINNET), pkh(TZ3)), "{name}");
                    assert!(file.ends_with("preattestation_high_watermarks"), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_chain_ids_and_keys() {
        let m = mark_json(1, Some(0), H1, None);
        let cases: Vec<(&str, String, OctezErrorKind)> = vec![
            (
                "chain checksum",
                file_with("NetXdQprcVkpaWV", TZ1, &m),
                OctezErrorKind::BadChain,
            ),
            ("chain as hex", file_with("7a06a770", TZ1, &m), OctezErrorKind::BadChain),
            ("chain is a key", file_with(TZ1, TZ1, &m), OctezErrorKind::BadChain),
            ("empty chain", file_with("", TZ1, &m), OctezErrorKind::BadChain),
            (
                "key checksum",
                file_with(MAINNET, "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSy", &m),
                OctezErrorKind::BadKey,
            ),
            (
                "contract",
                file_with(MAINNET, "KT1PWx2mnDueood7fEmfbBDKx1D9BAnnXitn", &m),
                OctezErrorKind::BadKey,
            ),
            (
                "public key",
                file_with(MAINNET, "edpkuBknW28nW72KG6RoHtYW7p12T6GKc7nAbwYX5m8Wd9sDVC9yav", &m),
                OctezErrorKind::BadKey,
            ),
            (
                "tz1 text, tz2 bytes",
                file_with(MAINNET, &TZ2.replacen("tz2", "tz1", 1), &m),
                OctezErrorKind::BadKey,
            ),
            ("empty key", file_with(MAINNET, "", &m), OctezErrorKind::BadKey),
        ];
        for (name, contents, want) in cases {
            let got = read(&[("block_high_watermarks", &contents)]);
            assert_eq!(kind_of(got), Err(want), "{name}");
        }
    }

    #[test]
    fn duplicates_within_a_file() {
        let m = mark_json(1, Some(0), H1, None);
        let two_chains = format!("{{ \"{MAINNET}\": {{}}, \"{MAINNET}\": {{ \"{TZ1}\": {m} }} }}");
        let two_keys = format!("{{ \"{MAINNET}\": {{ \"{TZ1}\": {m}, \"{TZ1}\": {m} }} }}");
        assert_eq!(
            kind_of(read(&[("block_high_watermarks", &two_chains)])),
            Err(OctezErrorKind::DuplicateChain)
        );
        assert_eq!(
            kind_of(read(&[("block_high_watermarks", &two_keys)])),
            Err(OctezErrorKind::DuplicateKey)
        );
        // The same key under two chains is two marks.
        let two_nets = format!("{{ \"{MAINNET}\": {{ \"{TZ1}\": {m} }}, \"{OTHER_NET}\": {{ \"{TZ1}\": {m} }} }}");
        assert_eq!(kind_of(read(&[("block_high_watermarks", &two_nets)])), Ok(2));
    }

    #[test]
    fn one_bad_file_fails_the_import() {
        let got = read(&[
            ("block_high_watermarks", BLOCK_FILE),
            ("endorsement_high_watermarks", "{ \"NetXdQprcVkpaWU\": 3 }"),
        ]);
        assert_eq!(kind_of(got), Err(OctezErrorKind::Json));
    }

    #[test]
    fn oversize_files() {
        let dir = dir_with(&[]);
        let path = dir.path().join("attestation_high_watermarks");
        // Sparse: refused from its size, before any byte is read.
        let f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(OCTEZ_FILE_LIMIT + 1).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let got = read_octez_dir(dir.path());
        assert_eq!(kind_of(got), Err(OctezErrorKind::TooLarge));

        // With a small cap: at the cap is read, one byte over is not.
        let body = file_with(MAINNET, TZ1, &mark_json(1, Some(0), H1, None));
        let limit = u64::try_from(body.len()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, &body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kind_of(read_dir_capped(dir.path(), limit)), Ok(1));
        std::fs::write(&path, format!("{body} ")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            kind_of(read_dir_capped(dir.path(), limit)),
            Err(OctezErrorKind::TooLarge)
        );
        assert_eq!(kind_of(read_octez_dir(dir.path())), Ok(1));
    }

    #[test]
    fn no_files() {
        let dir = dir_with(&[("secret_keys", "[]"), ("block_high_watermark", "{}"), ("blocks", "{}")]);
        let err = match read_octez_dir(dir.path()) {
            Err(e) => e,
            Ok(v) => panic!("{v:?}"),
        };
        assert_eq!(err.kind(), OctezErrorKind::NoFiles);
        let msg = err.to_string();
        for (name, _) in OCTEZ_FILES {
            assert!(msg.contains(name), "{msg}");
        }
        let empty = dir_with(&[]);
        assert_eq!(kind_of(read_octez_dir(empty.path())), Err(OctezErrorKind::NoFiles));
    }

    #[test]
    fn not_a_directory_or_not_a_file() {
        let dir = dir_with(&[("block_high_watermarks", "{}")]);
        let file = dir.path().join("block_high_watermarks");
        assert_eq!(kind_of(read_octez_dir(&file)), Err(OctezErrorKind::NotADirectory));
        assert_eq!(
            kind_of(read_octez_dir(&dir.path().join("missing"))),
            Err(OctezErrorKind::Io)
        );
        let sub = dir_with(&[]);
        std::fs::create_dir(sub.path().join("attestation_high_watermarks")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kind_of(read_octez_dir(sub.path())), Err(OctezErrorKind::NotAFile));
    }

    #[test]
    fn messages_name_file_and_entry() {
        let f = file_with(MAINNET, TZ1, &mark_json(-3, Some(0), H1, None));
        let err = match read(&[("endorsement_high_watermarks", &f)]) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{v:?}"),
        };
        assert!(
            err.ends_with(&format!(
                "endorsement_high_watermarks: chain {MAINNET}, key {TZ1}: `level` is negative"
            )),
            "{err}"
        );
        let f = file_with(MAINNET, "tz9nope", &mark_json(1, Some(0), H1, None));
        let err = match read(&[("block_high_watermarks", &f)]) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{v:?}"),
        };
        assert!(
            err.contains("block_high_watermarks: chain NetXdQprcVkpaWU: \"tz9nope\" is not a public key hash"),
            "{err}"
        );
        let err = match read(&[("block_high_watermarks", "[]")]) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{v:?}"),
        };
        assert!(err.contains("block_high_watermarks is not an octez high-watermark file: invalid type: sequence, expected a JSON object at line 1"), "{err}");
    }
}
