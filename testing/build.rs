//! Compiles kubelet's device plugin API (the `device-plugin` crate's copy of the proto) for the fake
//! kubelet, with protox (pure Rust): no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../device-plugin/proto";
    println!("cargo:rerun-if-changed={dir}/deviceplugin.proto");
    let fds = protox::compile(["deviceplugin.proto"], [dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
