//! Dynamic Resource Allocation for driver `spidernet.io`: what the node offers, as the devices of
//! ResourceSlices (`slices`), built from the inventory alone so the scheduler sees the same VFs,
//! RDMA devices and PCIe placement the inventory shows.

pub mod slices;
