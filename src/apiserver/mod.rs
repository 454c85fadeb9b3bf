//! The Kubernetes API server: the only module that speaks Kubernetes HTTP, writes metav1
//! Status errors and writes `/registry` keys. Built so far: HTTPS with client-certificate
//! authentication, health/version, discovery, and generic create/get/list/watch/update/delete
//! for the resources in `resources`, with resourceVersion from the store's revisions.
mod auth;
mod discovery;
mod handlers;
mod health;
mod objects;
mod openapi;
mod patch;
mod protobuf;
mod registry;
mod request_info;
mod resources;
mod selector;
mod serve;
mod status;
mod strategic;
mod strategy;
mod subresources;
mod table;
mod validation;
mod watch;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::datastore::Datastore;
use crate::tls::cluster::ClusterTls;

pub use self::discovery::{KUBE_MAJOR, KUBE_MINOR};
pub use self::strategy::service::ServiceNetwork;

/// What the API server needs to know about the cluster it serves.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Where Service IPs and node ports come from.
    pub services: ServiceNetwork,
    /// The port clients reach the API server on (the `kubernetes` Service's target).
    pub port: u16,
}

/// Runs the API server on `listener` until `shutdown`.
pub async fn run(
    datastore: Datastore,
    config: ApiConfig,
    certs: &ClusterTls,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = registry::Registry::new(datastore, config.services.clone());
    let tls = serve::tls_config(
        &certs.serving.cert_pem,
        &certs.serving.key_pem,
        &certs.client_ca_pem,
    )?;
    let bootstrapped = health::Bootstrapped::default();
    let router = handlers::router(handlers::ApiState {
        registry: registry.clone(),
        shutdown: shutdown.clone(),
        bootstrapped: bootstrapped.clone(),
    });
    // Serving starts at once; the system objects follow as soon as the datastore takes
    // writes (a cluster may be regaining quorum), and /readyz says when.
    let bootstrap = bootstrap(registry, config.port, bootstrapped, shutdown.clone());
    let (served, ()) = tokio::join!(serve::serve(listener, tls, router, shutdown), bootstrap);
    served
}

/// Creates the system namespaces and the `kubernetes` Service, retrying until it can.
async fn bootstrap(
    registry: registry::Registry,
    port: u16,
    done: health::Bootstrapped,
    shutdown: CancellationToken,
) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let attempt = async {
            registry.ensure_system_namespaces().await?;
            registry.ensure_kubernetes_service(port).await
        };
        match attempt.await {
            Ok(()) => {
                done.set();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the system objects yet; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}
