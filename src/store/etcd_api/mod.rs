//! The etcd v3 gRPC API over the store.
