//! Events as kube's event recorder writes them: core/v1 Events about an object, from a
//! component (and host). The same event again within 10 minutes raises the count and last
//! time of the one already written instead of adding another; one component may say at most
//! 25 things about one object at once, then one every 5 minutes (kube's spam filter).
//! Recording is best effort: failures are logged, never returned.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Repeats within this window are one event with a count.
const AGGREGATE: Duration = Duration::from_secs(600);
const BURST: f64 = 25.0;
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Remembered events and objects at most (the oldest are forgotten first).
const MEMORY: usize = 4096;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    component: String,
    namespace: String,
    object: String,
    field_path: String,
    type_: EventType,
    reason: String,
    message: String,
}

struct Seen {
    name: String,
    count: i32,
    first: Time,
    at: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Memory {
    seen: HashMap<Key, Seen>,
    buckets: HashMap<String, Bucket>,
}

/// Records Events for one component; clones share what was recorded.
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    memory: Arc<Mutex<Memory>>,
}

/// What to write for one call: a new event, or a count raised on an existing one.
enum Plan {
    Create {
        name: String,
        first: Time,
    },
    Bump {
        name: String,
        count: i32,
        first: Time,
    },
    Drop,
}

impl EventRecorder {
    pub fn new(client: kube::Client, component: &str, host: Option<String>) -> EventRecorder {
        EventRecorder {
            client,
            component: component.to_string(),
            host,
            memory: Arc::default(),
        }
    }

    /// The same recorder speaking as another component (a controller of the manager).
    pub fn for_component(&self, component: &str) -> EventRecorder {
        EventRecorder {
            component: component.to_string(),
            ..self.clone()
        }
    }

    pub async fn normal(&self, regarding: &ObjectReference, reason: &str, message: &str) {
        self.record(regarding, EventType::Normal, reason, message)
            .await
    }

    pub async fn warning(&self, regarding: &ObjectReference, reason: &str, message: &str) {
        self.record(regarding, EventType::Warning, reason, message)
            .await
    }

    /// Records one event about `regarding`.
    pub async fn record(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let namespace = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let object = format!(
            "{}/{}/{}",
            regarding.kind.as_deref().unwrap_or(""),
            regarding.name.as_deref().unwrap_or(""),
            regarding.uid.as_deref().unwrap_or("")
        );
        let key = Key {
            component: self.component.clone(),
            namespace: namespace.clone(),
            object: object.clone(),
            field_path: regarding.field_path.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let plan = self.plan(&key, &object, now);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let (name, count, first) = match plan {
            Plan::Drop => return,
            Plan::Bump { name, count, first } => {
                let patch = serde_json::json!({"count": count, "lastTimestamp": Time(now)});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return,
                    // Gone (expired or deleted): written anew below.
                    Err(e) => {
                        tracing::debug!(event = %name, error = %e, "event update failed; recording anew");
                        (name, count, first)
                    }
                }
            }
            Plan::Create { name, first } => (name, 1, first),
        };
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                namespace: Some(namespace.clone()).filter(|_| regarding.namespace.is_some()),
                ..regarding.clone()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.as_str().into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            first_timestamp: Some(first),
            last_timestamp: Some(Time(now)),
            count: Some(count),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            ..Default::default()
        };
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(namespace = %namespace, object = %object, reason, error = %e, "event not recorded");
        }
    }

    fn plan(&self, key: &Key, object: &str, now: k8s_openapi::jiff::Timestamp) -> Plan {
        match self.memory.lock() {
            Ok(mut memory) => memory.plan(
                key,
                format!("{}\u{0}{object}", self.component),
                now,
                Instant::now(),
            ),
            Err(_) => Plan::Drop,
        }
    }
}

impl Memory {
    /// Whether (and how) to write an event seen at `at`.
    fn plan(
        &mut self,
        key: &Key,
        bucket_key: String,
        now: k8s_openapi::jiff::Timestamp,
        at: Instant,
    ) -> Plan {
        // The spam filter: a token bucket per component and object.
        let bucket = self
            .buckets
            .entry(bucket_key)
            .or_insert(Bucket { tokens: BURST, at });
        let refill = at.duration_since(bucket.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(BURST);
        bucket.at = at;
        if bucket.tokens < 1.0 {
            return Plan::Drop;
        }
        bucket.tokens -= 1.0;
        if self.seen.len() > MEMORY {
            self.seen.retain(|_, s| at.duration_since(s.at) < AGGREGATE);
            if self.seen.len() > MEMORY {
                self.seen.clear();
            }
        }
        if self.buckets.len() > MEMORY {
            self.buckets.retain(|_, b| b.tokens < BURST);
        }
        match self.seen.get_mut(key) {
            Some(s) if at.duration_since(s.at) < AGGREGATE => {
                s.count += 1;
                s.at = at;
                Plan::Bump {
                    name: s.name.clone(),
                    count: s.count,
                    first: s.first.clone(),
                }
            }
            _ => {
                let name = format!(
                    "{}.{:x}",
                    key.object.split('/').nth(1).unwrap_or("object"),
                    now.as_nanosecond()
                );
                self.seen.insert(
                    key.clone(),
                    Seen {
                        name: name.clone(),
                        count: 1,
                        first: Time(now),
                        at,
                    },
                );
                Plan::Create {
                    name,
                    first: Time(now),
                }
            }
        }
    }
}

/// A reference to an object for an event's `involvedObject`.
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(message: &str) -> Key {
        Key {
            component: "c".into(),
            namespace: "ns".into(),
            object: "Pod/p/u".into(),
            field_path: String::new(),
            type_: EventType::Normal,
            reason: "Pulled".into(),
            message: message.into(),
        }
    }

    #[test]
    fn repeats_raise_the_count_and_spam_is_held_back() {
        let mut m = Memory::default();
        let now = k8s_openapi::jiff::Timestamp::now();
        let t0 = Instant::now();
        let name = match m.plan(&key("a"), "b".into(), now, t0) {
            Plan::Create { name, .. } => name,
            _ => panic!("first time is a new event"),
        };
        assert!(name.starts_with("p."), "{name}");
        match m.plan(&key("a"), "b".into(), now, t0 + Duration::from_secs(1)) {
            Plan::Bump { name: n, count, .. } => assert_eq!((n, count), (name.clone(), 2)),
            _ => panic!("a repeat raises the count"),
        }
        // After the aggregation window it is a new event.
        assert!(matches!(
            m.plan(
                &key("a"),
                "b".into(),
                now,
                t0 + AGGREGATE + Duration::from_secs(2)
            ),
            Plan::Create { .. }
        ));
        // 25 at once about one object, then held back until the bucket refills.
        let mut m = Memory::default();
        let written = (0..40)
            .filter(|i| {
                !matches!(
                    m.plan(&key(&i.to_string()), "b".into(), now, t0),
                    Plan::Drop
                )
            })
            .count();
        assert_eq!(written, 25);
        assert!(!matches!(
            m.plan(&key("late"), "b".into(), now, t0 + REFILL_EVERY),
            Plan::Drop
        ));
    }
}
