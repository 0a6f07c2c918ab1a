//! Compiles `proto/cluster.proto` with protox (a protobuf compiler in pure
//! Rust), so a fresh machine needs no system `protoc`.
fn main() {
    let proto = "../../proto/cluster.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../../proto"]).expect("proto/cluster.proto compiles");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generates the cluster messages");
}
