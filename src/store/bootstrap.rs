//! Joining with nothing but a URL and a token (k3s's model): the token
//! `K10<sha256 of the peer CA certificate>::server:<secret>` lets a new server recognise the
//! cluster's CA in the first TLS handshake before it trusts anything, then fetch the CA over a
//! connection verified against it by proving it knows the secret.
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};

use tonic::transport::{Certificate, ClientTlsConfig};

use super::peer::pb;
use super::{Error, Result};

pub use crate::tls::token::{ca_hash, hex, Token};

fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Finds, in the chain `url` presents, the CA certificate the token names.
async fn ca_from_handshake(url: &str, want: &str) -> Result<String> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--server {url}: {e}")))?;
    let host = uri.host().unwrap_or("localhost").to_string();
    let port = uri.port_u16().unwrap_or(2380);
    // Anything is accepted here: the chain is only looked at, for the CA the token names.
    let config = crate::tls::insecure::client_config();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::Io(format!("timed out connecting to {url}")))?
    .map_err(|e| Error::Io(format!("cannot reach {url}: {e}")))?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| Error::InvalidArgument(format!("--server {url}: host {host:?}: {e}")))?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| Error::Io(format!("timed out in the TLS handshake with {url}")))?
        .map_err(|e| Error::Io(format!("TLS handshake with {url}: {e}")))?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    for cert in chain {
        if hex(&Sha256::digest(cert.as_ref())) == want {
            return Ok(der_to_pem(cert.as_ref()));
        }
    }
    Err(Error::InvalidArgument(format!(
        "{url} does not present the CA this token names (sha256 {want}): wrong token or wrong server"
    )))
}

/// What a joining server receives: certificate and key PEMs of the cluster's CAs.
pub struct ClusterCas {
    pub peer: (String, String),
    /// The API server's CAs (server, client); None when the first server has none yet.
    pub server: Option<(String, String)>,
    pub client: Option<(String, String)>,
    /// The service-account signing key; None when the first server has none yet.
    pub service_key: Option<String>,
}

/// Obtains the cluster's CAs from the server at `url`, trusting only a peer CA whose hash the
/// token carries.
pub async fn fetch_cluster_cas(url: &str, token: &str) -> Result<ClusterCas> {
    let token = Token::parse(token);
    let Some(want) = token.ca_hash.clone() else {
        return Err(Error::InvalidArgument(
            "this token has no CA hash (K10<hash>::server:<secret>); use the token from the first \
             server's <data-dir>/server/token"
                .into(),
        ));
    };
    let ca_pem = ca_from_handshake(url, &want).await?;
    // From here on the server is verified against that CA.
    let channel = super::peer::connect(
        url,
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .domain_name("localhost"),
    )
    .await?;
    let resp = pb::peer_client::PeerClient::new(channel)
        .bootstrap(pb::BootstrapRequest {
            token: token.secret.clone(),
        })
        .await
        .map_err(|s| Error::InvalidArgument(format!("{url} refused the token: {}", s.message())))?
        .into_inner();
    if ca_hash(&resp.ca_cert_pem).map_err(Error::InvalidArgument)? != want {
        return Err(Error::InvalidArgument(format!(
            "{url} handed over a CA that does not match the token"
        )));
    }
    let pair = |c: String, k: String| (!c.is_empty() && !k.is_empty()).then_some((c, k));
    Ok(ClusterCas {
        peer: (resp.ca_cert_pem, resp.ca_key_pem),
        server: pair(resp.server_ca_cert_pem, resp.server_ca_key_pem),
        client: pair(resp.client_ca_cert_pem, resp.client_ca_key_pem),
        service_key: (!resp.service_key_pem.is_empty()).then_some(resp.service_key_pem),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_and_without_a_ca_hash() {
        let t = Token::parse("K10ABCdef::server:s3cret");
        assert_eq!(t.ca_hash.as_deref(), Some("abcdef"));
        assert_eq!(t.secret, "s3cret");
        let t = Token::parse("plain-secret");
        assert_eq!((t.ca_hash, t.secret.as_str()), (None, "plain-secret"));
    }

    #[test]
    fn der_round_trips_through_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = der_to_pem(cert.der());
        assert_eq!(
            ca_hash(&pem).unwrap(),
            hex(&Sha256::digest(cert.der().as_ref()))
        );
    }
}
