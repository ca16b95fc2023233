//! Rust types generated from `proto/baton.proto`: the scheduler service, the executor
//! stream messages and the Flight tickets.
#![allow(missing_docs, clippy::large_enum_variant)]

tonic::include_proto!("baton");
