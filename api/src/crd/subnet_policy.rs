//! Pools inside a SpiderSubnet stay inside it: a SpiderIPPool whose `subnet` is a SpiderSubnet's
//! must list only addresses of that subnet's `ips` outside its `excludeIPs`, and a SpiderSubnet
//! may not be created or edited so that a pool of its CIDR falls outside it. Two
//! ValidatingAdmissionPolicies whose params are the other kind, every object of it (a selector
//! matching all): the API server checks the new object against each one, without a webhook.
//!
//! An entry must lie inside one `ips` entry of the subnet: a pool range spanning two adjacent
//! subnet entries is refused (write it as two). The auto-pools the controller makes are cut at
//! the subnet's entries.

use k8s_openapi::api::admissionregistration::v1::{
    ParamKind, ParamRef, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::admission::{deny_binding, our_resources};
use super::validation::{range_bounds, v4_int, v6_hex};

pub const POOL_POLICY: &str = "spiderpool-pool-inside-subnet";
pub const SUBNET_POLICY: &str = "spiderpool-subnet-covers-pools";

/// `pool` and `subnet`: the CEL paths of the pool's and the subnet's `spec`.
fn variables(pool: &str, subnet: &str) -> Vec<Variable> {
    let entries_of = |spec: &str, field: &str, family: u8| {
        let v6_guard = if family == 6 { " && !p.contains('.')" } else { "" };
        format!(
            "(!has({spec}.{field}) || {spec}.{field}.all(r, r.split('-').size() <= 2 && \
             r.split('-').all(p, isIP(p) && ip(p).family() == {family}{v6_guard})))"
        )
    };
    let (lo, hi) = range_bounds("e");
    let bounds = |family: u8| match family {
        4 => format!("[{}, {}]", v4_int(&lo), v4_int(&hi)),
        _ => format!("[{}, {}]", v6_hex(&lo), v6_hex(&hi)),
    };
    let mut out = vec![Variable {
        name: "same".into(),
        expression: format!(
            "has({pool}.ips) && isCIDR({pool}.subnet) && isCIDR({subnet}.subnet) && \
             cidr({pool}.subnet).masked() == cidr({subnet}.subnet).masked()"
        ),
    }];
    for family in [4u8, 6] {
        out.push(Variable {
            name: format!("v{family}"),
            expression: format!(
                "variables.same && cidr({subnet}.subnet).ip().family() == {family} && {} && {} && {}",
                entries_of(pool, "ips", family),
                entries_of(subnet, "ips", family),
                entries_of(subnet, "excludeIPs", family)
            ),
        });
        for (name, spec, field) in [
            ("pool", pool, "ips"),
            ("sub", subnet, "ips"),
            ("ex", subnet, "excludeIPs"),
        ] {
            out.push(Variable {
                name: format!("{name}{family}"),
                expression: format!(
                    "variables.v{family} && has({spec}.{field}) ? {spec}.{field}.map(e, {}) : []",
                    bounds(family)
                ),
            });
        }
    }
    out
}

fn validations(message: &str) -> Vec<Validation> {
    [4, 6]
        .into_iter()
        .map(|f| Validation {
            expression: format!(
                "variables.pool{f}.all(a, variables.sub{f}.exists(s, s[0] <= a[0] && a[1] <= s[1]) && \
                 !variables.ex{f}.exists(x, !(x[0] > a[1] || a[0] > x[1])))"
            ),
            message_expression: Some(message.into()),
            reason: Some("Invalid".into()),
            ..Validation::default()
        })
        .collect()
}

fn policy(
    name: &str,
    resource: &str,
    operations: &[&str],
    param: &str,
    vars: Vec<Variable>,
    validations: Vec<Validation>,
) -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            param_kind: Some(ParamKind {
                api_version: Some(format!("{}/{}", super::GROUP, super::VERSION)),
                kind: Some(param.into()),
            }),
            // Not the status subresource: allocations and subnet counts never move addresses.
            match_constraints: Some(our_resources(super::VERSION, operations, &[resource])),
            variables: (!vars.is_empty()).then_some(vars),
            validations: Some(validations),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

pub fn pool_policy() -> ValidatingAdmissionPolicy {
    policy(
        POOL_POLICY,
        "spiderippools",
        &["CREATE", "UPDATE"],
        "SpiderSubnet",
        variables("object.spec", "params.spec"),
        validations(
            "'spec.ips must lie inside the ips of SpiderSubnet ' + params.metadata.name + ' (' + \
         params.spec.subnet + '), each entry inside one of its entries, and outside its excludeIPs'",
        ),
    )
}

pub fn subnet_policy() -> ValidatingAdmissionPolicy {
    policy(
        SUBNET_POLICY,
        "spidersubnets",
        &["CREATE", "UPDATE"],
        "SpiderIPPool",
        variables("params.spec", "object.spec"),
        validations(
            "'SpiderIPPool ' + params.metadata.name + ' of this subnet lists addresses outside its ips ' + \
         '(or inside its excludeIPs): a SpiderSubnet must cover every pool of its subnet'",
        ),
    )
}

pub const DISJOINT_POLICY: &str = "spiderpool-subnets-disjoint";

/// No two SpiderSubnets share an address of their CIDRs (a pool belongs to one subnet at most).
pub fn disjoint_policy() -> ValidatingAdmissionPolicy {
    let overlap = "cidr(object.spec.subnet).containsIP(cidr(params.spec.subnet).masked().ip()) || \
                   cidr(params.spec.subnet).containsIP(cidr(object.spec.subnet).masked().ip())";
    policy(
        DISJOINT_POLICY,
        "spidersubnets",
        &["CREATE", "UPDATE"],
        "SpiderSubnet",
        Vec::new(),
        vec![Validation {
            expression: format!(
                "params.metadata.name == object.metadata.name || !isCIDR(object.spec.subnet) || \
                 !isCIDR(params.spec.subnet) || !({overlap})"
            ),
            message_expression: Some(
                "'subnet ' + object.spec.subnet + ' overlaps SpiderSubnet ' + params.metadata.name + \
                 ' (' + params.spec.subnet + ')'"
                    .into(),
            ),
            reason: Some("Invalid".into()),
            ..Validation::default()
        }],
    )
}

/// Each policy's binding: evaluated against every object of its param kind; none at all admits.
pub fn binding(policy_name: &str) -> ValidatingAdmissionPolicyBinding {
    let mut b = deny_binding(policy_name);
    if let Some(spec) = b.spec.as_mut() {
        spec.param_ref = Some(ParamRef {
            selector: Some(LabelSelector::default()),
            parameter_not_found_action: Some("Allow".into()),
            ..ParamRef::default()
        });
    }
    b
}
