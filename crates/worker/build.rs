//! Compiles the gRPC services of `proto/cluster_service.proto` with protox
//! (pure Rust: no system `protoc`); the messages of `cluster.proto` it
//! imports are `handover_cluster::pb`'s, not generated twice.
fn main() {
    for p in [
        "../../proto/cluster_service.proto",
        "../../proto/cluster.proto",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut compiler = protox::Compiler::new(["../../proto"]).expect("proto/ is readable");
    compiler.include_imports(true);
    compiler
        .open_files(["cluster_service.proto"])
        .expect("proto/cluster_service.proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".handover.cluster.v1", "::handover_cluster::pb")
        .compile_fds(compiler.file_descriptor_set())
        .expect("tonic generates the cluster services");
}
