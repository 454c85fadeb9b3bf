//! A watched kind kept in memory by key (the service proxy's and the DNS server's view of
//! Services and EndpointSlices), with helpers naming objects the way both index them.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

/// Waits until `api` may be listed (the API server is up and its default RBAC policy is in):
/// watches started earlier would fail their first lists and log it. False on shutdown.
pub async fn wait_until_listable<K>(
    api: &kube::Api<K>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = kube::api::ListParams::default().limit(1);
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match api.list_metadata(&params).await {
            Ok(_) => return true,
            Err(e) => tracing::debug!(error = %e, "not listable yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Objects of one kind by key, with kube's list-then-watch semantics: a re-list replaces the
/// whole set at its end, reporting every key that may have changed.
pub struct Mirror<K> {
    pub now: HashMap<String, Arc<K>>,
    listing: Option<HashMap<String, Arc<K>>>,
    pub synced: bool,
}

impl<K> Mirror<K> {
    pub fn new() -> Self {
        Mirror {
            now: HashMap::new(),
            listing: None,
            synced: false,
        }
    }

    /// Applies one watcher event; returns the keys that may have changed.
    pub fn apply(&mut self, ev: watcher::Event<K>, key: impl Fn(&K) -> String) -> Vec<String> {
        match ev {
            watcher::Event::Apply(o) => {
                let k = key(&o);
                self.now.insert(k.clone(), Arc::new(o));
                vec![k]
            }
            watcher::Event::Delete(o) => {
                let k = key(&o);
                self.now.remove(&k);
                vec![k]
            }
            watcher::Event::Init => {
                self.listing = Some(HashMap::new());
                vec![]
            }
            watcher::Event::InitApply(o) => {
                let k = key(&o);
                self.listing
                    .get_or_insert_with(HashMap::new)
                    .insert(k, Arc::new(o));
                vec![]
            }
            watcher::Event::InitDone => {
                let fresh = self.listing.take().unwrap_or_default();
                let mut keys: Vec<String> = self.now.keys().cloned().collect();
                keys.extend(fresh.keys().cloned());
                self.now = fresh;
                self.synced = true;
                keys
            }
        }
    }
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// `<namespace>/<name>`.
pub fn object_key(m: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default()
    )
}

/// The service a slice belongs to (`<ns>/<service>`).
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!(
        "{}/{}",
        s.metadata.namespace.clone().unwrap_or_default(),
        name
    ))
}

/// EndpointSlices by the service they belong to.
#[derive(Default)]
pub struct SliceIndex {
    /// Slices by service key, then by slice key.
    pub by_service: HashMap<String, BTreeMap<String, Arc<EndpointSlice>>>,
    /// The service each slice is indexed under.
    owner: HashMap<String, String>,
}

impl SliceIndex {
    /// Re-indexes the slices named by `keys` (as `Mirror::apply` reports them); returns the
    /// services touched: the one a slice belonged to and the one it belongs to now.
    pub fn update(&mut self, keys: &[String], slices: &Mirror<EndpointSlice>) -> Vec<String> {
        let mut touched = Vec::new();
        for k in keys {
            if let Some(old) = self.owner.remove(k) {
                if let Some(m) = self.by_service.get_mut(&old) {
                    m.remove(k);
                    if m.is_empty() {
                        self.by_service.remove(&old);
                    }
                }
                touched.push(old);
            }
            if let Some(s) = slices.now.get(k) {
                if let Some(svc) = slice_service(s) {
                    self.by_service
                        .entry(svc.clone())
                        .or_default()
                        .insert(k.clone(), s.clone());
                    self.owner.insert(k.clone(), svc.clone());
                    touched.push(svc);
                }
            }
        }
        touched
    }

    /// The slices of one service.
    pub fn of(&self, service: &str) -> Vec<&EndpointSlice> {
        self.by_service
            .get(service)
            .map(|m| m.values().map(|s| s.as_ref()).collect())
            .unwrap_or_default()
    }
}
