//! Compiles `proto/cluster.proto` with protox (a protobuf compiler in pure
//! Rust), so a fresh machine needs no system `protoc`.
fn main() {
    let proto = "../../proto/cluster.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../../proto"]).expect("proto/cluster.proto compiles");
    prost_build::Config::new()
        // prost derives Eq only for messages of scalars; the table (Eq, so
        // tests compare whole tables) holds these.
        .message_attribute(".handover.cluster.v1.Registration", "#[derive(Eq)]")
        .message_attribute(".handover.cluster.v1.CallDetail", "#[derive(Eq)]")
        .message_attribute(".handover.cluster.v1.Detail", "#[derive(Eq)]")
        .compile_fds(fds)
        .expect("prost generates the cluster messages");
}
