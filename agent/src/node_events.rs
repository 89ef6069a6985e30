//! Wake-ups when what the node offers changes, for the loops that rescan it (device plugin,
//! inventory reporter): netlink link events always, and in agents built with the `udev` feature
//! libudev's device add/remove events, which also cover what has no netdev (an RDMA device, a VF
//! bound to vfio-pci). The loops still rescan on their period; this only makes them early.

use std::sync::Arc;

use tokio::sync::Notify;

/// Starts the event threads; each event wakes every one of `targets`. A source that cannot start
/// is logged, not fatal: the periodic rescans remain.
pub fn wake_on_changes(targets: Vec<Arc<Notify>>) {
    let targets = Arc::new(targets);
    let links = targets.clone();
    if let Err(e) = spiderpool_linux::links::watch_link_events(move || {
        links.iter().for_each(|t| t.notify_one());
        true
    }) {
        tracing::warn!("no netlink link events ({e}): link changes show at the next rescan");
    }
    device_events(targets);
}

#[cfg(feature = "udev")]
fn device_events(targets: Arc<Vec<Arc<Notify>>>) {
    match spiderpool_linux::uevents::watch_device_events(move |event| {
        // Pods come and go with veths: net events are many and only worth a debug line.
        if event.subsystem == "net" {
            tracing::debug!(
                "device event: {} {}/{}",
                event.action,
                event.subsystem,
                event.name
            );
        } else {
            tracing::info!(
                "device event: {} {}/{}",
                event.action,
                event.subsystem,
                event.name
            );
        }
        targets.iter().for_each(|t| t.notify_one());
        true
    }) {
        Ok(source) => tracing::info!("watching device events ({source} events from libudev)"),
        Err(e) => {
            tracing::warn!("no device events from libudev ({e}): device changes show at the next rescan")
        }
    }
}

#[cfg(not(feature = "udev"))]
fn device_events(_: Arc<Vec<Arc<Notify>>>) {}
