//! Framing (octez `lib_base/unix/socket.ml`, `send`/`recv`): a big-endian `u16` length, then
//! the message.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::MAX_FRAME;

/// Why a frame could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame (the peer closed mid-message).
    #[error("connection closed inside a frame: {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame (or its length prefix) needed.
        expected: usize,
        /// Bytes received before the end.
        got: usize,
    },
    /// The length prefix announces more than the caller accepts; nothing was allocated.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLong {
        /// Announced (or given) length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(io::ErrorKind),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e.kind())
    }
}

/// Read one frame's message, accepting at most `max` bytes (capped at [`MAX_FRAME`]).
/// `Ok(None)` when the stream ends cleanly between frames (the peer is done).
///
/// Not cancel safe: dropping the future mid-frame loses the bytes read so far, so the
/// connection must be dropped with it (a timeout around this ends the connection).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 2];
    match read_full(r, &mut header).await? {
        0 => return Ok(None),
        2 => {}
        got => return Err(FrameError::Truncated { expected: 2, got }),
    }
    let len = usize::from(u16::from_be_bytes(header));
    let max = max.min(MAX_FRAME);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    // Bounded by `max` just above.
    let mut buf = vec![0u8; len];
    let got = read_full(r, &mut buf).await?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(buf))
}

/// Write one message as a frame (length and message in one write) and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, message: &[u8]) -> Result<(), FrameError> {
    let len = u16::try_from(message.len()).map_err(|_| FrameError::TooLong {
        len: message.len(),
        max: MAX_FRAME,
    })?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Fill `buf` unless the stream ends first; returns how many bytes were read, so a clean end
/// (0) can be told from a cut one.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match r.read(rest).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
