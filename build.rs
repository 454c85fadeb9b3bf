//! Compiles krab's own gRPC protocols (Raft peer transport; the etcd v3 protocol comes
//! compiled from the `etcd-client` crate) and the compact schema model of the built-in
//! kinds from the embedded OpenAPI document.
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "src/apiserver/openapi/model.rs"]
mod model;

use model::{Def, Field, Model, Ty};
use serde_json::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=embedded/openapi/swagger.json.gz");
    println!("cargo:rerun-if-changed=src/apiserver/openapi/model.rs");
    println!("cargo:rerun-if-changed=proto/k8s/json_fields.txt");
    tonic_prost_build::configure().compile_protos(&["proto/peer.proto"], &["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    k8s_descriptors(&out)?;
    let keep_zero = zero_fields("proto/k8s/json_fields.txt")?;
    let model = schema_model("embedded/openapi/swagger.json.gz", &keep_zero)?;
    std::fs::write(out.join("schema_model.bin"), postcard::to_stdvec(&model)?)?;
    Ok(())
}

/// The descriptor set of Kubernetes' protobuf messages, for decoding protobuf request bodies
/// at run time (no Rust code is generated for them).
fn k8s_descriptors(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/k8s");
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from("proto/k8s")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "proto") {
                files.push(p.strip_prefix("proto/k8s")?.to_path_buf());
            }
        }
    }
    files.sort();
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into());
    let status = std::process::Command::new(protoc)
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            out.join("k8s_descriptors.bin").display()
        ))
        .arg("-Iproto/k8s")
        .args(&files)
        .status()?;
    if !status.success() {
        return Err("protoc failed on proto/k8s".into());
    }
    Ok(())
}

/// The (OpenAPI definition, JSON field) pairs whose zero value Go writes (pointers and
/// fields without `omitempty`), from the rules json_fields.py derived from the Go types.
fn zero_fields(
    path: &str,
) -> Result<std::collections::HashSet<(String, String)>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let mut renames: HashMap<(String, String), String> = HashMap::new();
    let mut zero = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [msg, field, rule] = parts[..] else {
            continue;
        };
        // k8s.io.api.core.v1.Pod -> io.k8s.api.core.v1.Pod (and apiextensions_apiserver).
        let def = format!(
            "io.{}",
            msg.replacen("k8s.io.", "k8s.", 1)
                .replace("apiextensions_apiserver", "apiextensions-apiserver")
        );
        match rule {
            "zero" => zero.push((def, field.to_string())),
            r => {
                if let Some(n) = r.strip_prefix("name=") {
                    renames.insert((def, field.to_string()), n.to_string());
                }
            }
        }
    }
    Ok(zero
        .into_iter()
        .map(|(def, field)| {
            let json = renames
                .get(&(def.clone(), field.clone()))
                .cloned()
                .unwrap_or(field);
            (def, json)
        })
        .collect())
}

fn schema_model(
    path: &str,
    keep_zero: &std::collections::HashSet<(String, String)>,
) -> Result<Model, Box<dyn std::error::Error>> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    let doc: Value = serde_json::from_str(&text)?;
    let defs = doc["definitions"]
        .as_object()
        .ok_or("swagger.json has no definitions")?;
    // Object definitions get an index; primitive ones (Time, Quantity, ...) resolve inline.
    let mut names: Vec<&String> = defs.keys().filter(|n| is_object(&defs[*n])).collect();
    names.sort();
    let index: HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let mut model = Model::default();
    for name in &names {
        let def = &defs[*name];
        let mut fields: Vec<Field> = def["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(f, p)| Field {
                name: f.clone(),
                ty: ty(p, defs, &index),
                patch_strategy: p["x-kubernetes-patch-strategy"].as_str().map(String::from),
                merge_key: p["x-kubernetes-patch-merge-key"].as_str().map(String::from),
                list_type: p["x-kubernetes-list-type"].as_str().map(String::from),
                list_map_keys: p["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect(),
                omit_empty: !keep_zero.contains(&((*name).clone(), f.clone())),
            })
            .collect();
        fields.sort_by(|a, b| a.name.cmp(&b.name));
        let i = model.defs.len() as u32;
        for gvk in def["x-kubernetes-group-version-kind"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let s = |k: &str| gvk[k].as_str().unwrap_or("").to_string();
            model.kinds.push((s("group"), s("version"), s("kind"), i));
        }
        model.defs.push(Def {
            name: (*name).clone(),
            fields,
        });
    }
    model.kinds.sort();
    Ok(model)
}

/// A definition with fields of its own (not a primitive alias, not free-form).
fn is_object(def: &Value) -> bool {
    def.get("properties").is_some_and(|p| p.is_object())
}

fn ty(p: &Value, defs: &serde_json::Map<String, Value>, index: &HashMap<&str, u32>) -> Ty {
    if let Some(r) = p["$ref"].as_str() {
        let name = r.trim_start_matches("#/definitions/");
        if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
            return Ty::Quantity;
        }
        if let Some(i) = index.get(name) {
            return Ty::Ref(*i);
        }
        return match defs.get(name) {
            Some(d) => ty(d, defs, index),
            None => Ty::Any,
        };
    }
    match (p["type"].as_str(), p["format"].as_str()) {
        (Some("string"), Some("int-or-string")) => Ty::IntOrString,
        (Some("string"), _) => Ty::String,
        (Some("integer"), _) => Ty::Integer,
        (Some("number"), _) => Ty::Number,
        (Some("boolean"), _) => Ty::Boolean,
        (Some("array"), _) => Ty::Array(Box::new(ty(&p["items"], defs, index))),
        (Some("object"), _) if p.get("additionalProperties").is_some_and(|a| a.is_object()) => {
            Ty::Map(Box::new(ty(&p["additionalProperties"], defs, index)))
        }
        _ => Ty::Any,
    }
}
