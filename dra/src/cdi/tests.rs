use std::path::Path;

use serde_json::Value;
use spiderpool_testing::fixtures::fixture_inventory;

use super::*;

fn dirs() -> Dirs<'static> {
    Dirs {
        cdi: Path::new("/var/run/cdi"),
        devinfo: Path::new("/var/run/k8s.cni.cncf.io/devinfo/dp"),
    }
}

fn no_group(_: &str) -> Option<String> {
    None
}

fn alloc(request: &str, device: &str) -> Allocated {
    Allocated {
        request: request.into(),
        device: device.into(),
    }
}

fn file(files: &ClaimFiles, name: &str) -> Value {
    let (_, content) = files
        .files
        .iter()
        .find(|(p, _)| p.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("no file {name} in {:?}", files.files));
    serde_json::from_str(content).expect("json")
}

#[test]
fn a_vf_with_rdma_gets_its_device_nodes_environment_and_device_info() {
    let inv = fixture_inventory("gpu-nic");
    let out = claim_files(
        &inv,
        &no_group,
        &dirs(),
        "node-a",
        "uid-1",
        "pod-vf-x1",
        &[alloc("vf", "vf-0000-9b-00-2"), alloc("vf", "vf-0000-9b-00-3")],
    )
    .expect("prepared");
    assert_eq!(
        out.devices,
        vec![
            PreparedDevice {
                request_names: vec!["vf".into()],
                pool_name: "node-a".into(),
                device_name: "vf-0000-9b-00-2".into(),
                cdi_device_ids: vec!["spidernet.io/vf=0000:9b:00.2".into()],
            },
            PreparedDevice {
                request_names: vec!["vf".into()],
                pool_name: "node-a".into(),
                device_name: "vf-0000-9b-00-3".into(),
                cdi_device_ids: vec!["spidernet.io/vf=0000:9b:00.3".into()],
            },
        ]
    );
    let spec = file(&out, "spidernet.io-vf_uid-1.json");
    assert_eq!(spec["cdiVersion"], CDI_VERSION);
    assert_eq!(spec["kind"], VF_KIND);
    let first = &spec["devices"][0];
    assert_eq!(first["name"], "0000:9b:00.2");
    let nodes: Vec<&str> = first["containerEdits"]["deviceNodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        nodes,
        [
            "/dev/infiniband/uverbs4",
            "/dev/infiniband/issm4",
            "/dev/infiniband/umad4",
            "/dev/infiniband/rdma_cm"
        ]
    );
    // The request's variables once, on its first device, listing both VFs.
    let env = first["containerEdits"]["env"].as_array().expect("env");
    assert_eq!(env[0], "PCIDEVICE_SPIDERNET_IO_VF=0000:9b:00.2,0000:9b:00.3");
    let info = env[1]
        .as_str()
        .expect("info")
        .strip_prefix("PCIDEVICE_SPIDERNET_IO_VF_INFO=")
        .expect("info var");
    let info: Value = serde_json::from_str(info).expect("info json");
    assert_eq!(info["0000:9b:00.3"]["rdma"]["rdma_dev"], "mlx5_5");
    assert!(spec["devices"][1]["containerEdits"].get("env").is_none());
    let devinfo = file(&out, "pod-vf-x1-0000:9b:00.2-device.json");
    assert_eq!(devinfo["pci"]["rdma-device"], "mlx5_4");
    assert_eq!(devinfo["pci"]["pf-pci-address"], "0000:9b:00.0");
}

#[test]
fn a_shared_rdma_slot_is_named_by_claim_and_gives_the_hca_nodes() {
    let inv = fixture_inventory("gpu-nic");
    let out = claim_files(
        &inv,
        &no_group,
        &dirs(),
        "n",
        "uid-2",
        "c",
        &[alloc("rdma", "rdma-mlx5-0-3")],
    )
    .expect("prepared");
    assert_eq!(
        out.devices[0].cdi_device_ids,
        ["spidernet.io/rdma=uid-2-rdma-mlx5-0-3"]
    );
    let spec = file(&out, "spidernet.io-rdma_uid-2.json");
    assert_eq!(spec["kind"], RDMA_KIND);
    assert_eq!(
        spec["devices"][0]["containerEdits"]["deviceNodes"][0]["path"],
        "/dev/infiniband/uverbs0"
    );
    assert_eq!(out.files.len(), 1, "no device-info file for a slot");
}

#[test]
fn a_vfio_vf_gets_the_vfio_nodes_of_its_group() {
    let mut inv = fixture_inventory("gpu-nic");
    let vf = inv
        .nics
        .iter_mut()
        .flat_map(|n| n.sriov.iter_mut().flat_map(|s| s.vfs.iter_mut()))
        .find(|v| v.pci_address == "0000:1b:00.2")
        .expect("vf");
    vf.driver = Some("vfio-pci".into());
    vf.rdma_device = None;
    let group = |pci: &str| (pci == "0000:1b:00.2").then(|| "42".to_string());
    let out = claim_files(
        &inv,
        &group,
        &dirs(),
        "n",
        "u",
        "c",
        &[alloc("dpdk", "vf-0000-1b-00-2")],
    )
    .expect("prepared");
    let spec = file(&out, "spidernet.io-vf_u.json");
    let nodes = &spec["devices"][0]["containerEdits"]["deviceNodes"];
    assert_eq!(nodes[0]["path"], "/dev/vfio/vfio");
    assert_eq!(nodes[1]["path"], "/dev/vfio/42");
    assert_eq!(
        spec["devices"][0]["containerEdits"]["env"][0],
        "PCIDEVICE_SPIDERNET_IO_DPDK=0000:1b:00.2"
    );
}

#[test]
fn devices_the_node_no_longer_has_or_never_published_are_refused() {
    let inv = fixture_inventory("gpu-nic");
    let one = |request: &str, device: &str| {
        claim_files(&inv, &no_group, &dirs(), "n", "u", "c", &[alloc(request, device)])
    };
    assert_eq!(
        one("vf", "vf-0000-ff-00-2"),
        Err(CdiError::Gone("vf-0000-ff-00-2".into()))
    );
    assert_eq!(
        one("r", "rdma-mlx5-9-0"),
        Err(CdiError::Gone("rdma-mlx5-9-0".into()))
    );
    assert_eq!(one("g", "gpu-0"), Err(CdiError::Unknown("gpu-0".into())));
}

#[test]
fn env_names_follow_the_device_plugin() {
    assert_eq!(env_name("vf"), "PCIDEVICE_SPIDERNET_IO_VF");
    assert_eq!(env_name("gpu-nic.1"), "PCIDEVICE_SPIDERNET_IO_GPU_NIC_1");
}
