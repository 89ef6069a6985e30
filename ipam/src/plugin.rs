//! The `spiderpool` CNI IPAM plugin. Standalone mode: pools from the netconf or a pool file,
//! state in the embedded store. Cluster mode (the netconf names no pools): every verb is a call
//! to the node agent's IPAM service over the protocol of [`spiderpool_cni::agent`].

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use spiderpool_cni::{CniError, CniResult, ErrorCode, IpConfig, Plugin, PluginInfo, Request};

use crate::allocator::{Slot, allocate, holds, release};
use crate::config::{ClusterConfig, ConfigError, IpamConfig};
use crate::pool::Pool;
use crate::range::Family;
use crate::store::{AllocatedIp, DB_FILE, LOCK_TIMEOUT, OwnerRecord, Store, StoreError, Tables, owner_key};
use spiderpool_cni::agent::{self, CALL_TIMEOUT, IpamRequest, IpamVerb as Verb, PodRef};

pub struct SpiderpoolIpam;

impl From<StoreError> for CniError {
    fn from(e: StoreError) -> CniError {
        let code = match e {
            StoreError::Busy { .. } => ErrorCode::TryAgainLater,
            _ => ErrorCode::IoFailure,
        };
        CniError::new(code, e.to_string())
    }
}

fn config_error(e: ConfigError) -> CniError {
    let code = match e {
        ConfigError::Decode(_) => ErrorCode::DecodingFailure,
        _ => ErrorCode::InvalidNetworkConfig,
    };
    CniError::new(code, e.to_string())
}

fn key_of(req: &Request) -> String {
    owner_key(&req.conf.name, &req.container_id, &req.ifname)
}

fn exhausted(family: Family, pools: &[Pool]) -> CniError {
    let names: Vec<String> = pools
        .iter()
        .map(|p| {
            if p.disabled {
                format!("{} (disabled)", p.name)
            } else {
                p.name.clone()
            }
        })
        .collect();
    CniError::new(
        ErrorCode::PoolExhausted,
        format!(
            "no free IPv{} address in pools [{}]",
            family.number(),
            names.join(", ")
        ),
    )
}

/// Allocates one address per configured family, first free pool first; all or nothing.
fn allocate_all(
    t: &mut Tables<'_>,
    config: &IpamConfig,
    req: &Request,
    key: &str,
) -> Result<OwnerRecord, CniError> {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for (family, pools) in config.families() {
        let mut got = None;
        for pool in pools.iter().filter(|p| !p.disabled) {
            if let Some(ip) = allocate(t, pool, key)? {
                got = Some((pool, ip));
                break;
            }
        }
        // Returning the error discards the transaction: no family keeps a partial allocation.
        let (pool, ip) = got.ok_or_else(|| exhausted(family, pools))?;
        ips.push(AllocatedIp {
            pool: pool.name.clone(),
            address: pool.address(ip),
            gateway: if config.clean_gateway { None } else { pool.gateway },
        });
        routes.extend(pool.routes.iter().cloned());
    }
    Ok(OwnerRecord {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        pod_namespace: req.args.k8s_pod_namespace.clone(),
        pod_name: req.args.k8s_pod_name.clone(),
        pod_uid: req.args.k8s_pod_uid.clone(),
        ips,
        routes,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

fn result_of(record: &OwnerRecord) -> CniResult {
    CniResult {
        ips: record
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: None,
            })
            .collect(),
        routes: record.routes.clone(),
        ..CniResult::default()
    }
}

fn release_record(t: &mut Tables<'_>, key: &str) -> Result<(), StoreError> {
    match t.owner(key) {
        Ok(Some(record)) => {
            for ip in &record.ips {
                release(t, ip.address.addr(), key)?;
            }
            t.remove_owner(key)?;
        }
        Ok(None) => {}
        Err(StoreError::Corrupt { .. }) => {
            // The record cannot be read: the address slots still name their holder.
            let held: Vec<_> = t
                .all_slots()?
                .into_iter()
                .filter(|(_, slot)| matches!(slot, Slot::Allocated { owner, .. } if owner == key))
                .map(|(ip, _)| ip)
                .collect();
            for ip in held {
                release(t, ip, key)?;
            }
            t.remove_owner(key)?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Opens the store for DEL and GC, or `None` when it was never created (nothing to release), or
/// with `tolerate_unreadable` when it cannot be read.
fn existing_store(req: &Request, tolerate_unreadable: bool) -> Result<Option<Store>, CniError> {
    let dir = IpamConfig::load_data_dir(&req.conf.raw).map_err(config_error)?;
    if !dir.join(DB_FILE).exists() {
        return Ok(None);
    }
    match Store::open(&dir, LOCK_TIMEOUT) {
        Ok(store) => Ok(Some(store)),
        Err(e @ StoreError::Unreadable { .. }) if tolerate_unreadable => {
            eprintln!("spiderpool: released nothing: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `Some(result)` when the netconf is in cluster mode and the agent answered.
fn via_agent(req: &Request, verb: Verb) -> Result<Option<CniResult>, CniError> {
    let Some(cluster) = ClusterConfig::load(&req.conf.raw).map_err(config_error)? else {
        return Ok(None);
    };
    let pod = match (&req.args.k8s_pod_namespace, &req.args.k8s_pod_name) {
        (Some(namespace), Some(name)) => Some(PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: req.args.k8s_pod_uid.clone().unwrap_or_default(),
        }),
        _ if verb == Verb::Gc => None,
        _ => {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                "cluster mode (no pools in the netconf) needs K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS",
            ));
        }
    };
    let request = IpamRequest {
        verb,
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        pod,
        default_ipv4_pools: cluster.default_ipv4_pools,
        default_ipv6_pools: cluster.default_ipv6_pools,
        clean_gateway: cluster.clean_gateway,
        valid_attachments: req.conf.valid_attachments.clone().unwrap_or_default(),
    };
    agent::call(&cluster.socket, request, CALL_TIMEOUT).map(Some)
}

impl Plugin for SpiderpoolIpam {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            about: format!("spiderpool IPAM plugin {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        if let Some(result) = via_agent(req, Verb::Add)? {
            return Ok(result);
        }
        let config = IpamConfig::load(&req.conf.raw).map_err(config_error)?;
        let store = Store::open(&config.data_dir, LOCK_TIMEOUT)?;
        let key = key_of(req);
        let record = store.write(|t| match t.owner(&key)? {
            Some(existing) => Ok(existing), // a repeated ADD answers what the first one did
            None => {
                let record = allocate_all(t, &config, req, &key)?;
                t.put_owner(&key, &record)?;
                Ok::<_, CniError>(record)
            }
        })?;
        // The result is printed only after the close has made the allocation persistent.
        store.close()?;
        Ok(result_of(&record))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        if via_agent(req, Verb::Del)?.is_some() {
            return Ok(());
        }
        // Nothing can be released from a store that cannot be read, and failing would keep the
        // pod from ever being deleted; ADD says what to do about it.
        let Some(store) = existing_store(req, true)? else {
            return Ok(());
        };
        let key = key_of(req);
        store.write(|t| release_record(t, &key))?;
        store.close()?;
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        if via_agent(req, Verb::Check)?.is_some() {
            return Ok(());
        }
        let config = IpamConfig::load(&req.conf.raw).map_err(config_error)?;
        let store = Store::open(&config.data_dir, LOCK_TIMEOUT)?;
        let key = key_of(req);
        store.dry_run(|t| {
            let record = t.owner(&key)?.ok_or_else(|| {
                CniError::new(
                    ErrorCode::UnknownContainer,
                    format!(
                        "no allocation for container {} interface {} in network {}",
                        req.container_id, req.ifname, req.conf.name
                    ),
                )
            })?;
            for ip in &record.ips {
                if !holds(t, ip.address.addr(), &key)? {
                    return Err(CniError::new(
                        ErrorCode::AllocationMismatch,
                        format!(
                            "address {} of {key} is no longer held in pool {}",
                            ip.address, ip.pool
                        ),
                    ));
                }
            }
            if let Some(prev) = &req.conf.prev_result {
                for ip in &record.ips {
                    if !prev.ips.iter().any(|p| p.address.addr() == ip.address.addr()) {
                        return Err(CniError::new(
                            ErrorCode::AllocationMismatch,
                            format!(
                                "allocated address {} of {key} is missing from prevResult",
                                ip.address
                            ),
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        if let Some(cluster) = ClusterConfig::load(&req.conf.raw).map_err(config_error)? {
            // Available means the agent is listening; pools are its business per pod.
            return std::os::unix::net::UnixStream::connect(&cluster.socket)
                .map(drop)
                .map_err(|e| {
                    CniError::new(
                        ErrorCode::PluginNotAvailable,
                        format!("spiderpool agent at {}: {e}", cluster.socket.display()),
                    )
                });
        }
        let config = IpamConfig::load(&req.conf.raw).map_err(config_error)?;
        let store = Store::open(&config.data_dir, LOCK_TIMEOUT)?;
        store.dry_run(|t| {
            for (family, pools) in config.families() {
                let mut free = false;
                for pool in pools.iter().filter(|p| !p.disabled) {
                    if allocate(t, pool, "status-probe")?.is_some() {
                        free = true;
                        break;
                    }
                }
                if !free {
                    let why = exhausted(family, pools);
                    return Err(CniError::new(ErrorCode::PluginNotAvailable, why.msg));
                }
            }
            Ok(())
        })
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        if req.conf.valid_attachments.is_some() && via_agent(req, Verb::Gc)?.is_some() {
            return Ok(());
        }
        let valid: HashSet<String> = req
            .conf
            .valid_attachments
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("GC needs \"cni.dev/valid-attachments\" in the netconf"))?
            .iter()
            .map(|a| owner_key(&req.conf.name, &a.container_id, &a.ifname))
            .collect();
        let Some(store) = existing_store(req, false)? else {
            return Ok(());
        };
        store.write(|t| {
            for key in t.owner_keys_of_network(&req.conf.name)? {
                if !valid.contains(&key) {
                    release_record(t, &key)?;
                }
            }
            Ok::<_, StoreError>(())
        })?;
        store.close()?;
        Ok(())
    }
}
