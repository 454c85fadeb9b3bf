//! Who is calling. Today: x509 client certificates signed by the cluster's client CA (the TLS
//! layer verifies the chain; here CN becomes the user name and O the groups, as in kube).
//! Anonymous callers reach only the health and version endpoints.
use x509_parser::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The verified client certificate of a connection, if it presented one.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<User>);

/// Reads the user from a verified client certificate (DER).
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}
