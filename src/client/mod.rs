//! Clients of the Kubernetes API for krab's own loops: the `kube` crate's client over a tower
//! service straight into the API server's router (no socket, no TLS), each loop under its own
//! identity, plus the Lease-based leader election the loops run under.
pub mod events;
mod leader;

pub use self::leader::{LeaderElection, LeaseConfig};

/// A `kube::Client` that calls `router` in-process. The router already carries the caller's
/// identity (the API server's `router_as`).
pub fn in_process(router: axum::Router) -> kube::Client {
    let service = tower::ServiceBuilder::new()
        .map_request(|req: axum::http::Request<kube::client::Body>| req.map(axum::body::Body::new))
        .service(router);
    kube::Client::new(service, "default")
}
