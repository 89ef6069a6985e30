//! kubelet's plugin watcher dials a registration socket with grpc-go's default (passthrough)
//! resolver, so its requests carry the socket path, %-escaped, as the HTTP/2 `:authority`
//! (`%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2F…`). h2, under tonic, refuses such a request
//! with PROTOCOL_ERROR, and hyper's maintainers keep it that way. On a unix socket the authority
//! means nothing, so a relay in front of the tonic server copies each connection both ways and
//! rewrites every request header block the client sends with `:authority: localhost`. Nothing
//! else in the stream changes.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a server may have: rewritten blocks keep to it.
const MAX_FRAME: usize = 16_384;
/// The largest frame this relay reads (h2's own limit on what it accepts is lower).
const MAX_READ_FRAME: usize = 1 << 24;
pub const AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("not an HTTP/2 connection preface")]
    Preface,
    #[error("frame {0:#x} on stream {1} where a CONTINUATION was due")]
    Interleaved(u8, u32),
    #[error("malformed HEADERS frame on stream {0}")]
    Malformed(u32),
    #[error("HPACK: {0}")]
    Hpack(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The client-to-server half: frames in, frames out, header blocks rewritten.
pub struct Rewriter {
    decoder: loona_hpack::Decoder<'static>,
    /// A header block waiting for its CONTINUATIONs: its stream, END_STREAM, the fragments.
    pending: Option<(u32, bool, Vec<u8>)>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            decoder: loona_hpack::Decoder::new(),
            pending: None,
        }
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let s = stream.to_be_bytes();
    [len[1], len[2], len[3], kind, flags, s[0], s[1], s[2], s[3]]
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Every header as a literal without indexing (new name), so the server's decoder table is never
/// touched and the client's table stays the relay's business.
fn encode(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0);
        integer(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        integer(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

impl Rewriter {
    /// One frame from the client; the bytes to send to the server in its place (nothing while a
    /// header block is incomplete).
    pub fn frame(&mut self, header: [u8; 9], payload: Vec<u8>) -> Result<Vec<u8>, RelayError> {
        let kind = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if let Some((pending, _, _)) = &self.pending
            && (kind != CONTINUATION || *pending != stream)
        {
            return Err(RelayError::Interleaved(kind, stream));
        }
        match kind {
            HEADERS => {
                let mut body = payload.as_slice();
                if flags & PADDED != 0 {
                    let (&pad, rest) = body.split_first().ok_or(RelayError::Malformed(stream))?;
                    body = rest
                        .get(
                            ..rest
                                .len()
                                .checked_sub(usize::from(pad))
                                .ok_or(RelayError::Malformed(stream))?,
                        )
                        .ok_or(RelayError::Malformed(stream))?;
                }
                if flags & PRIORITY != 0 {
                    body = body.get(5..).ok_or(RelayError::Malformed(stream))?;
                }
                self.pending = Some((stream, flags & END_STREAM != 0, body.to_vec()));
            }
            CONTINUATION => match &mut self.pending {
                Some((_, _, block)) => block.extend_from_slice(&payload),
                None => return Err(RelayError::Interleaved(kind, stream)),
            },
            _ => {
                let mut out = header.to_vec();
                out.extend_from_slice(&payload);
                return Ok(out);
            }
        }
        if flags & END_HEADERS == 0 {
            return Ok(Vec::new());
        }
        let Some((stream, end_stream, block)) = self.pending.take() else {
            return Ok(Vec::new());
        };
        let mut headers = self
            .decoder
            .decode(&block)
            .map_err(|e| RelayError::Hpack(e.to_string()))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                *value = AUTHORITY.to_vec();
            }
        }
        let block = encode(&headers);
        let mut out = Vec::with_capacity(block.len() + 18);
        let chunks: Vec<&[u8]> = if block.is_empty() {
            vec![&[]]
        } else {
            block.chunks(MAX_FRAME).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut f = if i == last { END_HEADERS } else { 0 };
            let kind = if i == 0 {
                if end_stream {
                    f |= END_STREAM;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            out.extend_from_slice(&frame_header(chunk.len(), kind, f, stream));
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }
}

/// Copies `client` to `server` (the preface, then frame by frame through a [`Rewriter`]) and
/// `server` back to `client` as it is, until either side closes.
pub async fn relay<C, S>(client: C, server: S) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    let upstream = async {
        let mut preface = [0u8; PREFACE.len()];
        client_r.read_exact(&mut preface).await?;
        if preface != PREFACE {
            return Err(RelayError::Preface);
        }
        server_w.write_all(&preface).await?;
        let mut rewriter = Rewriter::default();
        loop {
            let mut header = [0u8; 9];
            match client_r.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
            let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if len > MAX_READ_FRAME {
                return Err(RelayError::Malformed(0));
            }
            let mut payload = vec![0u8; len];
            client_r.read_exact(&mut payload).await?;
            let out = rewriter.frame(header, payload)?;
            if !out.is_empty() {
                server_w.write_all(&out).await?;
            }
        }
        server_w.shutdown().await?;
        Ok::<(), RelayError>(())
    };
    let downstream = async {
        tokio::io::copy(&mut server_r, &mut client_w).await?;
        client_w.shutdown().await?;
        Ok::<(), RelayError>(())
    };
    // The client closing its half still lets the answers out; an error either way, or the
    // server closing, ends the connection.
    tokio::pin!(upstream, downstream);
    tokio::select! {
        r = &mut upstream => {
            r?;
            downstream.await
        }
        r = &mut downstream => r,
    }
}

#[cfg(test)]
mod tests;
