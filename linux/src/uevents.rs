//! Device add/remove events from libudev (the `udev` feature): VFs created or removed (`pci`,
//! `net`), RDMA devices appearing (`infiniband`, `infiniband_verbs`), a driver bound. Netlink link
//! events miss what has no netdev: an RDMA device, a VF bound to vfio-pci.

use std::os::fd::AsFd;
use std::path::Path;

/// The subsystems whose events change what the node offers.
pub const SUBSYSTEMS: [&str; 4] = ["pci", "net", "infiniband", "infiniband_verbs"];

/// One event, as much of it as a log line needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    pub action: String,
    pub subsystem: String,
    pub name: String,
}

/// Where the events come from: udevd's (after its rules ran, names final) when it runs on this
/// host, else the kernel's own (an agent container without `/run/udev`).
pub fn source(run_udev: &Path) -> &'static str {
    if run_udev.join("control").exists() {
        "udev"
    } else {
        "kernel"
    }
}

/// Starts a thread that calls `on_event` for each event of [`SUBSYSTEMS`] until it returns
/// `false`. Returns the source used; errors only when the monitor cannot be set up.
pub fn watch_device_events(
    mut on_event: impl FnMut(&DeviceEvent) -> bool + Send + 'static,
) -> std::io::Result<&'static str> {
    let source = source(Path::new("/run/udev"));
    // libudev's handles are not Send: the monitor is made on the thread that reads it, which
    // reports whether that worked.
    let (ready, setup) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("device-events".into())
        .spawn(move || {
            let socket = match monitor(source) {
                Ok(socket) => {
                    let _ = ready.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            loop {
                let mut fds = [nix::poll::PollFd::new(
                    socket.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return,
                }
                // The socket does not block: drain what arrived, then wait again.
                for event in socket.iter() {
                    let event = DeviceEvent {
                        action: event.event_type().to_string(),
                        subsystem: event
                            .subsystem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        name: event.sysname().to_string_lossy().into_owned(),
                    };
                    if !on_event(&event) {
                        return;
                    }
                }
            }
        })?;
    setup
        .recv()
        .map_err(|_| std::io::Error::other("the device event thread ended"))??;
    Ok(source)
}

fn monitor(source: &str) -> std::io::Result<udev::MonitorSocket> {
    let mut builder = match source {
        "udev" => udev::MonitorBuilder::new()?,
        _ => udev::MonitorBuilder::new_kernel()?,
    };
    for subsystem in SUBSYSTEMS {
        builder = builder.match_subsystem(subsystem)?;
    }
    builder.listen()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udevd_is_the_source_only_where_it_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(source(dir.path()), "kernel");
        std::fs::write(dir.path().join("control"), "").expect("write");
        assert_eq!(source(dir.path()), "udev");
    }
}
