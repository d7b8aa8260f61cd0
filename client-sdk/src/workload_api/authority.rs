//! Clients built on grpc-core (Python, C++, Java, Ruby) send the percent-encoded socket path as
//! `:authority` when they dial `unix:/path` (e.g. `%2Frun%2Fmintgate%2Fagent.sock`). The `http`
//! crate under h2 refuses a `%` outside an authority's userinfo, so h2 resets every such stream
//! (PROTOCOL_ERROR) before tonic sees it. Nothing on a Unix socket depends on the authority, so
//! the client's bytes pass through [`relay`] on their way to h2: each header block (HEADERS and
//! its CONTINUATIONs) is decoded with the client's HPACK state and re-encoded as literals (no
//! indexing, so h2's decoder state never depends on ours), with an authority h2 cannot parse
//! replaced by `localhost`. Every other frame passes unchanged; the server's bytes are not
//! touched. The connection's peer credentials stay those of the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream, ReadBuf,
};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's default, which h2 keeps: the largest frame a client may send us
/// and the largest we send h2.
const MAX_FRAME: usize = 16_384;
/// The largest header block accepted from a client, encoded or decoded (gRPC headers are a few
/// hundred bytes): a small block of indexed fields cannot expand into gigabytes.
const MAX_BLOCK: usize = 64 * 1024;
/// SETTINGS_HEADER_TABLE_SIZE's default, which h2 advertises: the client's table may not grow
/// past it.
const TABLE_SIZE: usize = 4096;
/// What replaces an authority h2 would refuse.
const AUTHORITY: &[u8] = b"localhost";

/// A Unix socket connection as h2 sees it: the client's bytes relayed through [`relay`].
pub(super) struct Relayed {
    io: DuplexStream,
    info: UdsConnectInfo,
}

impl Relayed {
    /// Starts relaying `stream`; the relay ends when either side closes.
    pub(super) fn new(stream: UnixStream) -> Self {
        let info = stream.connect_info();
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (mut from_client, mut to_client) = stream.into_split();
        let (mut from_h2, mut to_h2) = tokio::io::split(theirs);
        tokio::spawn(async move {
            let inbound = relay(&mut from_client, &mut to_h2);
            let outbound = tokio::io::copy(&mut from_h2, &mut to_client);
            // Either direction ending ends the connection.
            tokio::select! {
                result = inbound => if let Err(e) = result { tracing::debug!(error = %e, "Workload API connection ended") },
                _ = outbound => {}
            }
        });
        Self { io: ours, info }
    }
}

impl Connected for Relayed {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Relayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Relayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A header block being collected: its stream, the flags and priority fields of its HEADERS
/// frame, and the fragments so far.
struct Block {
    stream: [u8; 4],
    flags: u8,
    priority: Vec<u8>,
    fragment: Vec<u8>,
}

/// Copies an HTTP/2 client's bytes from `from` to `to`, rewriting header blocks (see the module
/// documentation). Returns at the client's end of stream.
pub(super) async fn relay(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> io::Result<()> {
    let mut preface = [0u8; PREFACE_LEN];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    let mut block: Option<Block> = None;
    loop {
        let mut header = [0u8; 9];
        match from.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        if len > MAX_FRAME {
            return Err(invalid("frame larger than SETTINGS_MAX_FRAME_SIZE"));
        }
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        let stream = [header[5], header[6], header[7], header[8]];
        match kind {
            HEADERS => {
                let mut body = payload.as_slice();
                if flags & PADDED != 0 {
                    let (&pad, rest) = body.split_first().ok_or_else(|| invalid("padding"))?;
                    body = rest
                        .get(..rest.len().saturating_sub(usize::from(pad)))
                        .filter(|_| usize::from(pad) <= rest.len())
                        .ok_or_else(|| invalid("padding"))?;
                }
                let mut priority = Vec::new();
                if flags & PRIORITY != 0 {
                    let (fields, rest) = body
                        .split_at_checked(5)
                        .ok_or_else(|| invalid("priority"))?;
                    priority = fields.to_vec();
                    body = rest;
                }
                block = Some(Block {
                    stream,
                    flags: flags & (END_STREAM | PRIORITY),
                    priority,
                    fragment: body.to_vec(),
                });
            }
            CONTINUATION => {
                let open = block.as_mut().filter(|b| b.stream == stream);
                let open = open.ok_or_else(|| invalid("CONTINUATION without HEADERS"))?;
                if open.fragment.len() + payload.len() > MAX_BLOCK {
                    return Err(invalid("header block too large"));
                }
                open.fragment.extend_from_slice(&payload);
            }
            _ => {
                to.write_all(&header).await?;
                to.write_all(&payload).await?;
                continue;
            }
        }
        if flags & END_HEADERS != 0
            && let Some(done) = block.take()
        {
            let (mut headers, mut size) = (Vec::new(), 0usize);
            decoder
                .decode_with_cb(&done.fragment, |name, value| {
                    // RFC 7541 §4.1's size of an entry; past the limit nothing more is kept.
                    size += name.len() + value.len() + 32;
                    if size <= MAX_BLOCK {
                        headers.push((name.into_owned(), value.into_owned()));
                    }
                })
                .map_err(|e| invalid(&format!("HPACK: {e:?}")))?;
            if size > MAX_BLOCK {
                return Err(invalid("header list too large"));
            }
            to.write_all(&reencode(&done, &headers)).await?;
        }
    }
}

/// The header block as HEADERS + CONTINUATION frames of literals, the authority mended.
fn reencode(block: &Block, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut encoded = block.priority.clone();
    for (name, value) in headers {
        let value = if name == b":authority" && value.contains(&b'%') {
            AUTHORITY
        } else {
            value.as_slice()
        };
        // Literal header field without indexing, new name (RFC 7541 §6.2.2).
        encoded.push(0);
        string(name, &mut encoded);
        string(value, &mut encoded);
    }
    let mut out = Vec::with_capacity(encoded.len() + 9);
    let chunks: Vec<&[u8]> = encoded.chunks(MAX_FRAME).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (HEADERS, block.flags)
        } else {
            (CONTINUATION, 0)
        };
        if i == last {
            flags |= END_HEADERS;
        }
        let len = chunk.len().to_be_bytes();
        out.extend_from_slice(&len[len.len() - 3..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&block.stream);
        out.extend_from_slice(chunk);
    }
    out
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(bytes: &[u8], out: &mut Vec<u8>) {
    integer(bytes.len(), 7, 0, out);
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `n`-bit prefix after the bits in `first` (RFC 7541 §5.1).
fn integer(mut value: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut out = len[len.len() - 3..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Splits `bytes` into frames: (kind, flags, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            out.push((bytes[3], bytes[4], bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_percent_encoded_authority_becomes_localhost_and_nothing_else_changes() {
        let mut client = loona_hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"%2Frun%2Fmintgate%2Fagent.sock"),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = client.encode(first.clone());
        // The second request's block refers to the client's dynamic table; split across a
        // HEADERS and a CONTINUATION frame.
        let second = client.encode(first.clone());
        let (head, tail) = second.split_at(second.len() / 2);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(HEADERS, END_STREAM, 3, head));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, tail));
        let mut out = Vec::new();
        relay(&mut input.as_slice(), &mut out).await.unwrap();

        assert_eq!(&out[..PREFACE_LEN], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let got = frames(&out[PREFACE_LEN..]);
        assert_eq!(got.len(), 3);
        let mut server = loona_hpack::Decoder::new();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = first
            .iter()
            .map(|(n, v)| {
                let v: &[u8] = if *n == b":authority" { b"localhost" } else { v };
                (n.to_vec(), v.to_vec())
            })
            .collect();
        assert_eq!((got[0].0, got[0].1), (HEADERS, END_HEADERS));
        assert_eq!(server.decode(&got[0].2).unwrap(), expected);
        assert_eq!(
            (got[1].0, got[1].1, got[1].2.as_slice()),
            (0x0, END_STREAM, &b"\0\0\0\0\0"[..])
        );
        assert_eq!((got[2].0, got[2].1), (HEADERS, END_HEADERS | END_STREAM));
        assert_eq!(server.decode(&got[2].2).unwrap(), expected);
    }

    #[tokio::test]
    async fn a_continuation_without_headers_ends_the_connection() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"\x82"));
        let err = relay(&mut input.as_slice(), &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
