//! The Kubernetes API server: the only module that speaks Kubernetes HTTP, writes metav1
//! Status errors and writes `/registry` keys. HTTPS with client-certificate authentication
//! for the world, and the same router in-process for krab's own loops (`router_as`).
mod admission_webhook;
mod apply;
mod auth;
mod crd;
mod discovery;
mod eviction;
mod follow;
mod handlers;
mod health;
mod impersonation;
mod json_duplicates;
mod kubelet_proxy;
mod metrics;
mod node_join;
mod objects;
mod openapi;
mod patch;
mod protobuf;
mod rbac;
mod registry;
mod representation;
mod request_info;
mod resources;
mod selector;
mod status;
mod strategic;
mod strategy;
mod subresources;
mod table;
mod tokens;
mod validation;
mod watch;
mod watch_cache;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::datastore::Datastore;
use crate::tls::cluster::ClusterTls;
use crate::tls::service_account::ServiceAccountKey;

pub use self::discovery::{kube_version, KUBE_MAJOR, KUBE_MINOR};
pub use self::kubelet_proxy::KubeletClientTls;
pub use self::node_join::NodeJoin;
pub use self::strategy::service_alloc::ServiceNetwork;

/// What the API server needs to know about the cluster it serves.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// The in-process loops' health, reported on /healthz and /readyz.
    pub loops: crate::lifecycle::health::LoopHealth,
    /// Where Service IPs and node ports come from.
    pub services: ServiceNetwork,
    /// The port clients reach the API server on (the `kubernetes` Service's target).
    pub port: u16,
    /// The address other nodes reach this API server at (the `kubernetes` endpoints).
    pub advertise: Option<std::net::IpAddr>,
    /// Signs and verifies service-account tokens; a key kept in memory only when None.
    pub service_account_key: Option<ServiceAccountKey>,
    /// How to reach kubelets (logs, exec, attach, port-forward); those fail with 503 if None.
    pub kubelet_client: Option<KubeletClientTls>,
    /// Lets agents join with the node token; None on servers that take no agents.
    pub node_join: Option<NodeJoin>,
    /// Whether LISTs and WATCHes are answered from the watch cache.
    pub watch_cache: bool,
}

/// The API server: its router (also reachable in-process, see `router_as`) and the tasks
/// that serve it.
pub struct ApiServer {
    registry: registry::Registry,
    router: axum::Router,
    bootstrapped: health::Bootstrapped,
    streams: crate::proxy::Streams,
    policy: rbac::PolicyCache,
    crds: crd::CustomResources,
    watch_cache: bool,
    port: u16,
    advertise: Option<std::net::IpAddr>,
}

/// Makes the API router as seen by an in-process caller.
#[derive(Clone)]
pub struct InProcessCallers(axum::Router);

impl InProcessCallers {
    /// The router as seen by `user` (name, groups; `system:authenticated` is added).
    pub fn router_as(&self, name: &str, groups: &[&str]) -> axum::Router {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        let user = auth::User {
            name: name.to_string(),
            groups,
        };
        self.0
            .clone()
            .layer(axum::Extension(auth::Caller(Some(user))))
    }
}

impl ApiServer {
    pub fn new(
        datastore: Datastore,
        config: ApiConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let registry = registry::Registry::new(datastore, config.services.clone());
        let bootstrapped = health::Bootstrapped::default();
        let streams = crate::proxy::Streams::new(shutdown.clone());
        let policy = rbac::PolicyCache::default();
        let crds = crd::CustomResources::default();
        let key = match config.service_account_key {
            Some(k) => k,
            None => ServiceAccountKey::generate()?,
        };
        let router = handlers::router(handlers::ApiState {
            registry: registry.clone(),
            shutdown,
            bootstrapped: bootstrapped.clone(),
            tokens: std::sync::Arc::new(tokens::TokenAuthority::new(key)),
            kubelets: std::sync::Arc::new(kubelet_proxy::KubeletClient::new(
                config.kubelet_client.as_ref(),
            )?),
            streams: streams.clone(),
            node_join: config.node_join.clone().map(std::sync::Arc::new),
            policy: policy.clone(),
            advertise: config.advertise,
            port: config.port,
            loops: config.loops.clone(),
            crds: crds.clone(),
        });
        Ok(ApiServer {
            crds,
            watch_cache: config.watch_cache,
            registry,
            router,
            bootstrapped,
            streams,
            policy,
            port: config.port,
            advertise: config.advertise,
        })
    }

    /// The router as seen by `user` (name, groups): what in-process loops call, with no
    /// socket and no TLS, authenticated as themselves.
    pub fn router_as(&self, name: &str, groups: &[&str]) -> axum::Router {
        self.callers().router_as(name, groups)
    }

    /// What makes routers for in-process callers, kept apart from the server so a loop can
    /// make clients for identities it learns later.
    pub fn callers(&self) -> InProcessCallers {
        InProcessCallers(self.router.clone())
    }

    /// Serves HTTPS on `listener` until `shutdown`; creates the system objects as soon as
    /// the datastore takes writes (a cluster may be regaining quorum), /readyz says when.
    pub async fn run(
        self,
        certs: &ClusterTls,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let tls = crate::https::tls_config(
            &certs.serving.cert_pem,
            &certs.serving.key_pem,
            &certs.client_ca_pem,
        )?;
        let policy = self.policy.run(self.registry.clone(), shutdown.clone());
        let crds = self.crds.run(self.registry.clone(), shutdown.clone());
        let webhooks = self
            .registry
            .webhooks
            .clone()
            .run(self.registry.clone(), shutdown.clone());
        let cache = {
            let cache = self.registry.cache.clone();
            let ds = self.registry.ds.clone();
            let shutdown = shutdown.clone();
            let enabled = self.watch_cache;
            async move {
                if enabled {
                    cache.run(ds, shutdown).await
                }
            }
        };
        let bootstrap = bootstrap(
            self.registry,
            self.port,
            self.advertise,
            self.bootstrapped,
            shutdown.clone(),
        );
        let (served, (), (), (), (), ()) = tokio::join!(
            crate::https::serve(listener, tls, self.router, shutdown),
            bootstrap,
            policy,
            crds,
            webhooks,
            cache
        );
        // Streams to kubelets end with the shutdown; wait for them to unwind.
        self.streams.drain(std::time::Duration::from_secs(5)).await;
        served
    }
}

/// Creates the system namespaces and the `kubernetes` and `kube-dns` Services, retrying until
/// it can.
async fn bootstrap(
    registry: registry::Registry,
    port: u16,
    advertise: Option<std::net::IpAddr>,
    done: health::Bootstrapped,
    shutdown: CancellationToken,
) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let attempt = async {
            registry.ensure_system_namespaces().await?;
            registry.ensure_system_priority_classes().await?;
            // Not essential to serving: a failure is reported, not retried forever.
            if let Err(e) = registry.ensure_local_api_services().await {
                tracing::warn!(error = %e, "cannot create the local APIServices");
            }
            rbac::bootstrap::ensure(&registry).await?;
            registry.ensure_kubernetes_service(port).await?;
            registry.ensure_kube_dns_service().await?;
            match advertise {
                Some(ip) => registry.ensure_kubernetes_endpoints(ip, port).await,
                None => Ok(()),
            }
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
