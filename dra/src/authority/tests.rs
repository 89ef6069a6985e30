use super::*;

const PATH_AUTHORITY: &[u8] = b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fspidernet.io-reg.sock";

fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/pluginregistration.Registration/GetInfo"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_vec(), v.to_vec()))
    .collect()
}

fn header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    frame_header(len, kind, flags, stream)
}

/// Splits `out` into frames: (kind, flags, stream, payload).
fn frames(mut out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut list = Vec::new();
    while !out.is_empty() {
        let len = usize::from(out[0]) << 16 | usize::from(out[1]) << 8 | usize::from(out[2]);
        let stream = u32::from_be_bytes([out[5], out[6], out[7], out[8]]);
        list.push((out[3], out[4], stream, out[9..9 + len].to_vec()));
        out = &out[9 + len..];
    }
    list
}

#[test]
fn the_authority_is_rewritten_across_padding_priority_and_continuations() {
    let mut encoder = loona_hpack::Encoder::new();
    let block = encoder.encode(
        request(PATH_AUTHORITY)
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice())),
    );
    let (a, b) = block.split_at(10);
    // HEADERS with 3 bytes of padding and a priority, then a CONTINUATION.
    let mut first = vec![3u8];
    first.extend_from_slice(&[0, 0, 0, 1, 16]);
    first.extend_from_slice(a);
    first.extend_from_slice(&[0, 0, 0]);
    let mut rewriter = Rewriter::default();
    let held = rewriter
        .frame(
            header(first.len(), HEADERS, PADDED | PRIORITY | END_STREAM, 1),
            first,
        )
        .expect("first");
    assert!(held.is_empty(), "nothing goes out before END_HEADERS");
    let out = rewriter
        .frame(header(b.len(), CONTINUATION, END_HEADERS, 1), b.to_vec())
        .expect("continuation");
    let list = frames(&out);
    assert_eq!(list.len(), 1);
    let (kind, flags, stream, payload) = &list[0];
    assert_eq!((*kind, *flags, *stream), (HEADERS, END_HEADERS | END_STREAM, 1));
    let decoded = loona_hpack::Decoder::new().decode(payload).expect("decodes");
    assert_eq!(decoded, request(AUTHORITY));
}

#[test]
fn the_client_header_table_carries_over_between_blocks() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut rewriter = Rewriter::default();
    for stream in [1u32, 3, 5] {
        // The encoder indexes on the first request, so later blocks are mostly table references.
        let block = encoder.encode(
            request(PATH_AUTHORITY)
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        let out = rewriter
            .frame(header(block.len(), HEADERS, END_HEADERS, stream), block)
            .expect("rewritten");
        let list = frames(&out);
        assert_eq!(list[0].2, stream);
        let decoded = loona_hpack::Decoder::new().decode(&list[0].3).expect("decodes");
        assert_eq!(decoded, request(AUTHORITY), "stream {stream}");
    }
}

#[test]
fn other_frames_pass_unchanged_and_interleaving_is_refused() {
    let mut rewriter = Rewriter::default();
    let data = b"\0\0\0\0\x05hello".to_vec();
    let h = header(data.len(), 0x0, END_STREAM, 1);
    let out = rewriter.frame(h, data.clone()).expect("data");
    assert_eq!(&out[..9], &h);
    assert_eq!(&out[9..], &data[..]);
    let block =
        loona_hpack::Encoder::new().encode(request(b"x").iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    rewriter
        .frame(header(block.len(), HEADERS, 0, 3), block)
        .expect("held");
    let err = rewriter.frame(header(0, 0x0, 0, 3), Vec::new());
    assert!(matches!(err, Err(RelayError::Interleaved(0, 3))), "{err:?}");
    let mut fresh = Rewriter::default();
    let bad = fresh.frame(header(1, HEADERS, PADDED | END_HEADERS, 1), vec![9]);
    assert!(matches!(bad, Err(RelayError::Malformed(1))), "{bad:?}");
}

#[test]
fn long_header_blocks_are_cut_into_frames_the_server_accepts() {
    let mut headers = request(PATH_AUTHORITY);
    headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let block = loona_hpack::Encoder::new().encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let out = Rewriter::default()
        .frame(header(block.len(), HEADERS, END_HEADERS, 7), block)
        .expect("rewritten");
    let list = frames(&out);
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|f| f.3.len() <= MAX_FRAME));
    assert_eq!(
        (list[0].0, list[1].0, list[2].0),
        (HEADERS, CONTINUATION, CONTINUATION)
    );
    assert_eq!(list[2].1, END_HEADERS);
    let joined: Vec<u8> = list.iter().flat_map(|f| f.3.clone()).collect();
    let decoded = loona_hpack::Decoder::new().decode(&joined).expect("decodes");
    assert_eq!(decoded[3].1, AUTHORITY);
    assert_eq!(decoded[6].1.len(), 40_000);
}
