//! The etcd v3 gRPC API over the store: the subset etcdctl, the `etcd-client` crate and
//! kube-apiserver use (KV, Watch, Lease, Maintenance, Cluster). The only module that knows
//! etcd's protobufs; it refuses what it does not implement with a clear Unimplemented.
mod convert;
mod kv;
mod lease;
mod maintenance;
mod watch;

use etcd_client::proto::*;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use self::convert::status;
pub use self::maintenance::ETCD_API_VERSION;
use super::Store;

/// PEM material for serving with mutual TLS.
#[derive(Clone)]
pub struct ServingTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// gRPC messages may exceed the request limit by etcd's allowance for framing.
const GRPC_OVERHEAD: usize = 512 * 1024;

/// Serves the etcd API on `listener` until `shutdown` fires.
pub async fn serve(
    store: Store,
    listener: tokio::net::TcpListener,
    tls: Option<ServingTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limit = super::MAX_REQUEST_BYTES + GRPC_OVERHEAD;
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(Certificate::from_pem(&tls.ca_pem)),
        )?;
    }
    let router = builder
        .add_service(
            PbKvServer::new(kv::KvService {
                store: store.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            PbWatchServer::new(watch::WatchService {
                store: store.clone(),
                shutdown: shutdown.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(PbLeaseServer::new(lease::LeaseService {
            store: store.clone(),
        }))
        .add_service(PbMaintenanceServer::new(maintenance::MaintenanceService {
            store: store.clone(),
        }))
        .add_service(PbClusterServer::new(maintenance::ClusterService { store }));
    // Without TCP_NODELAY, small responses wait out Nagle and delayed ACKs (40 ms stalls).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    );
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
