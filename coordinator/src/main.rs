//! `coordinator`: exec'd by a container runtime after the main plugin of a chain.

fn main() {
    spiderpool_cni::skel::main(&spiderpool_coordinator::Coordinator)
}
