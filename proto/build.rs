//! Compiles proto/manifold.proto with protox (pure Rust), so building the API
//! needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/manifold/v1/manifold.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // prost's codec, with a malformed message as InvalidArgument (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
