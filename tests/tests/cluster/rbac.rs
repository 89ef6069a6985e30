//! The agents' own-node admission policy against the real API server: two agents' tokens, each
//! bound to a pod on its node as kubelet projects them, and each allowed only its own node's
//! SpiderNodeInventory, SpiderEndpoints and SpiderIPClaims, and no pool at all.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::ResourceExt;
use kube::api::DeleteParams;
use spiderpool_api::crd::claim::{IPClaimSpec, SpiderIPClaim, claim_name};

use super::*;

/// A client that authenticates with `token` instead of the kubeconfig's credentials.
async fn client_with_token(token: &str) -> kube::Client {
    let mut config = spiderpool_e2e::cluster::config().await.expect("config");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    kube::Client::try_from(config).expect("client")
}

fn inventory(name: &str) -> SpiderNodeInventory {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNodeInventory",
        "metadata": {"name": name}, "spec": {"nodeName": name}
    }))
    .expect("inventory object")
}

fn slice(name: &str, node: &str, driver: &str) -> ResourceSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"driver": driver, "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": []}
    }))
    .expect("a ResourceSlice")
}

fn endpoint(ns: &str, name: &str, node: &str) -> SpiderEndpoint {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": ns}, "spec": {},
        "status": {"current": {"uid": "u", "node": node, "ips": []}}
    }))
    .expect("endpoint object")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "control-plane tier: needs hack/control-plane.sh up"]
async fn cluster_an_agent_token_writes_only_its_own_node_s_objects() {
    let cluster = Cluster::connect().await.unwrap();
    let u = unique();
    let ns = cluster.namespace("rbac", json!({})).await.unwrap();
    let sa = "agent";
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let pp = PostParams::default();

    // The agent's rights as the chart grants them (RBAC), and the policy on top.
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": format!("rbac-{u}")},
        "rules": [{"apiGroups": ["spiderpool.spidernet.io"],
                   "resources": ["spidernodeinventories", "spidernodeinventories/status", "spiderendpoints", "spideripclaims"],
                   "verbs": ["get", "list", "create", "update", "patch", "delete"]},
                  {"apiGroups": ["spiderpool.spidernet.io"],
                   "resources": ["spiderippools", "spiderippools/status"],
                   "verbs": ["get"]},
                  {"apiGroups": ["resource.k8s.io"],
                   "resources": ["resourceslices"],
                   "verbs": ["get", "list", "create", "update", "patch", "delete"]}]
    }))
    .unwrap();
    Api::<ClusterRole>::all(cluster.client.clone())
        .create(&pp, &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("rbac-{u}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("rbac-{u}")},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(cluster.client.clone())
        .create(&pp, &binding)
        .await
        .unwrap();
    let (policy, policy_binding) =
        spiderpool_api::crd::node_scope::agent_node_policy(&format!("own-node-{u}"), &user);
    Api::<ValidatingAdmissionPolicy>::all(cluster.client.clone())
        .create(&pp, &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(cluster.client.clone())
        .create(&pp, &policy_binding)
        .await
        .unwrap();

    // Two nodes, an agent pod on each, and the token kubelet would project into each.
    let service_accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &ns);
    service_accounts
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
        )
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let mut tokens = Vec::new();
    let node_names = [format!("rbac-a-{u}"), format!("rbac-b-{u}")];
    for node in &node_names {
        nodes
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": node}})).unwrap(),
            )
            .await
            .unwrap();
        let mut pod =
            spiderpool_e2e::cluster::pod_object(&format!("agent-{node}"), node, &json!({})).unwrap();
        if let Some(spec) = pod.spec.as_mut() {
            spec.service_account_name = Some(sa.into());
        }
        let pod = pods.create(&pp, &pod).await.unwrap();
        let request: TokenRequest = serde_json::from_value(json!({
            "spec": {"audiences": [], "expirationSeconds": 3600,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                        "name": pod.metadata.name, "uid": pod.metadata.uid}}
        }))
        .unwrap();
        let issued = service_accounts
            .create_token_request(sa, &pp, &request)
            .await
            .unwrap();
        tokens.push(issued.status.expect("a token").token);
    }
    let agent_a = client_with_token(&tokens[0]).await;
    let (node_a, node_b) = (&node_names[0], &node_names[1]);

    // The policy takes a moment to be in force: wait for the first refusal.
    let inventories_a: Api<SpiderNodeInventory> = Api::all(agent_a.clone());
    let admin_inventories: Api<SpiderNodeInventory> = Api::all(cluster.client.clone());
    let refused = eventually(Duration::from_secs(30), || async {
        match inventories_a.create(&pp, &inventory(node_b)).await {
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Some(s.message),
            // Not yet in force: take it back and try again.
            Ok(_) => {
                let _ = admin_inventories.delete(node_b, &DeleteParams::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await
    .expect("the agent of one node is refused another node's inventory");
    assert!(
        refused.contains("may write only its own SpiderNodeInventory"),
        "{refused}"
    );
    inventories_a
        .create(&pp, &inventory(node_a))
        .await
        .expect("its own node's inventory is allowed");

    // DRA ResourceSlices: only its own node's, and only of driver spidernet.io.
    let slices_a: Api<ResourceSlice> = Api::all(agent_a.clone());
    for (what, node, driver) in [
        ("another node's", node_b.as_str(), "spidernet.io"),
        ("another driver's", node_a.as_str(), "gpu.example.com"),
    ] {
        let err = slices_a
            .create(
                &pp,
                &slice(&format!("refused-{driver}-{u}").replace('.', "-"), node, driver),
            )
            .await
            .expect_err(&format!("the agent of {node_a} wrote {what} slice"));
        assert!(
            err.to_string()
                .contains("may write only ResourceSlices of driver spidernet.io for its own node"),
            "{what}: {err}"
        );
    }
    slices_a
        .create(&pp, &slice(&format!("own-{u}"), node_a, "spidernet.io"))
        .await
        .expect("its own node's slice is allowed");
    slices_a
        .delete(&format!("own-{u}"), &DeleteParams::default())
        .await
        .expect("and deleted");

    // SpiderEndpoints: only of pods on its node, created, replaced or deleted.
    let endpoints_a: Api<SpiderEndpoint> = Api::namespaced(agent_a.clone(), &ns);
    let err = endpoints_a
        .create(&pp, &endpoint(&ns, "elsewhere", node_b))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("SpiderEndpoints of pods on its node"),
        "{err}"
    );
    endpoints_a
        .create(&pp, &endpoint(&ns, "here", node_a))
        .await
        .expect("an endpoint on its node is allowed");
    let admin_endpoints: Api<SpiderEndpoint> = Api::namespaced(cluster.client.clone(), &ns);
    admin_endpoints
        .create(&pp, &endpoint(&ns, "theirs", node_b))
        .await
        .unwrap();
    assert!(
        endpoints_a
            .delete("theirs", &DeleteParams::default())
            .await
            .is_err(),
        "the agent of {node_a} deleted an endpoint of a pod on {node_b}"
    );
    endpoints_a
        .delete("here", &DeleteParams::default())
        .await
        .expect("its own endpoint goes");

    // SpiderIPClaims: created, changed and deleted only as its node's; another node's claim is
    // taken over only if it is a StatefulSet pod's, and a claim's pool and pod never change.
    let claims_a: Api<SpiderIPClaim> = Api::all(agent_a.clone());
    let admin_claims: Api<SpiderIPClaim> = Api::all(cluster.client.clone());
    let claim = |ip: &str, node: &str, sts: Option<&str>| {
        let holder = PoolIPAllocation {
            pod: format!("{ns}/web-0"),
            pod_uid: format!("uid-{ip}"),
            interface: Some("eth0".into()),
            node: None,
            owner_stateful_set: sts.map(str::to_string),
        };
        SpiderIPClaim::new(
            &claim_name(ip.parse().unwrap()),
            IPClaimSpec::of(&format!("rbac-{u}"), &holder, node),
        )
    };
    let forbidden = "may create, change and delete only SpiderIPClaims of its own node";
    let err = claims_a
        .create(&pp, &claim("10.252.9.1", node_b, None))
        .await
        .expect_err("a claim of another node");
    assert!(err.to_string().contains(forbidden), "{err}");
    let own = claims_a
        .create(&pp, &claim("10.252.9.1", node_a, None))
        .await
        .expect("a claim of its own node");
    let mut moved = own.clone();
    moved.spec.pod = format!("{ns}/other");
    let err = claims_a
        .replace(&moved.name_any(), &pp, &moved)
        .await
        .expect_err("a claim's pod changed");
    assert!(err.to_string().contains("pool and pod never change"), "{err}");
    claims_a
        .delete(&own.name_any(), &DeleteParams::default())
        .await
        .expect("its own claim goes");
    let theirs = admin_claims
        .create(&pp, &claim("10.252.9.2", node_b, None))
        .await
        .unwrap();
    let err = claims_a
        .delete(&theirs.name_any(), &DeleteParams::default())
        .await
        .expect_err("another node's claim deleted");
    assert!(err.to_string().contains(forbidden), "{err}");
    let mut taken = theirs.clone();
    taken.spec.node = node_a.to_string();
    let err = claims_a
        .replace(&taken.name_any(), &pp, &taken)
        .await
        .expect_err("a claim of a pod that is no StatefulSet's moved");
    assert!(
        err.to_string().contains("only a StatefulSet pod's claim moves"),
        "{err}"
    );
    let sts = admin_claims
        .create(&pp, &claim("10.252.9.3", node_b, Some("web")))
        .await
        .unwrap();
    let mut taken = sts.clone();
    taken.spec.node = node_a.to_string();
    taken.spec.pod_uid = "uid-new".into();
    claims_a
        .replace(&taken.name_any(), &pp, &taken)
        .await
        .expect("a StatefulSet pod's claim moves to the node its pod runs on now");
    let err = claims_a
        .delete(&taken.name_any(), &DeleteParams::default())
        .await
        .expect_err("a StatefulSet pod's claim deleted by an agent");
    assert!(
        err.to_string().contains("released by spiderpool-controller only"),
        "{err}"
    );
    for name in [theirs.name_any(), sts.name_any()] {
        admin_claims
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
    }

    // Pools: no agent writes one, nor its status (where agents before claims kept holders).
    let pool = format!("rbac-{u}");
    create_pool(
        &cluster,
        &pool,
        json!({"subnet": "10.252.0.0/24", "ips": ["10.252.0.10-10.252.0.20"]}),
    )
    .await
    .unwrap();
    let pools_a: Api<SpiderIPPool> = Api::all(agent_a.clone());
    pools_a
        .get_status(&pool)
        .await
        .expect("the agent reads a pool's status");
    let holder = json!({"10.252.0.10": {"pod": format!("{ns}/pa"), "podUid": "pa"}}).to_string();
    let err = pools_a
        .patch_status(
            &pool,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocatedIPsByNode": {node_a.as_str(): holder}}})),
        )
        .await
        .expect_err("the agent writes a pool's status");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "refused by RBAC: {err}"
    );

    // The other agent is held to its node the same way.
    let agent_b = client_with_token(&tokens[1]).await;
    let inventories_b: Api<SpiderNodeInventory> = Api::all(agent_b.clone());
    assert!(
        inventories_b
            .create(&pp, &inventory(&format!("{node_a}-x")))
            .await
            .is_err()
    );
    inventories_b
        .create(&pp, &inventory(node_b))
        .await
        .expect("agent b writes its own inventory");

    let dp = DeleteParams::default();
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(cluster.client.clone())
        .delete(&format!("own-node-{u}"), &dp)
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(cluster.client.clone())
        .delete(&format!("own-node-{u}"), &dp)
        .await;
    let _ = Api::<SpiderIPPool>::all(cluster.client.clone())
        .delete(&pool, &dp)
        .await;
    for node in &node_names {
        let _ = nodes.delete(node, &dp).await;
        let _ = Api::<SpiderNodeInventory>::all(cluster.client.clone())
            .delete(node, &dp)
            .await;
    }
}
