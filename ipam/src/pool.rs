//! IP pools: the SpiderIPPool spec as users write it, and the validated form the allocator uses.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use spiderpool_cni::Route;

use crate::range::{Family, IpSet, Range, RangeError, ip_to_key, parse_range};

/// A route of a pool, as in the SpiderIPPool spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteSpec {
    pub dst: String,
    pub gw: String,
}

/// The fields of the SpiderIPPool spec that decide what a pool hands out. The others (node,
/// namespace, pod and multus affinities) are accepted and ignored here: cluster mode's pool choice
/// reads them from the SpiderIPPool object ([`crate::cluster::select`]), and standalone mode has no
/// pods to match them against. Field names are Spiderpool's, so the same manifests serve both modes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Inline pools in a netconf carry their name here; manifests in `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ip_version: Option<u8>,
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default, rename = "excludeIPs")]
    pub exclude_ips: Vec<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub default: Option<bool>,
    #[serde(default)]
    pub disable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool has no name")]
    NoName,
    #[error("pool {pool}: {reason}")]
    BadSpec { pool: String, reason: String },
    #[error("pool name {0:?} is invalid (letters, digits, '-', '.', '_'; at most 253)")]
    BadName(String),
    #[error("pool {pool}: subnet {subnet:?} is not a CIDR like 10.6.0.0/16")]
    BadSubnet { pool: String, subnet: String },
    #[error("pool {pool}: subnet {subnet} has host bits set (did you mean {network}?)")]
    SubnetHostBits {
        pool: String,
        subnet: String,
        network: String,
    },
    #[error("pool {pool}: ipVersion {version} does not match subnet {subnet}")]
    VersionMismatch {
        pool: String,
        version: u8,
        subnet: String,
    },
    #[error("pool {pool}: ipVersion must be 4 or 6, not {version}")]
    BadVersion { pool: String, version: u8 },
    #[error("pool {pool}: {field}: {source}")]
    BadRange {
        pool: String,
        field: &'static str,
        source: RangeError,
    },
    #[error("pool {pool}: {field} entry {entry:?} is outside subnet {subnet}")]
    OutsideSubnet {
        pool: String,
        field: &'static str,
        entry: String,
        subnet: String,
    },
    #[error("pool {pool}: ips entries {a:?} and {b:?} overlap")]
    Overlap { pool: String, a: String, b: String },
    #[error("pool {pool}: gateway {gateway:?} is not an IP address")]
    BadGateway { pool: String, gateway: String },
    #[error("pool {pool}: route {what:?} is invalid: {why}")]
    BadRoute { pool: String, what: String, why: String },
    #[error("pool {pool}: ips is empty")]
    NoIps { pool: String },
    #[error("pool {pool}: subnet {subnet} is IPv4-mapped IPv6 (::ffff:0:0/96); use an IPv4 pool")]
    MappedSubnet { pool: String, subnet: String },
}

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub family: Family,
    pub subnet: IpNet,
    /// What may be handed out: `ips` minus `excludeIPs`, the gateway, the subnet's network
    /// address and (IPv4) its broadcast address.
    pub set: IpSet,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    pub default: bool,
    pub disabled: bool,
}

impl Pool {
    pub fn from_spec(spec: &PoolSpec, name: Option<&str>) -> Result<Pool, PoolError> {
        let name = name
            .or(spec.name.as_deref())
            .ok_or(PoolError::NoName)?
            .to_string();
        if name.is_empty()
            || name.len() > 253
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(PoolError::BadName(name));
        }
        let pool = name.clone();
        let subnet: IpNet = spec.subnet.trim().parse().map_err(|_| PoolError::BadSubnet {
            pool: pool.clone(),
            subnet: spec.subnet.clone(),
        })?;
        if subnet.trunc() != subnet {
            return Err(PoolError::SubnetHostBits {
                pool,
                subnet: subnet.to_string(),
                network: subnet.trunc().to_string(),
            });
        }
        let mapped =
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).unwrap_or_default();
        if let IpNet::V6(v6) = subnet
            && (v6.contains(&mapped) || mapped.contains(&v6))
        {
            // Addresses are kept in one number space with IPv4 as IPv4-mapped IPv6 (see
            // `range`), so such a pool would hand out IPv4 pools' addresses.
            return Err(PoolError::MappedSubnet {
                pool,
                subnet: subnet.to_string(),
            });
        }
        let family = Family::of(subnet.addr());
        match spec.ip_version {
            None => {}
            Some(v @ (4 | 6)) if v == family.number() => {}
            Some(v @ (4 | 6)) => {
                return Err(PoolError::VersionMismatch {
                    pool,
                    version: v,
                    subnet: subnet.to_string(),
                });
            }
            Some(v) => return Err(PoolError::BadVersion { pool, version: v }),
        }
        let subnet_range = Range {
            start: ip_to_key(subnet.network()),
            end: ip_to_key(subnet.broadcast()),
        };
        let parse_in_subnet = |field: &'static str, entries: &[String]| -> Result<Vec<Range>, PoolError> {
            entries
                .iter()
                .map(|entry| {
                    let (_, r) = parse_range(entry).map_err(|source| PoolError::BadRange {
                        pool: pool.clone(),
                        field,
                        source,
                    })?;
                    if r.start < subnet_range.start || r.end > subnet_range.end {
                        return Err(PoolError::OutsideSubnet {
                            pool: pool.clone(),
                            field,
                            entry: entry.clone(),
                            subnet: subnet.to_string(),
                        });
                    }
                    Ok(r)
                })
                .collect()
        };
        if spec.ips.is_empty() {
            return Err(PoolError::NoIps { pool });
        }
        let ips = parse_in_subnet("ips", &spec.ips)?;
        let mut order: Vec<usize> = (0..ips.len()).collect();
        order.sort_by_key(|&i| ips[i].start);
        for w in order.windows(2) {
            if ips[w[1]].start <= ips[w[0]].end {
                return Err(PoolError::Overlap {
                    pool,
                    a: spec.ips[w[0]].clone(),
                    b: spec.ips[w[1]].clone(),
                });
            }
        }
        let mut excluded = parse_in_subnet("excludeIPs", &spec.exclude_ips)?;
        let gateway = match spec.gateway.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(gw) => {
                let gw_ip: IpAddr = gw.parse().map_err(|_| PoolError::BadGateway {
                    pool: pool.clone(),
                    gateway: gw.into(),
                })?;
                if !subnet.contains(&gw_ip) {
                    return Err(PoolError::OutsideSubnet {
                        pool,
                        field: "gateway",
                        entry: gw.into(),
                        subnet: subnet.to_string(),
                    });
                }
                excluded.push(Range {
                    start: ip_to_key(gw_ip),
                    end: ip_to_key(gw_ip),
                });
                Some(gw_ip)
            }
        };
        // The network address (IPv6: the subnet-router anycast) and the IPv4 broadcast address
        // are never a host's address, except in /31, /32, /127 and /128 point-to-point subnets.
        let host_bits = subnet.max_prefix_len() - subnet.prefix_len();
        if host_bits >= 2 {
            excluded.push(Range {
                start: subnet_range.start,
                end: subnet_range.start,
            });
            if family == Family::V4 {
                excluded.push(Range {
                    start: subnet_range.end,
                    end: subnet_range.end,
                });
            }
        }
        let set = IpSet::from_ranges(ips).subtract(&IpSet::from_ranges(excluded));
        let routes = spec
            .routes
            .iter()
            .map(|r| parse_route(&pool, family, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            name,
            family,
            subnet,
            set,
            gateway,
            routes,
            default: spec.default.unwrap_or(false),
            disabled: spec.disable.unwrap_or(false),
        })
    }

    /// A pool from a SpiderIPPool object's `spec` as JSON (the cluster's objects come this way:
    /// their fields are the ones [`PoolSpec`] reads).
    pub fn from_spec_json(spec: serde_json::Value, name: &str) -> Result<Pool, PoolError> {
        let spec: PoolSpec = serde_json::from_value(spec).map_err(|e| PoolError::BadSpec {
            pool: name.to_string(),
            reason: e.to_string(),
        })?;
        Pool::from_spec(&spec, Some(name))
    }

    /// How many addresses the pool can hand out when `reserved` are held back.
    pub fn available(&self, reserved: &IpSet) -> u128 {
        self.set.subtract(reserved).len()
    }

    /// The address with this pool's prefix length, as a CNI result carries it.
    pub fn address(&self, ip: IpAddr) -> IpNet {
        // The prefix length comes from a parsed subnet of the same family, so this cannot fail.
        IpNet::new(ip, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }

    /// The first address both pools may hand out, if any.
    pub fn overlap_with(&self, other: &Pool) -> Option<IpAddr> {
        let common = self.set.subtract(&self.set.subtract(&other.set));
        common.next_after(None).map(crate::range::key_to_ip)
    }
}

fn parse_route(pool: &str, family: Family, r: &RouteSpec) -> Result<Route, PoolError> {
    let bad = |why: &str| PoolError::BadRoute {
        pool: pool.into(),
        what: format!("{} via {}", r.dst, r.gw),
        why: why.into(),
    };
    let dst: IpNet = r.dst.trim().parse().map_err(|_| bad("dst is not a CIDR"))?;
    let gw: IpAddr = r.gw.trim().parse().map_err(|_| bad("gw is not an IP address"))?;
    if Family::of(dst.addr()) != family || Family::of(gw) != family {
        return Err(bad("dst and gw must be of the pool's IP family"));
    }
    Ok(Route::new(dst.trunc(), Some(gw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str, ips: &[&str]) -> PoolSpec {
        PoolSpec {
            name: Some("p".into()),
            subnet: subnet.into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            ..PoolSpec::default()
        }
    }

    #[test]
    fn derives_version_and_excludes_gateway_network_and_broadcast() {
        let mut s = spec("10.6.0.0/24", &["10.6.0.0-10.6.0.255"]);
        s.gateway = Some("10.6.0.1".into());
        s.exclude_ips = vec!["10.6.0.20".into()];
        s.routes = vec![RouteSpec {
            dst: "0.0.0.0/0".into(),
            gw: "10.6.0.1".into(),
        }];
        let p = Pool::from_spec(&s, None).unwrap();
        assert_eq!(p.family, Family::V4);
        assert_eq!(p.set.len(), 256 - 4);
        for ip in ["10.6.0.0", "10.6.0.1", "10.6.0.20", "10.6.0.255"] {
            assert!(!p.set.contains(ip_to_key(ip.parse().unwrap())), "{ip}");
        }
        assert_eq!(p.address("10.6.0.9".parse().unwrap()).to_string(), "10.6.0.9/24");
        assert_eq!(p.routes[0].gw, Some("10.6.0.1".parse().unwrap()));
    }

    #[test]
    fn point_to_point_subnets_keep_every_address() {
        assert_eq!(
            Pool::from_spec(&spec("10.0.0.0/31", &["10.0.0.0-10.0.0.1"]), None)
                .unwrap()
                .set
                .len(),
            2
        );
        assert_eq!(
            Pool::from_spec(&spec("fd00::/64", &["fd00::-fd00::3"]), None)
                .unwrap()
                .set
                .len(),
            3
        );
    }

    #[test]
    fn every_invalid_spec_is_named() {
        let cases: Vec<(PoolSpec, &str)> = vec![
            (spec("10.6.0.0/33", &["10.6.0.5"]), "not a CIDR"),
            (spec("10.6.0.5/16", &["10.6.0.5"]), "host bits"),
            (
                PoolSpec {
                    ip_version: Some(6),
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "does not match",
            ),
            (
                PoolSpec {
                    ip_version: Some(5),
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "4 or 6",
            ),
            (spec("10.6.0.0/16", &["10.6.0.9-10.6.0.5"]), "ends before"),
            (spec("10.6.0.0/16", &["10.6.0.x"]), "not an IP address"),
            (spec("10.6.0.0/16", &["10.7.0.1"]), "outside subnet"),
            (
                spec("10.6.0.0/16", &["10.6.0.1-10.6.0.9", "10.6.0.9-10.6.0.20"]),
                "overlap",
            ),
            (spec("10.6.0.0/16", &[]), "ips is empty"),
            (
                PoolSpec {
                    gateway: Some("10.7.0.1".into()),
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "outside subnet",
            ),
            (
                PoolSpec {
                    gateway: Some("nope".into()),
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "not an IP",
            ),
            (
                PoolSpec {
                    exclude_ips: vec!["10.9.0.1".into()],
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "outside",
            ),
            (
                PoolSpec {
                    routes: vec![RouteSpec {
                        dst: "fd00::/8".into(),
                        gw: "10.6.0.1".into(),
                    }],
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "family",
            ),
            (
                PoolSpec {
                    name: Some("a/b".into()),
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "invalid",
            ),
            (
                PoolSpec {
                    name: None,
                    ..spec("10.6.0.0/16", &["10.6.0.5"])
                },
                "no name",
            ),
        ];
        for (s, want) in cases {
            let err = Pool::from_spec(&s, None).unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn overlap_between_pools() {
        let a = Pool::from_spec(&spec("10.6.0.0/16", &["10.6.0.10-10.6.0.20"]), None).unwrap();
        let b = Pool::from_spec(&spec("10.6.0.0/16", &["10.6.0.20-10.6.0.30"]), None).unwrap();
        let c = Pool::from_spec(&spec("10.6.0.0/16", &["10.6.0.21-10.6.0.30"]), None).unwrap();
        assert_eq!(a.overlap_with(&b), Some("10.6.0.20".parse().unwrap()));
        assert_eq!(a.overlap_with(&c), None);
    }
}
