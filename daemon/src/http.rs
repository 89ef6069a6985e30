//! A minimal HTTP/1.1 responder for `/healthz`, `/readyz` and `/metrics`: one GET per connection,
//! the answer chosen by the path alone. Enough for kubelet's probes and a Prometheus scrape,
//! without an HTTP stack in processes that serve nothing else over TCP.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = stream.read(&mut buf).await.unwrap_or(0);
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
            let _ = stream.write_all(response.as_bytes()).await;
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
