//! What RBAC cannot say: an agent may write its own node's objects only. RBAC grants a verb on a
//! resource to every agent alike; this ValidatingAdmissionPolicy compares each write with the node
//! the writer's token is bound to. Kubelet projects into every pod a service-account token bound
//! to the pod and its node, and the API server hands the node's name to admission as the user's
//! extra `authentication.kubernetes.io/node-name` (Kubernetes 1.32 and later; beta and on by
//! default since 1.30). So a compromised agent, or a pod that stole its token, cannot rewrite another
//! node's inventory, take the SpiderEndpoints of pods elsewhere, or release or rewrite the
//! SpiderIPClaims of pods on other nodes. (Agents do not write pools at all: RBAC grants them no
//! write of a pool or its status.)

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::admission::{deny_binding, our_resources};

/// The DRA driver whose ResourceSlices the agents publish (`spiderpool_dra::slices::DRIVER`).
pub const DRA_DRIVER: &str = "spidernet.io";

/// The rules of `ours`, and ResourceSlices (`resource.k8s.io`), which the agents write for DRA.
fn with_resource_slices(mut ours: MatchResources) -> MatchResources {
    ours.resource_rules
        .get_or_insert_with(Vec::new)
        .push(NamedRuleWithOperations {
            api_groups: Some(vec!["resource.k8s.io".into()]),
            api_versions: Some(vec!["*".into()]),
            operations: Some(["CREATE", "UPDATE", "DELETE"].map(String::from).to_vec()),
            resources: Some(vec!["resourceslices".into()]),
            ..NamedRuleWithOperations::default()
        });
    ours
}

/// The user extra that carries the node a service-account token is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The policy for the agents authenticating as `agent_user` (`system:serviceaccount:NS:NAME`),
/// named `name`, and its binding.
pub fn agent_node_policy(
    name: &str,
    agent_user: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let policy = ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(with_resource_slices(our_resources(
                "*",
                &["CREATE", "UPDATE", "DELETE"],
                &[
                    "spidernodeinventories",
                    "spidernodeinventories/status",
                    "spiderendpoints",
                    "spideripclaims",
                ],
            ))),
            match_conditions: Some(vec![MatchCondition {
                name: "spiderpool-agent".into(),
                expression: format!("request.userInfo.username == '{agent_user}'"),
            }]),
            variables: Some(vec![
                Variable {
                    name: "node".into(),
                    expression: format!(
                        "has(request.userInfo.extra) && '{NODE_NAME_EXTRA}' in request.userInfo.extra \
                         && size(request.userInfo.extra['{NODE_NAME_EXTRA}']) > 0 \
                         ? request.userInfo.extra['{NODE_NAME_EXTRA}'][0] : ''"
                    ),
                },
                Variable {
                    name: "target".into(),
                    expression: "request.operation == 'DELETE' ? oldObject : object".into(),
                },
            ]),
            validations: Some(vec![
                Validation {
                    expression: "variables.node != ''".into(),
                    message: Some(
                        "spiderpool-agent's token is bound to no node: use the token kubelet projects into the agent's pod"
                            .into(),
                    ),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
                Validation {
                    expression: "request.resource.resource != 'spidernodeinventories' || \
                                 variables.target.metadata.name == variables.node"
                        .into(),
                    message_expression: Some(
                        "'the agent of node ' + variables.node + ' may write only its own SpiderNodeInventory, not ' + variables.target.metadata.name"
                            .into(),
                    ),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
                Validation {
                    expression: "request.resource.resource != 'spiderendpoints' || \
                                 (has(variables.target.status) && has(variables.target.status.current) && \
                                  variables.target.status.current.node == variables.node)"
                        .into(),
                    message_expression: Some(
                        "'the agent of node ' + variables.node + ' may write only SpiderEndpoints of pods on its node'".into(),
                    ),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
                Validation {
                    expression: format!(
                        "request.resource.resource != 'resourceslices' || \
                         (variables.target.spec.driver == '{DRA_DRIVER}' && \
                          variables.target.spec.?nodeName.orValue('') == variables.node)"
                    ),
                    message_expression: Some(format!(
                        "'the agent of node ' + variables.node + ' may write only ResourceSlices of driver {DRA_DRIVER} for its own node'"
                    )),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
                // A claim's node must be the writer's (for a delete: the claim's as it was); a
                // claim moves to another node only if it is a StatefulSet pod's (the CRD's rule),
                // and no agent deletes one of those: the controller releases them once the
                // StatefulSet no longer wants the pod, so an agent that took one over by its
                // name cannot free an address a live pod uses.
                Validation {
                    expression: "request.resource.resource != 'spideripclaims' || \
                                 variables.target.spec.node == variables.node"
                        .into(),
                    message_expression: Some(
                        "'the agent of node ' + variables.node + ' may create, change and delete only SpiderIPClaims of its own node, not of ' + variables.target.spec.node".into(),
                    ),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
                Validation {
                    expression: "request.resource.resource != 'spideripclaims' || \
                                 request.operation != 'DELETE' || \
                                 !has(oldObject.spec.ownerStatefulSet)"
                        .into(),
                    message: Some(
                        "a StatefulSet pod's SpiderIPClaim is released by spiderpool-controller only".into(),
                    ),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    };
    (policy, deny_binding(name))
}

/// The chart's template: the policy for the release's agent service account, named after the
/// release (Helm fills the placeholders).
pub fn chart_template() -> Result<String, serde_yaml_ng::Error> {
    let (policy, binding) = agent_node_policy(
        "{{ .Release.Name }}-agent-own-node",
        // `spiderpool.agentName`, spelled out: a quoted include would be escaped in the YAML.
        "system:serviceaccount:{{ .Release.Namespace }}:{{ .Release.Name }}-agent",
    );
    Ok(format!(
        "# Generated by `cargo run -p spiderpool-api --bin crdgen`; do not edit.\n{}---\n{}",
        serde_yaml_ng::to_string(&policy)?,
        serde_yaml_ng::to_string(&binding)?
    ))
}
