//! Compiles the kubelet's DRA plugin and plugin registration APIs with protox (pure Rust): no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dra.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    let fds = protox::compile(["dra.proto", "pluginregistration.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
