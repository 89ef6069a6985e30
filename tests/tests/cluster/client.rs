//! The binaries' Kubernetes client (`spiderpool_daemon::kube_client`) against the real API server.

use super::*;
use kube::client::Body;

async fn version_spoken(client: &kube::Client) -> http::Version {
    let req = http::Request::get("/version")
        .body(Body::empty())
        .expect("a GET without a body");
    let res = client.send(req).await.expect("GET /version");
    assert!(res.status().is_success(), "GET /version: {}", res.status());
    res.version()
}

/// The agent and controller speak HTTP/2 to the API server, so every request and watch of a
/// process shares one TLS connection, where kube's default client opens one per request in flight.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_binaries_speak_http2_to_the_api_server() {
    let config = spiderpool_e2e::cluster::config().await.unwrap();
    let ours = spiderpool_daemon::kube_client::client_for(config.clone()).unwrap();
    assert_eq!(version_spoken(&ours).await, http::Version::HTTP_2);
    // Why the binaries build their own: kube's default speaks HTTP/1.1 only.
    let default = kube::Client::try_from(config).unwrap();
    assert_eq!(version_spoken(&default).await, http::Version::HTTP_11);

    // Many requests at once over the one connection, each answered in full.
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ours);
    let reads = (0..64).map(|_| api.get("default"));
    for ns in futures::future::join_all(reads).await {
        assert_eq!(ns.unwrap().metadata.name.as_deref(), Some("default"));
    }
}
