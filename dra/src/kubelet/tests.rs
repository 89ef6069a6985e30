//! The registration socket answers kubelet's request, whose `:authority` is the socket path, and
//! the same request sent to a plain tonic socket is refused: the relay is what makes it work.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;
use crate::api::dra::{
    NodePrepareResourcesRequest, NodePrepareResourcesResponse, NodeUnprepareResourcesRequest,
    NodeUnprepareResourcesResponse,
};

struct Nothing;

#[tonic::async_trait]
impl DraPlugin for Nothing {
    async fn node_prepare_resources(
        &self,
        _: Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        Ok(Response::new(NodePrepareResourcesResponse::default()))
    }
    async fn node_unprepare_resources(
        &self,
        _: Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        Ok(Response::new(NodeUnprepareResourcesResponse::default()))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What grpc-go's passthrough dial sends for GetInfo on `socket`: the socket path as authority.
fn get_info_request(socket: &Path) -> Vec<u8> {
    let authority: String = socket.display().to_string().replace('/', "%2F");
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/pluginregistration.Registration/GetInfo"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    let block = loona_hpack::Encoder::new().encode(headers);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    out
}

/// Reads frames until stream 1 ends; its gRPC message body, or the RST_STREAM error code.
async fn answer(conn: &mut UnixStream) -> Result<Vec<u8>, u32> {
    let mut body = Vec::new();
    loop {
        let mut h = [0u8; 9];
        conn.read_exact(&mut h).await.expect("a frame");
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.expect("payload");
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        match (h[3], stream) {
            (0x3, 1) => {
                return Err(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            (0x0, 1) => body.extend_from_slice(&payload),
            (0x1, 1) if h[4] & 0x1 != 0 => return Ok(body),
            _ => {}
        }
    }
}

#[tokio::test]
async fn kubelet_s_registration_request_is_answered_through_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sockets = Sockets::under(dir.path());
    let registered = Arc::new(Notify::new());
    let server = tokio::spawn({
        let sockets = sockets.clone();
        async move { serve(&sockets, Arc::new(Nothing), registered).await }
    });
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = UnixStream::connect(&sockets.registration).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = conn.expect("registration socket");
    conn.write_all(&get_info_request(&sockets.registration))
        .await
        .expect("send");
    let body = answer(&mut conn).await.expect("GetInfo answered");
    let info: PluginInfo = prost::Message::decode(&body[5..]).expect("PluginInfo");
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, "spidernet.io");
    assert_eq!(info.endpoint, sockets.dra.display().to_string());
    assert_eq!(info.supported_versions, ["v1.DRAPlugin"]);
    for socket in [&sockets.dra, &sockets.registration] {
        let mode = std::fs::metadata(socket).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", socket.display());
    }

    // The DRA socket is plain tonic: h2 resets the same request (PROTOCOL_ERROR = 1).
    let mut direct = UnixStream::connect(&sockets.dra).await.expect("dra socket");
    direct
        .write_all(&get_info_request(&sockets.dra))
        .await
        .expect("send");
    assert_eq!(answer(&mut direct).await, Err(1));

    // Removing the socket (kubelet's directory wiped) ends serving so the caller serves anew;
    // a socket another process bound there (a successor) ends it too, told apart.
    std::fs::remove_file(&sockets.registration).expect("remove");
    let ended = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve ends");
    assert!(matches!(ended.expect("join"), Err(ServeError::Removed(p)) if p == sockets.registration));
    let again = tokio::spawn({
        let sockets = sockets.clone();
        async move { serve(&sockets, Arc::new(Nothing), Arc::new(Notify::new())).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _successor = listen(&sockets.dra).expect("a successor binds the path");
    let ended = tokio::time::timeout(Duration::from_secs(10), again)
        .await
        .expect("serve ends");
    assert!(matches!(ended.expect("join"), Err(ServeError::Replaced(p)) if p == sockets.dra));
}
