//! The probe of a signer that speaks octez's binary socket protocol (`signer_protocol:
//! socket`): the `Authorized_keys` request, which octez's own client sends before every sign,
//! so a signer that answers it is one a baker can use: the socket counterpart of
//! `GET /authorized_keys`.
//!
//! Only the few bytes this probe needs, on purpose: the gateway's full codec
//! (`gateway/src/socket/`) would bring the gateway crate onto the Pi.
//!
//! # Wire format
//!
//! Read from tezos/tezos-mirror at commit `d26a8bef82159434e5a6db6a6d329f29dc8172dd`:
//! `src/lib_base/unix/socket.ml` (`send`/`recv`: the frame), `src/lib_signer_services/
//! signer_messages.ml` (`Request`, `Authorized_keys.Response`), `src/bin_signer/
//! socket_daemon.ml` (the answer is `result_encoding` of the response),
//! `src/lib_error_monad/monad_maker.ml` (`result_encoding`) and
//! `src/lib_signer_backends/unix/socket.ml` (the client: `maybe_authenticate`).
//!
//! - **Frame**: a big-endian `u16` length, then that many bytes of message; octez's `recv`
//!   refuses a message that does not fill its frame exactly, and so does this probe.
//! - **Request**: the `Authorized_keys` tag, `0x02`, alone: the frame `00 01 02`.
//! - **Answer**: `0x00` (Ok) then the result: `0x00` (no authentication required), or `0x01`
//!   then a list of key hashes (a `u32` byte length, then 21 bytes each: a curve tag 0 to 4
//!   and 20 bytes). Or `0x01` (Error) then the error trace: a `u32` byte length, then errors,
//!   each a `u32` length and the error's JSON in BSON form.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `Authorized_keys` request, framed.
const REQUEST: [u8; 3] = [0x00, 0x01, 0x02];

/// A key hash in a list: a curve tag and a 20-byte hash.
const PKH_LEN: usize = 21;

/// The highest curve tag of a key hash (0 ed25519, 1 secp256k1, 2 p256, 3 bls, 4 ml-dsa-44).
const MAX_CURVE_TAG: u8 = 4;

/// Ask the signer at `addr` for its authorized keys over a fresh connection; Ok when it
/// answers with a well-formed list (or "no authentication"). Unbounded in time: the caller
/// puts the timeout around it.
pub(super) async fn probe(addr: &str) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(&REQUEST).await.map_err(|e| format!("send: {e}"))?;
    let frame = read_frame(&mut tcp).await?;
    check_answer(&frame)
}

/// One frame: the length, then exactly that many bytes. The length is a `u16`, so the buffer
/// is at most 64 KiB whatever the signer sends.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, String> {
    let mut header = [0u8; 2];
    match read_full(r, &mut header).await? {
        0 => return Err("closed the connection without answering".into()),
        1 => return Err("closed the connection after 1 byte of the answer's 2-byte length".into()),
        _ => {}
    }
    // An HTTP signer answers the three bytes with a status line: name the likely mistake.
    if header == *b"HT" {
        return Err("answered in HTTP, not the socket protocol (signer_protocol: http?)".into());
    }
    let len = usize::from(u16::from_be_bytes(header));
    let mut frame = vec![0u8; len];
    let got = read_full(r, &mut frame).await?;
    if got < len {
        return Err(format!(
            "truncated answer: the frame announced {len} bytes, the connection closed after {got}"
        ));
    }
    Ok(frame)
}

/// Fill `buf` unless the peer closes first; how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await.map_err(|e| format!("read: {e}"))? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Is this whole frame a successful `Authorized_keys` answer?
fn check_answer(frame: &[u8]) -> Result<(), String> {
    match frame.split_first() {
        None => Err("empty answer".into()),
        Some((0x00, result)) => check_authorized_keys(result),
        Some((0x01, trace)) => Err(error_answer(trace)),
        Some((tag, _)) => Err(format!("malformed answer: result tag {tag:#04x}")),
    }
}

fn check_authorized_keys(result: &[u8]) -> Result<(), String> {
    match result.split_first() {
        None => Err("malformed answer: Ok without a result".into()),
        Some((0x00, [])) => Ok(()),
        Some((0x01, list)) => {
            let keys = exact_dynamic(list, "the key list")?;
            if keys.len() % PKH_LEN != 0 {
                return Err(format!(
                    "malformed answer: a key list of {} bytes is not whole {PKH_LEN}-byte key hashes",
                    keys.len()
                ));
            }
            match keys.chunks_exact(PKH_LEN).find(|k| k[0] > MAX_CURVE_TAG) {
                Some(k) => Err(format!("malformed answer: key hash curve tag {:#04x}", k[0])),
                None => Ok(()),
            }
        }
        Some((0x00, extra)) => Err(format!(
            "malformed answer: {} bytes after \"no authentication\"",
            extra.len()
        )),
        Some((tag, _)) => Err(format!("malformed answer: authorized keys tag {tag:#04x}")),
    }
}

/// The reason for an error answer: how many errors, and the first one's id when it can be read.
fn error_answer(trace: &[u8]) -> String {
    let mut rest = match exact_dynamic(trace, "the error trace") {
        Ok(list) => list,
        Err(e) => return e,
    };
    let mut ids = Vec::new();
    while !rest.is_empty() {
        match split_dynamic(rest) {
            Some((error, after)) => {
                ids.push(bson_string(error, b"id"));
                rest = after;
            }
            None => return "malformed answer: an error of the trace overruns it".into(),
        }
    }
    match ids.first() {
        Some(Some(id)) => format!("answered an error: {id} ({} in the trace)", ids.len()),
        _ => format!("answered an error ({} in the trace)", ids.len()),
    }
}

/// A `u32` length and that many bytes, and what follows; None when the length overruns.
fn split_dynamic(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// A `u32` length and that many bytes, which must end the message.
fn exact_dynamic<'a>(buf: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    match split_dynamic(buf) {
        Some((body, [])) => Ok(body),
        Some((_, extra)) => Err(format!("malformed answer: {} bytes after {what}", extra.len())),
        None => Err(format!("malformed answer: {what} overruns the frame")),
    }
}

/// The string field `name` of a BSON document, when it is short printable text: a log line's
/// worth of what went wrong (octez's error id), never trusted for anything else.
fn bson_string(doc: &[u8], name: &[u8]) -> Option<String> {
    // An element: type 0x02 (string), the name and a NUL, an i32 LE length counting the
    // string's NUL, the string, the NUL. A match inside another value is harmless: the text
    // is only logged.
    let mut key = vec![0x02];
    key.extend_from_slice(name);
    key.push(0);
    let at = doc.windows(key.len()).position(|w| w == key.as_slice())? + key.len();
    let (len, rest) = doc.get(at..)?.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_le_bytes(*len)).ok()?.checked_sub(1)?;
    let text = rest.get(..len)?;
    let printable = text.len() <= 128 && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    printable.then(|| String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
mod tests;
