//! A minimal HTTP/1.1 responder for `/healthz`, `/readyz` and `/metrics`: one GET per connection,
//! the answer chosen by the path alone. Enough for kubelet's probes and a Prometheus scrape,
//! without an HTTP stack in processes that serve nothing else over TCP.
//!
//! Hardened because the agent's port is on the host network, where any pod may connect: at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed as soon as they are accepted, so idle
//! clients cannot hold the process's file descriptors), each has [`IO_TIMEOUT`] to send its
//! request and take the answer, and an accept error (out of file descriptors) pauses the loop
//! instead of spinning it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send its request, and then to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What one path answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status line text, e.g. `200 OK`.
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }

    pub fn not_found() -> Response {
        Response::text("404 Not Found", "not found\n")
    }
}

/// Binds `addr` with SO_REUSEPORT: during a rolling update the new agent starts beside the old
/// one on the host network (a DaemonSet surge) and both must listen.
pub fn bind_shared(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Answers every connection on `listener` with `route(path)`.
pub async fn serve<R>(listener: TcpListener, route: R)
where
    R: Fn(&str) -> Response + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: retrying at once would spin a core.
                tracing::warn!("health endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let r = route(path);
            let response = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                r.status,
                r.content_type,
                r.body.len(),
                r.body
            );
            let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(response.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_by_path_and_closes() {
        let listener = bind_shared("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |path| match path {
            "/healthz" => Response::text("200 OK", "ok\n"),
            _ => Response::not_found(),
        }));
        for (path, want) in [("/healthz", "200 OK"), ("/nope", "404 Not Found")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}\r\n")), "{out}");
        }
    }

    /// Idle clients far beyond the cap neither keep the endpoint from answering once their time
    /// is up nor hold more than the cap of the server's descriptors.
    #[tokio::test]
    async fn idle_connections_are_capped_and_cut_after_the_timeout() {
        let listener = bind_shared("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |_| Response::text("200 OK", "ok\n")));
        let mut idle = Vec::new();
        for _ in 0..(MAX_CONNECTIONS * 3) {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Those past the cap were closed at once: reading gives EOF without waiting.
        let mut closed = 0;
        for s in &mut idle[MAX_CONNECTIONS + 8..] {
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await;
            if matches!(r, Ok(Ok(0)) | Ok(Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(closed, MAX_CONNECTIONS * 2 - 8);
        // After the timeout the served ones are cut too, and a real probe is answered.
        tokio::time::sleep(IO_TIMEOUT + Duration::from_millis(300)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    }

    #[test]
    fn a_second_listener_binds_the_same_port() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = bind_shared("127.0.0.1:0").unwrap();
            let addr = first.local_addr().unwrap().to_string();
            assert!(
                bind_shared(&addr).is_ok(),
                "SO_REUSEPORT lets a successor bind {addr}"
            );
            assert!(bind_shared("not an address").is_err());
        });
    }
}
