//! The libibverbs calls behind [`super::probe`].

use std::ffi::CStr;

use rdma_sys::{
    ___ibv_query_port, ibv_close_device, ibv_context, ibv_device_attr, ibv_free_device_list,
    ibv_get_device_list, ibv_get_device_name, ibv_gid, ibv_open_device, ibv_port_attr, ibv_port_state,
    ibv_query_device,
};

use super::{VerbsDevice, VerbsPort};

/// `struct ibv_gid_entry` (verbs.h, rdma-core 32+), which rdma-sys does not bind.
#[repr(C)]
struct GidEntry {
    gid: ibv_gid,
    gid_index: u32,
    port_num: u32,
    gid_type: u32,
    ndev_ifindex: u32,
}

unsafe extern "C" {
    /// Exported by libibverbs.so.1 (IBVERBS_1.11); `ibv_query_gid_ex` is its inline wrapper.
    fn _ibv_query_gid_ex(
        context: *mut ibv_context,
        port_num: u32,
        gid_index: u32,
        entry: *mut GidEntry,
        flags: u32,
        entry_size: usize,
    ) -> libc::c_int;
}

/// Every device libibverbs lists, each opened, queried and closed. `Err`: no list at all (the
/// kernel has no `ib_uverbs`, or libibverbs failed).
pub fn probe() -> Result<Vec<VerbsDevice>, String> {
    let mut count: libc::c_int = 0;
    // SAFETY: count is a valid out-pointer; the list is freed below and not used after.
    let list = unsafe { ibv_get_device_list(&mut count) };
    if list.is_null() {
        return Err(format!(
            "ibv_get_device_list: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut out = Vec::new();
    for i in 0..usize::try_from(count).unwrap_or(0) {
        // SAFETY: the list holds `count` device pointers.
        let device = unsafe { *list.add(i) };
        if device.is_null() {
            continue;
        }
        // SAFETY: a listed device has a NUL-terminated name that lives as long as the list.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(device)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the device comes from the list, which is still alive.
        let context = unsafe { ibv_open_device(device) };
        let ports = if context.is_null() {
            Err(format!("ibv_open_device: {}", std::io::Error::last_os_error()))
        } else {
            let ports = query_ports(context);
            // SAFETY: opened above, closed once.
            unsafe { ibv_close_device(context) };
            ports
        };
        out.push(VerbsDevice { name, ports });
    }
    // SAFETY: from ibv_get_device_list, freed once; no device pointer is used after this.
    unsafe { ibv_free_device_list(list) };
    Ok(out)
}

fn query_ports(context: *mut ibv_context) -> Result<Vec<VerbsPort>, String> {
    // SAFETY: zeroed is a valid ibv_device_attr (plain integers and arrays).
    let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: context is open; attr is a valid out-pointer.
    let rc = unsafe { ibv_query_device(context, &mut attr) };
    if rc != 0 {
        return Err(format!(
            "ibv_query_device: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok((1..=u32::from(attr.phys_port_cnt))
        .map(|port| query_port(context, port))
        .collect())
}

fn query_port(context: *mut ibv_context, port: u32) -> VerbsPort {
    // SAFETY: zeroed is a valid ibv_port_attr.
    let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
    let port_u8 = u8::try_from(port).unwrap_or(u8::MAX);
    // SAFETY: context is open; attr is a valid out-pointer of the size the call is told.
    let rc = unsafe { ___ibv_query_port(context, port_u8, &mut attr) };
    if rc != 0 {
        return VerbsPort {
            port,
            state: Err(format!(
                "ibv_query_port: {}",
                std::io::Error::from_raw_os_error(rc)
            )),
            gid_netdevs: Vec::new(),
        };
    }
    let mut gid_netdevs = Vec::new();
    for index in 0..u32::try_from(attr.gid_tbl_len).unwrap_or(0) {
        // SAFETY: zeroed is a valid GidEntry.
        let mut entry: GidEntry = unsafe { std::mem::zeroed() };
        // SAFETY: context is open; entry is a valid out-pointer of the size passed.
        let rc = unsafe { _ibv_query_gid_ex(context, port, index, &mut entry, 0, size_of::<GidEntry>()) };
        // An unused entry answers ENODATA; that is the end of the used ones only by convention,
        // so every index is asked.
        if rc == 0 {
            gid_netdevs.push(ifname(entry.ndev_ifindex));
        }
    }
    VerbsPort {
        port,
        state: Ok(port_state_name(attr.state).to_string()),
        gid_netdevs,
    }
}

fn port_state_name(state: ibv_port_state::Type) -> &'static str {
    match state {
        ibv_port_state::IBV_PORT_DOWN => "DOWN",
        ibv_port_state::IBV_PORT_INIT => "INIT",
        ibv_port_state::IBV_PORT_ARMED => "ARMED",
        ibv_port_state::IBV_PORT_ACTIVE => "ACTIVE",
        ibv_port_state::IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER",
        _ => "NOP",
    }
}

fn ifname(index: u32) -> Option<String> {
    if index == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}
