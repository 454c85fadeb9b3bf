//! LIST: one page at one revision. Pages of a paginated list all read the first page's
//! revision (the continue token carries it); a token whose revision was compacted is 410
//! Gone, as in kube.
use serde_json::{json, Value};

use super::super::objects;
use super::super::resources::Resource;
use super::super::selector::Filter;
use super::super::status::ApiError;
use super::{decode, Registry};
use crate::store::types::*;

pub struct ListOptions {
    pub filter: Filter,
    /// 0: the current revision.
    pub revision: Revision,
    /// At most this many items (0: all), with a continue token for the rest.
    pub limit: i64,
    /// Where an earlier page stopped.
    pub continue_token: Option<String>,
}

impl ListOptions {
    /// Everything, now.
    pub fn all() -> Self {
        ListOptions {
            filter: Filter::default(),
            revision: 0,
            limit: 0,
            continue_token: None,
        }
    }
}

/// One page of a list (of decoded objects, or of their JSON).
pub struct Page<T = Value> {
    pub items: Vec<T>,
    pub revision: Revision,
    /// Set when more items remain; pass it back as `continue`.
    pub continue_token: Option<String>,
    /// How many more items there are after this page (an estimate when selectors apply).
    pub remaining: Option<i64>,
}

/// The continue token: the revision every page is read at, and the key to go on after, as
/// kube's (base64 of a small JSON document).
fn encode_continue(revision: Revision, last_key: &[u8], prefix: &[u8]) -> String {
    use base64::Engine;
    let start = String::from_utf8_lossy(&last_key[prefix.len().min(last_key.len())..]).into_owned();
    let doc = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(doc.to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = doc.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = doc.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rv, start.to_string()))
}

/// A stored object's JSON with its resourceVersion set, copying every field as it is and
/// decoding only the labels a selector reads (lists of many large objects stay cheap). None
/// when the filter does not select it.
fn raw_item(kv: &KeyValue, filter: &Filter) -> Result<Option<Vec<u8>>, ApiError> {
    use serde_json::value::RawValue;
    let bad = |e: serde_json::Error| {
        ApiError::internal(format!(
            "stored object at {} is not valid JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    };
    if !filter.fields.is_empty() {
        // Field selectors read anywhere in the object: decode it whole.
        let obj = objects::with_resource_version(decode(kv)?, kv.mod_revision);
        return Ok(filter
            .matches(&obj)
            .then(|| serde_json::to_vec(&obj).unwrap_or_default()));
    }
    if filter.labels.is_empty() {
        if let Some(out) = with_resource_version(&kv.value, kv.mod_revision) {
            return Ok(Some(out));
        }
    }
    let top: Vec<(String, &RawValue)> = entries(&kv.value).map_err(bad)?;
    let meta: Vec<(String, &RawValue)> = match top.iter().find(|(k, _)| k == "metadata") {
        Some((_, m)) => entries(m.get().as_bytes()).map_err(bad)?,
        None => Vec::new(),
    };
    if !filter.labels.is_empty() {
        let labels: Option<serde_json::Map<String, Value>> =
            match meta.iter().find(|(k, _)| k == "labels") {
                Some((_, l)) => serde_json::from_str(l.get()).map_err(bad)?,
                None => None,
            };
        if !filter.labels.matches_labels(labels.as_ref()) {
            return Ok(None);
        }
    }
    let rv = format!("\"{}\"", kv.mod_revision);
    let mut out = Vec::with_capacity(kv.value.len() + 32);
    let write_meta = |out: &mut Vec<u8>| {
        out.push(b'{');
        for (k, v) in meta.iter().filter(|(k, _)| k != "resourceVersion") {
            put(out, k, v.get().as_bytes());
        }
        put(out, "resourceVersion", rv.as_bytes());
        out.push(b'}');
    };
    out.push(b'{');
    for (k, v) in &top {
        if k == "metadata" {
            put_key(&mut out, k);
            write_meta(&mut out);
        } else {
            put(&mut out, k, v.get().as_bytes());
        }
    }
    if !top.iter().any(|(k, _)| k == "metadata") {
        put_key(&mut out, "metadata");
        write_meta(&mut out);
    }
    out.push(b'}');
    Ok(Some(out))
}

/// The stored JSON with `"resourceVersion":"<rev>"` put first in its metadata, found by
/// scanning only the members before `metadata` (stored objects are written with sorted keys:
/// `apiVersion`, `kind`, then `metadata`). None when the object does not have that shape or
/// mentions a resourceVersion anywhere (the caller then rebuilds the metadata).
fn with_resource_version(json: &[u8], revision: Revision) -> Option<Vec<u8>> {
    if memchr::memmem::find(json, b"\"resourceVersion\"").is_some() {
        return None;
    }
    let at = metadata_body(json)?;
    let rv = format!("\"resourceVersion\":\"{revision}\"");
    let mut out = Vec::with_capacity(json.len() + rv.len() + 1);
    out.extend_from_slice(&json[..at]);
    out.extend_from_slice(rv.as_bytes());
    let rest = &json[at..];
    if rest.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Where the members of the top-level `metadata` object start (just past its `{`).
fn metadata_body(json: &[u8]) -> Option<usize> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        let key_start = i;
        i = skip_string(json, i)?;
        let key = &json[key_start..i];
        i = skip_ws(json, i);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(json, i + 1);
        if key == b"\"metadata\"" {
            return (json.get(i) == Some(&b'{')).then_some(i + 1);
        }
        i = skip_value(json, i)?;
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Past the string starting at `i` (its opening quote).
fn skip_string(json: &[u8], i: usize) -> Option<usize> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match json.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// Past the value starting at `i`: strings, nested objects and arrays, literals.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => skip_string(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = skip_string(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while json
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of a JSON object, in order, with their values left as raw JSON.
fn entries(bytes: &[u8]) -> Result<Vec<(String, &serde_json::value::RawValue)>, serde_json::Error> {
    struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);
    impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
                type Value = Members<'a>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<M: serde::de::MapAccess<'de>>(
                    self,
                    mut m: M,
                ) -> Result<Self::Value, M::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = m.next_entry()? {
                        out.push(entry);
                    }
                    Ok(Members(out))
                }
            }
            d.deserialize_map(Visit(std::marker::PhantomData))
        }
    }
    serde_json::from_slice::<Members>(bytes).map(|m| m.0)
}

/// Writes `"key":` after a comma unless the object so far is only its `{`.
fn put_key(out: &mut Vec<u8>, key: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
    out.push(b':');
}

fn put(out: &mut Vec<u8>, key: &str, raw: &[u8]) {
    put_key(out, key);
    out.extend_from_slice(raw);
}

impl Registry {
    pub async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Page, ApiError> {
        self.page(r, ns, opts, |kv| {
            let mut obj = objects::with_resource_version(decode(kv)?, kv.mod_revision);
            super::served_at(r, &mut obj);
            Ok(opts.filter.matches(&obj).then_some(obj))
        })
        .await
    }

    /// LIST as JSON documents, for answering a LIST without building object trees.
    pub async fn list_json(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Page<Vec<u8>>, ApiError> {
        if super::converts(r) {
            // Each item's apiVersion changes: build them.
            let page = self.list(r, ns, opts).await?;
            return Ok(Page {
                items: page
                    .items
                    .iter()
                    .map(|o| serde_json::to_vec(o).unwrap_or_default())
                    .collect(),
                revision: page.revision,
                continue_token: page.continue_token,
                remaining: page.remaining,
            });
        }
        self.page(r, ns, opts, |kv| raw_item(kv, &opts.filter))
            .await
    }

    async fn page<T>(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
        item: impl Fn(&KeyValue) -> Result<Option<T>, ApiError>,
    ) -> Result<Page<T>, ApiError> {
        let prefix = r.prefix(ns);
        if opts.revision == 0 && opts.limit == 0 && opts.continue_token.is_none() {
            // The current state of a whole collection: from memory once the cache has
            // caught up with the store.
            if let Some((revision, kvs)) = self.cache.list(&self.ds, &prefix, 0).await {
                let mut items = Vec::new();
                for kv in &kvs {
                    if let Some(x) = item(kv)? {
                        items.push(x);
                    }
                }
                return Ok(Page {
                    items,
                    revision,
                    continue_token: None,
                    remaining: None,
                });
            }
        }
        let end = prefix_end(&prefix);
        let (mut revision, mut start) = match &opts.continue_token {
            Some(t) => {
                let (rv, start) = decode_continue(t)?;
                let mut key = prefix.clone();
                key.extend_from_slice(start.as_bytes());
                (rv, key)
            }
            None => (opts.revision, prefix.clone()),
        };
        let mut items = Vec::new();
        loop {
            // With a selector, keep reading until the page is full or the range is done.
            let want = if opts.limit > 0 {
                opts.limit - items.len() as i64
            } else {
                0
            };
            let resp = self
                .ds
                .range(RangeRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    revision,
                    limit: want,
                    ..Default::default()
                })
                .await
                .map_err(|e| match e {
                    crate::store::Error::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ),
                    other => other.into(),
                })?;
            if revision == 0 {
                revision = resp.revision;
            }
            let mut last = None;
            for kv in &resp.kvs {
                if let Some(x) = item(kv)? {
                    items.push(x);
                }
                last = Some(kv.key.clone());
            }
            let full = opts.limit > 0 && items.len() as i64 >= opts.limit;
            match (resp.more, last) {
                (true, Some(last_key)) if full => {
                    let remaining = (resp.count - resp.kvs.len() as i64).max(0);
                    return Ok(Page {
                        items,
                        revision,
                        continue_token: Some(encode_continue(revision, &last_key, &prefix)),
                        remaining: Some(remaining),
                    });
                }
                (true, Some(last_key)) => {
                    start = last_key;
                    start.push(0);
                }
                _ => {
                    return Ok(Page {
                        items,
                        revision,
                        continue_token: None,
                        remaining: None,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str, filter: &Filter) -> Option<Value> {
        let kv = KeyValue {
            key: b"/registry/pods/default/p".to_vec(),
            value: json.as_bytes().to_vec(),
            mod_revision: 42,
            ..Default::default()
        };
        raw_item(&kv, filter)
            .unwrap()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn items_get_their_resource_version_whatever_their_shape() {
        let all = Filter::default();
        for (stored, meta) in [
            (
                r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{}}"#,
                json!({"name": "p", "resourceVersion": "42"}),
            ),
            (
                r#" { "apiVersion" : "v\"1" , "kind":"Pod", "metadata" : { } }"#,
                json!({"resourceVersion": "42"}),
            ),
            (
                r#"{"a":[1,{"b":"}"}],"n":-1.5e3,"t":true,"metadata":{"x":1}}"#,
                json!({"x": 1, "resourceVersion": "42"}),
            ),
            (r#"{"spec":{}}"#, json!({"resourceVersion": "42"})),
            (
                r#"{"metadata":{"name":"p","resourceVersion":"7"}}"#,
                json!({"name": "p", "resourceVersion": "42"}),
            ),
        ] {
            assert_eq!(item(stored, &all).unwrap()["metadata"], meta, "{stored}");
        }
    }
}
