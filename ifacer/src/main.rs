//! `ifacer`: exec'd by a container runtime as the first plugin of a chain.

fn main() {
    let plugin = spiderpool_ifacer::Ifacer {
        sysfs: spiderpool_linux::sysfs::Sysfs::new("/sys"),
    };
    spiderpool_cni::skel::main(&plugin)
}
