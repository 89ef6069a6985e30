//! The Kubernetes client of the long-running binaries: kube's own layers (base URI, auth with
//! token refresh, extra headers, retry of 429/503) over HTTP/2 when the API server offers it, as
//! client-go does. kube's default client speaks HTTP/1.1 only, so a burst opens one TLS
//! connection per request in flight (about 36 per agent in a 200-pod burst over 10 nodes), and
//! each costs the API server a handshake: an RSA signature with kubeadm's default keys. One HTTP/2
//! connection carries every request and watch of a process.

use std::time::Duration;

use anyhow::Context as _;
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use kube::client::{ConfigExt as _, retry::RetryPolicy};
use tower::{BoxError, ServiceBuilder, retry::RetryLayer};

/// How often an idle HTTP/2 connection is pinged, and how long a ping may wait for its answer
/// before the connection is dropped (client-go: 30 s and 15 s), so a dead API server is noticed
/// by watches that would otherwise wait on a connection that is gone.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A client from the in-cluster service account or the kubeconfig (`kube::Config::infer`).
pub async fn kube_client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("Kubernetes client configuration")?;
    client_for(config)
}

/// A client for `config`, HTTP/2 when the server's ALPN offers it, HTTP/1.1 otherwise. A proxy
/// (the kubeconfig's `proxy-url`) is refused, as kube's own client built without its
/// `http-proxy` feature refuses it, rather than bypassed.
pub fn client_for(config: kube::Config) -> anyhow::Result<kube::Client> {
    if let Some(proxy) = &config.proxy_url {
        anyhow::bail!(
            "the Kubernetes client configuration names a proxy ({proxy}): not supported, connect to the API server directly"
        );
    }
    let tls = config.rustls_client_config().context("TLS configuration")?;
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(config.connect_timeout);
    tcp.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            name.clone()
                .try_into()
                .with_context(|| format!("TLS server name {name}"))?,
        )),
        None => builder,
    };
    let https = builder.enable_all_versions().wrap_connector(tcp);
    let http = HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer().context("authentication")?)
        .layer(config.extra_headers_layer().context("extra headers")?)
        .map_err(BoxError::from)
        .service(http);
    Ok(kube::client::ClientBuilder::new(service, config.default_namespace).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> kube::Config {
        kube::Config::new("https://127.0.0.1:6443".parse().expect("a URL"))
    }

    #[tokio::test]
    async fn a_direct_configuration_gives_a_client_and_a_proxy_is_refused_by_name() {
        assert!(client_for(config()).is_ok());
        let mut proxied = config();
        proxied.proxy_url = Some("http://proxy.example:3128".parse().expect("a URL"));
        let err = client_for(proxied).err().expect("refused").to_string();
        assert!(err.contains("proxy.example:3128"), "{err}");
    }
}
