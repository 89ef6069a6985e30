//! A scripted Kubernetes API server for unit tests of the IPAM service's API calls (the
//! kube-rs `controller-rs` fixtures idea): every request is recorded, and answered by the next
//! scripted response whose method and path it matches. A request the script does not expect is
//! answered 500, so a wrong call shows as a failed assertion on the record, not as a hang.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use serde_json::Value;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Option<Value>,
}

impl Seen {
    /// `"METHOD path"`, for comparing the order of calls.
    pub fn call(&self) -> String {
        let path = self.uri.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

struct Reply {
    method: &'static str,
    path: String,
    status: u16,
    body: Value,
    /// How long the server takes to answer.
    delay: std::time::Duration,
}

#[derive(Clone, Default)]
pub struct MockApi {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl MockApi {
    pub fn new() -> MockApi {
        MockApi::default()
    }

    /// Answers the next `method path` (path without query) with `status` and `body`.
    pub fn reply(&self, method: &'static str, path: &str, status: u16, body: Value) -> &MockApi {
        self.reply_after(method, path, status, body, std::time::Duration::ZERO)
    }

    /// As [`MockApi::reply`], the answer sent `delay` after the request came.
    pub fn reply_after(
        &self,
        method: &'static str,
        path: &str,
        status: u16,
        body: Value,
        delay: std::time::Duration,
    ) -> &MockApi {
        self.script.lock().unwrap().push_back(Reply {
            method,
            path: path.to_string(),
            status,
            body,
            delay,
        });
        self
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.seen().iter().map(Seen::call).collect()
    }

    /// Scripted replies no request has used.
    pub fn unused(&self) -> usize {
        self.script.lock().unwrap().len()
    }

    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let seen = Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    body: serde_json::from_slice(&bytes).ok(),
                };
                let path = parts.uri.path().to_string();
                let reply = {
                    let mut script = me.script.lock().unwrap();
                    let at = script
                        .iter()
                        .position(|r| r.method == parts.method.as_str() && r.path == path);
                    at.and_then(|i| script.remove(i))
                };
                me.seen.lock().unwrap().push(seen);
                let (status, body) = match reply {
                    Some(r) => {
                        tokio::time::sleep(r.delay).await;
                        (r.status, r.body)
                    }
                    None => (500, status_body(500, "unexpected request")),
                };
                let response = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&body).unwrap_or_default(),
                    ))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }
}

/// A `metav1.Status` body, as the API server sends with an error code.
pub fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}
