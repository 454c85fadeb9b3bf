//! Black-box tests of the `krab` binary with real tools (etcdctl, etcd-server). One test
//! binary with modules, so the crate is linked once.
mod agent;
mod busybox_image;
mod cluster;
mod controlplane;
mod crash;
mod datastore;
mod disruption;
mod dualstack;
mod etcdctl;
mod failover;
mod join;
mod kinds;
mod kubectl;
mod multinode;
mod pods;
mod pods_support;
mod proxy_updates;
mod quota;
mod rbac;
mod rollouts;
mod scheduling;
mod services;
mod storage;
mod support;
mod tokens;
mod workloads;
