//! Whether each RDMA device in the host's namespace is usable through verbs, from what libibverbs
//! reported (`spiderpool_linux::verbs`): pure, so the verdict is tested without a device.

use spiderpool_api::inventory::{RdmaDevice, VerbsHealth};
use spiderpool_linux::verbs::VerbsDevice;

/// Sets `verbs` on every device the host's namespace holds. `probe` is libibverbs' list, or why
/// there is none.
pub fn with_verbs(devices: &mut [RdmaDevice], probe: &Result<Vec<VerbsDevice>, String>) {
    for device in devices.iter_mut().filter(|d| d.netns.is_none()) {
        let verdict = match probe {
            Err(e) => Err(e.clone()),
            Ok(list) => match list.iter().find(|v| v.name == device.name) {
                None => Err(
                    "libibverbs does not list it (no /dev/infiniband/uverbs node for it, or no \
                             provider library for its driver)"
                        .to_string(),
                ),
                Some(v) => usable(device, v),
            },
        };
        device.verbs = Some(match verdict {
            Ok(()) => VerbsHealth {
                usable: true,
                reason: None,
            },
            Err(reason) => VerbsHealth {
                usable: false,
                reason: Some(reason),
            },
        });
    }
}

/// Usable when some port is ACTIVE with a GID for its netdev (RoCE), or with any GID where the
/// port has no netdev (InfiniBand). `Err` says, port by port, why not.
fn usable(device: &RdmaDevice, verbs: &VerbsDevice) -> Result<(), String> {
    let ports = verbs.ports.as_ref().map_err(Clone::clone)?;
    if ports.is_empty() {
        return Err("the verbs context has no ports".into());
    }
    let mut why = Vec::new();
    for port in ports {
        let netdev = device
            .ports
            .iter()
            .find(|p| p.port == port.port)
            .and_then(|p| p.netdev.as_deref());
        match (&port.state, netdev) {
            (Err(e), _) => why.push(format!("port {}: {e}", port.port)),
            (Ok(state), _) if state != "ACTIVE" => why.push(format!("port {}: {state}", port.port)),
            (Ok(_), Some(netdev)) if !port.gid_netdevs.iter().any(|n| n.as_deref() == Some(netdev)) => {
                why.push(format!(
                    "port {}: ACTIVE but no GID for its netdev {netdev}",
                    port.port
                ));
            }
            (Ok(_), None) if port.gid_netdevs.is_empty() => {
                why.push(format!("port {}: ACTIVE but its GID table is empty", port.port));
            }
            (Ok(_), _) => return Ok(()),
        }
    }
    Err(why.join("; "))
}

#[cfg(test)]
mod tests {
    use spiderpool_api::inventory::RdmaPort;
    use spiderpool_linux::verbs::VerbsPort;

    use super::*;

    fn device(name: &str, netdev: Option<&str>) -> RdmaDevice {
        RdmaDevice {
            name: name.into(),
            ports: vec![RdmaPort {
                port: 1,
                state: Some("ACTIVE".into()),
                netdev: netdev.map(Into::into),
                ..RdmaPort::default()
            }],
            ..RdmaDevice::default()
        }
    }

    fn listed(name: &str, state: &str, gids: &[Option<&str>]) -> VerbsDevice {
        VerbsDevice {
            name: name.into(),
            ports: Ok(vec![VerbsPort {
                port: 1,
                state: Ok(state.into()),
                gid_netdevs: gids.iter().map(|g| g.map(Into::into)).collect(),
            }]),
        }
    }

    fn verdict(mut d: RdmaDevice, probe: Result<Vec<VerbsDevice>, String>) -> VerbsHealth {
        with_verbs(std::slice::from_mut(&mut d), &probe);
        d.verbs.expect("a host device gets a verdict")
    }

    #[test]
    fn an_active_port_with_a_gid_for_its_netdev_is_usable() {
        let v = verdict(
            device("rxe0", Some("eth1")),
            Ok(vec![listed("rxe0", "ACTIVE", &[Some("eth1")])]),
        );
        assert_eq!(
            v,
            VerbsHealth {
                usable: true,
                reason: None
            }
        );
        // InfiniBand: no netdev, any GID will do.
        let v = verdict(
            device("mlx5_0", None),
            Ok(vec![listed("mlx5_0", "ACTIVE", &[None])]),
        );
        assert!(v.usable);
    }

    #[test]
    fn what_sysfs_calls_active_can_still_be_unusable_and_says_why() {
        let cases = [
            (
                Ok(vec![]),
                "libibverbs does not list it (no /dev/infiniband/uverbs node for it, or no provider library for its driver)",
            ),
            (
                Err("ibv_get_device_list: No such file or directory (os error 2)".to_string()),
                "ibv_get_device_list",
            ),
            (
                Ok(vec![VerbsDevice {
                    name: "rxe0".into(),
                    ports: Err("ibv_open_device: Permission denied (os error 13)".into()),
                }]),
                "ibv_open_device: Permission denied",
            ),
            (Ok(vec![listed("rxe0", "DOWN", &[Some("eth1")])]), "port 1: DOWN"),
            (
                Ok(vec![listed("rxe0", "ACTIVE", &[Some("eth2")])]),
                "port 1: ACTIVE but no GID for its netdev eth1",
            ),
        ];
        for (probe, want) in cases {
            let v = verdict(device("rxe0", Some("eth1")), probe);
            assert!(!v.usable, "{want}");
            let reason = v.reason.expect("a reason");
            assert!(reason.contains(want), "{reason} does not say {want}");
        }
        let v = verdict(device("mlx5_0", None), Ok(vec![listed("mlx5_0", "ACTIVE", &[])]));
        assert_eq!(
            v.reason.as_deref(),
            Some("port 1: ACTIVE but its GID table is empty")
        );
    }

    #[test]
    fn a_device_in_a_pod_is_not_judged_from_the_host() {
        let mut d = device("rxpod1", None);
        d.netns = Some("pod1".into());
        with_verbs(std::slice::from_mut(&mut d), &Ok(vec![]));
        assert_eq!(d.verbs, None);
    }
}
