//! Who is calling: krab's own loops in-process (`Caller`), or an x509 client certificate
//! signed by the cluster's client CA (the TLS layer verifies the chain; here CN becomes the
//! user name and O the groups, as in kube). Bearer tokens are `tokens`' business.
//! Anonymous callers reach only the health and version endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The caller of an in-process request (krab's own loops), attached by `router_as`.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<User>);

/// Reads the user from a verified client certificate (DER).
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (name, mut groups) = crate::https::cert_subject(der)?;
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}
