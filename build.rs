//! Compiles `proto/baton.proto`, and the parts of etcd's API in `proto/etcd/` that the
//! scheduler's etcd state store uses, into Rust with the pure-Rust `protox` compiler, so
//! a fresh machine needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/baton.proto");
    let descriptors = protox::compile(["proto/baton.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Channels are built by Baton itself; this also frees the name `connect` for the rpc.
        .build_transport(false)
        .bytes(".baton.RunTask.stage_plan")
        .bytes(".baton.TaskSucceeded.inline_result")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto/etcd");
    let etcd = protox::compile(
        [
            "proto/etcd/kv.proto",
            "proto/etcd/rpc.proto",
            "proto/etcd/election.proto",
        ],
        ["proto/etcd"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .compile_fds(etcd)?;
    Ok(())
}
