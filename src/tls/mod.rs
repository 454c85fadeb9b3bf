//! Certificates: a CA per purpose, leaf certificates it signs, and the files they live in
//! (k3s's layout under `<data-dir>/server/tls`). The cluster CAs (`cluster`) and the peer CA
//! are created by the first server and handed to joining servers through the token
//! bootstrap; the etcd client CA is per server.
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub mod cluster;
pub mod insecure;
pub mod service_account;
pub mod token;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The I/O error is part of the message, not a separate cause (printed once).
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a usable certificate or key: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A certificate authority loaded from or written to `<name>.crt` / `<name>.key`.
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

/// A leaf certificate and its key, in PEM, with the paths they were written to.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    Both,
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

fn write_public(path: &Path, data: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

fn read_pair(cert: &Path, key: &Path) -> Result<Option<(String, String)>> {
    match (std::fs::read_to_string(cert), std::fs::read_to_string(key)) {
        (Ok(c), Ok(k)) => Ok(Some((c, k))),
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        (Err(e), _) => Err(io(cert)(e)),
        (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        (_, Err(e)) => Err(io(key)(e)),
    }
}

impl Ca {
    /// Loads `<dir>/<name>.crt|.key`, or creates a new CA there.
    pub fn ensure(dir: &Path, name: &str, common_name: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        if let Some((cert_pem, key_pem)) = read_pair(&cert_path, &key_path)? {
            KeyPair::from_pem(&key_pem).map_err(|e| Error::Invalid {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            return Ok(Ca { cert_pem, key_pem });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{common_name}@{}", now_secs()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = years_from_now(10);
        let cert = params.self_signed(&key)?;
        let ca = Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write_private(&key_path, &ca.key_pem)?;
        write_public(&cert_path, &ca.cert_pem)?;
        Ok(ca)
    }

    /// Loads `<dir>/<name>.crt|.key` when present and signed by this CA, else issues them.
    pub fn ensure_leaf(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: Usage,
    ) -> Result<Leaf> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        if let Some((cert_pem, key_pem)) = read_pair(&cert_path, &key_path)? {
            // Reissue when the SANs asked for changed (a new address, say); keep otherwise.
            let marker = dir.join(format!("{name}.sans"));
            let wanted = sans.join(",");
            if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
                return Ok(Leaf {
                    cert_pem,
                    key_pem,
                    cert_path,
                    key_path,
                });
            }
        }
        let (cert_pem, key_pem) = self.issue(common_name, organization, sans, usage)?;
        let leaf = Leaf {
            cert_pem,
            key_pem,
            cert_path,
            key_path,
        };
        write_private(&leaf.key_path, &leaf.key_pem)?;
        write_public(&leaf.cert_path, &leaf.cert_pem)?;
        write_public(&dir.join(format!("{name}.sans")), &sans.join(","))?;
        Ok(leaf)
    }

    /// A new leaf certificate and key (PEM) signed by this CA, valid for a year.
    pub fn issue(
        &self,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: Usage,
    ) -> Result<(String, String)> {
        self.issue_valid_for(common_name, organization, sans, usage, None)
    }

    /// As `issue`, valid for `validity` from now (backdated by a tenth of it, at most five
    /// minutes, for clocks a little behind, as kube's signer does) when given.
    pub fn issue_valid_for(
        &self,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: Usage,
        validity: Option<std::time::Duration>,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            dn.push(DnType::OrganizationName, o);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s.clone().try_into().map(SanType::DnsName),
            })
            .collect::<std::result::Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        match validity.and_then(|v| time::Duration::try_from(v).ok()) {
            Some(v) => {
                let now = time::OffsetDateTime::now_utc();
                let backdate: time::Duration = (v / 10_i32).min(time::Duration::minutes(5));
                params.not_before = now - backdate;
                params.not_after = now + v;
            }
            None => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = years_from_now(1);
            }
        }
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn years_from_now(years: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(365 * years)
}

/// The etcd endpoint's certificates, where k3s keeps them.
pub struct EtcdTls {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server: Leaf,
    pub client: Leaf,
    pub peer_ca_pem: String,
    /// Handed to servers joining with the cluster token (they issue their own peer certificate).
    pub peer_ca_key_pem: String,
    pub peer: Leaf,
}

/// Installs a CA received from another server as `<dir>/<name>.crt|.key`.
pub fn install_ca(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    KeyPair::from_pem(key_pem).map_err(|e| Error::Invalid {
        path: dir.join(format!("{name}.key")),
        reason: e.to_string(),
    })?;
    write_private(&dir.join(format!("{name}.key")), key_pem)?;
    write_public(&dir.join(format!("{name}.crt")), cert_pem)?;
    Ok(())
}

/// Installs the service-account signing key received from another server.
pub fn install_service_key(dir: &Path, pem: &str) -> Result<()> {
    let path = dir.join("service.key");
    service_account::ServiceAccountKey::from_pem(pem).map_err(|reason| Error::Invalid {
        path: path.clone(),
        reason,
    })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&path, pem)
}

/// Ensures `<data-dir>/server/tls/etcd/{server-ca,server-client,client,peer-ca,
/// peer-server-client}.{crt,key}` exist, so etcdctl works against the store at once.
pub fn ensure_etcd(data_dir: &Path, sans: &[String]) -> Result<EtcdTls> {
    let dir = data_dir.join("server").join("tls").join("etcd");
    let ca = Ca::ensure(&dir, "server-ca", "etcd-server-ca")?;
    let server = ca.ensure_leaf(
        &dir,
        "server-client",
        "etcd-server",
        None,
        sans,
        Usage::Both,
    )?;
    let client = ca.ensure_leaf(&dir, "client", "etcd-client", None, &[], Usage::Client)?;
    let peer_ca = Ca::ensure(&dir, "peer-ca", "etcd-peer-ca")?;
    let peer = peer_ca.ensure_leaf(
        &dir,
        "peer-server-client",
        "etcd-peer",
        None,
        sans,
        Usage::Both,
    )?;
    Ok(EtcdTls {
        dir,
        ca_pem: ca.cert_pem,
        server,
        client,
        peer_ca_pem: peer_ca.cert_pem,
        peer_ca_key_pem: peer_ca.key_pem,
        peer,
    })
}
