//! What the CRD schema cannot say: CEL in a CRD has no variables, so a pairwise check of IPv6
//! ranges (each address expanded to fixed-width hex before comparing) is far over the schema's
//! cost budget. A ValidatingAdmissionPolicy has variables: the expansion runs once per entry and
//! the pairwise part compares short strings. The API server itself enforces it (no webhook);
//! `crdgen` writes it into the chart's templates.

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::validation::{range_bounds, v6_hex};

pub const POLICY_NAME: &str = "spiderpool-ipv6-ranges";

pub fn ipv6_ranges_policy() -> ValidatingAdmissionPolicy {
    let (first, last) = range_bounds("e");
    let spec = "object.spec";
    let is_v6_pool = format!(
        "has({spec}.ips) && isCIDR({spec}.subnet) && cidr({spec}.subnet).ip().family() == 6 && \
         {spec}.ips.all(r, r.split('-').size() <= 2 && r.split('-').all(p, isIP(p) && ip(p).family() == 6 && !p.contains('.')))"
    );
    let ranges = format!(
        "variables.ipv6 ? {spec}.ips.map(e, [{}, {}]) : []",
        v6_hex(&first),
        v6_hex(&last)
    );
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(POLICY_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            // Not the status subresource: allocations never change the ranges.
            match_constraints: Some(our_resources(
                super::VERSION,
                &["CREATE", "UPDATE"],
                &["spiderippools", "spidersubnets"],
            )),
            variables: Some(vec![
                Variable {
                    name: "ipv6".into(),
                    expression: is_v6_pool,
                },
                Variable {
                    name: "ranges".into(),
                    expression: ranges,
                },
            ]),
            validations: Some(vec![
                Validation {
                    expression: "variables.ranges.all(a, a[0] <= a[1])".into(),
                    message: Some("IPv6 ranges must be written low-high".into()),
                    reason: Some("Invalid".into()),
                    ..Validation::default()
                },
                Validation {
                    expression: "variables.ranges.all(a, variables.ranges.filter(b, !(a[0] > b[1] || b[0] > a[1])).size() == 1)"
                        .into(),
                    message: Some("ips entries overlap".into()),
                    reason: Some("Invalid".into()),
                    ..Validation::default()
                },
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

pub fn ipv6_ranges_binding() -> ValidatingAdmissionPolicyBinding {
    deny_binding(POLICY_NAME)
}

/// The binding that makes policy `name` deny what it does not admit, everywhere.
pub fn deny_binding(name: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name.into()),
            validation_actions: Some(vec!["Deny".into()]),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}

/// `operations` on `resources` of this project's group at `version` (`*` for all).
pub fn our_resources(version: &str, operations: &[&str], resources: &[&str]) -> MatchResources {
    let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    MatchResources {
        resource_rules: Some(vec![NamedRuleWithOperations {
            api_groups: Some(vec![super::GROUP.into()]),
            api_versions: Some(vec![version.into()]),
            operations: strings(operations),
            resources: strings(resources),
            ..NamedRuleWithOperations::default()
        }]),
        ..MatchResources::default()
    }
}

/// Every admission policy the chart installs beside the CRDs, each with its binding.
pub fn policies() -> Vec<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    use super::subnet_policy as subnet;
    vec![
        (ipv6_ranges_policy(), ipv6_ranges_binding()),
        (subnet::pool_policy(), subnet::binding(subnet::POOL_POLICY)),
        (subnet::subnet_policy(), subnet::binding(subnet::SUBNET_POLICY)),
        (
            subnet::disjoint_policy(),
            subnet::binding(subnet::DISJOINT_POLICY),
        ),
    ]
}

/// The policies and their bindings as one YAML file.
pub fn to_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut docs = Vec::new();
    for (policy, binding) in policies() {
        docs.push(serde_yaml_ng::to_string(&policy)?);
        docs.push(serde_yaml_ng::to_string(&binding)?);
    }
    Ok(format!(
        "# Generated by `cargo run -p spiderpool-api --bin crdgen`; do not edit.\n{}",
        docs.join("---\n")
    ))
}
