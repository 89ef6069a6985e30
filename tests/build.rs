//! Compiles the CRI subset (tests/proto/cri.proto) for the CRI tier's client with protox (pure
//! Rust): no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    let fds = protox::compile(["cri.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
