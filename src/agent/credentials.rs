//! A joined node's certificates while it runs: its client certificate (to the API server)
//! and serving certificate (the kubelet API) are held behind rustls resolvers, and renewed
//! from the server (with the join token, as at start) at 70–90% of their lifetime, as the
//! kubelet's certificate manager does. New connections present the new ones; nothing
//! restarts.
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::tls::cluster::NodeCredentials;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate chain and key from PEM.
fn certified(
    cert_pem: &str,
    key_pem: &str,
    what: &'static str,
) -> Result<Arc<CertifiedKey>, Error> {
    let pem = |e: &dyn std::fmt::Display| Error::Pem {
        what,
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| pem(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem(&e))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(certs, key)))
}

/// The node's current certificates, swapped in place on renewal.
#[derive(Debug)]
pub struct NodeIdentity {
    client: RwLock<Arc<CertifiedKey>>,
    serving: RwLock<Arc<CertifiedKey>>,
    /// When the client certificate was issued and when it expires.
    validity: RwLock<(SystemTime, SystemTime)>,
}

impl NodeIdentity {
    pub fn new(c: &NodeCredentials) -> Result<Arc<NodeIdentity>, Error> {
        Ok(Arc::new(NodeIdentity {
            client: RwLock::new(certified(
                &c.client_certificate,
                &c.client_key,
                "client certificate",
            )?),
            serving: RwLock::new(certified(
                &c.serving_certificate,
                &c.serving_key,
                "serving certificate",
            )?),
            validity: RwLock::new(validity(&c.client_certificate)?),
        }))
    }

    /// Takes renewed credentials.
    pub fn replace(&self, c: &NodeCredentials) -> Result<(), Error> {
        let client = certified(&c.client_certificate, &c.client_key, "client certificate")?;
        let serving = certified(
            &c.serving_certificate,
            &c.serving_key,
            "serving certificate",
        )?;
        let v = validity(&c.client_certificate)?;
        if let Ok(mut w) = self.client.write() {
            *w = client;
        }
        if let Ok(mut w) = self.serving.write() {
            *w = serving;
        }
        if let Ok(mut w) = self.validity.write() {
            *w = v;
        }
        Ok(())
    }

    /// When the client certificate should be renewed: at a random point between 70% and
    /// 90% of its lifetime (kube's jittered deadline).
    pub fn renewal_deadline(&self) -> SystemTime {
        let (from, to) = self
            .validity
            .read()
            .map(|v| *v)
            .unwrap_or((SystemTime::now(), SystemTime::now()));
        let life = to.duration_since(from).unwrap_or_default();
        from + life.mul_f64(rand::thread_rng().gen_range(0.7..0.9))
    }

    pub fn not_after(&self) -> SystemTime {
        self.validity
            .read()
            .map(|v| v.1)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// What the kubelet API serves with.
    pub fn serving_resolver(self: &Arc<Self>) -> Arc<dyn rustls::server::ResolvesServerCert> {
        Arc::new(ServingCert(self.clone()))
    }

    /// What connections to the API server present.
    pub fn client_resolver(self: &Arc<Self>) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(ClientCert(self.clone()))
    }
}

/// The notBefore and notAfter of the first certificate in `pem`.
fn validity(pem: &str) -> Result<(SystemTime, SystemTime), Error> {
    let bad = |m: String| Error::Pem {
        what: "client certificate",
        message: m,
    };
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| bad("no certificate".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

#[derive(Debug)]
struct ClientCert(Arc<NodeIdentity>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.client.read().ok().map(|c| c.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct ServingCert(Arc<NodeIdentity>);

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.serving.read().ok().map(|c| c.clone())
    }
}

/// The node's API client: HTTPS to `url`, trusting `ca_pem`, presenting whatever client
/// certificate `identity` holds when each connection is made.
pub fn node_client(
    url: &str,
    ca_pem: &str,
    identity: &Arc<NodeIdentity>,
) -> anyhow::Result<kube::Client> {
    use kube::client::ConfigExt;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| anyhow::anyhow!("server CA: {e}"))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity.client_resolver());
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let config = kube::Config::new(url.parse()?);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Renews the node's credentials before they expire, for as long as the agent runs.
pub struct CredentialRenewer {
    pub url: String,
    pub token: String,
    pub node: String,
    pub addresses: Vec<String>,
    pub data_dir: std::path::PathBuf,
    pub identity: Arc<NodeIdentity>,
}

impl CredentialRenewer {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let deadline = self.identity.renewal_deadline();
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tracing::debug!(node = %self.node, wait_secs = wait.as_secs(), "next certificate renewal");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            match super::join::renew(
                &self.url,
                &self.token,
                &self.node,
                &self.addresses,
                &self.data_dir,
            )
            .await
            .map_err(anyhow::Error::from)
            .and_then(|c| self.identity.replace(&c).map_err(anyhow::Error::from))
            {
                Ok(()) => {
                    let until: time::OffsetDateTime = self.identity.not_after().into();
                    tracing::info!(node = %self.node, valid_until = %until, "node certificates renewed");
                }
                Err(e) => {
                    // Retried until it works or the certificate runs out (then every call
                    // fails with 401 and says so).
                    tracing::warn!(node = %self.node, error = %e, "node certificate renewal failed; retrying in 30 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::tls::cluster::issue_node_credentials(
            dir.path(),
            "n1",
            &["10.0.0.5".into()],
            Duration::from_secs(1000),
        )
        .unwrap();
        let id = NodeIdentity::new(&c).unwrap();
        let (from, to) = *id.validity.read().unwrap();
        // 1000 s from now, backdated by a tenth.
        assert_eq!(to.duration_since(from).unwrap().as_secs(), 1100);
        for _ in 0..20 {
            let at = id
                .renewal_deadline()
                .duration_since(from)
                .unwrap()
                .as_secs();
            assert!((770..=990).contains(&at), "{at}");
        }
        let renewed = crate::tls::cluster::issue_node_credentials(
            dir.path(),
            "n1",
            &[],
            Duration::from_secs(5000),
        )
        .unwrap();
        id.replace(&renewed).unwrap();
        assert!(id.not_after() > to + Duration::from_secs(3000));
    }
}
