//! krab: a whole Kubernetes distribution in one executable. `main.rs` is a thin shell; every
//! module lives here so integration tests can reach them. See ARCHITECTURE.md for the map.
pub mod agent;
pub mod apiserver;
pub mod cidrs;
pub mod cli;
pub mod client;
pub mod config;
pub mod controllers;
pub mod host;
pub mod https;
pub mod lifecycle;
pub mod proxy;
pub mod resources;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
