//! `spiderpool`: the CNI IPAM plugin, exec'd by a container runtime or another plugin.

fn main() {
    spiderpool_cni::skel::main(&spiderpool_ipam::plugin::SpiderpoolIpam)
}
