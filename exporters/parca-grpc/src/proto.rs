//! Messages and gRPC clients (and servers, for tests) of the Parca API,
//! generated at build time from `proto/`.

#![allow(missing_docs, clippy::all)]

/// `parca.profilestore.v1alpha1`.
pub mod profilestore {
    tonic::include_proto!("parca.profilestore.v1alpha1");
}

/// `parca.debuginfo.v1alpha1`.
pub mod debuginfo {
    tonic::include_proto!("parca.debuginfo.v1alpha1");
}

/// `parca.telemetry.v1alpha1`.
pub mod telemetry {
    tonic::include_proto!("parca.telemetry.v1alpha1");
}
