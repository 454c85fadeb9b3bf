//! A pod's volumes on the node, under `<data-dir>/agent/pods/<uid>/volumes/<plugin>/<name>`:
//! emptyDir (tmpfs for medium Memory), hostPath, claims bound to hostPath or local
//! volumes, and the projections of API objects
//! (configMap, secret, downwardAPI, projected with service-account tokens) written the
//! kubelet's way: a timestamped directory behind a `..data` symlink, swapped atomically.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, ObjectFieldSelector, PersistentVolume, PersistentVolumeClaim, Pod,
    ResourceFieldSelector, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};

use super::env;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("volume {volume}: {message}")]
    Invalid { volume: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A volume ready to mount.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// When a projected token must be refreshed (80% of its life, as the kubelet does).
#[derive(Debug, Clone, Default)]
pub struct Refresh {
    pub tokens_due: Option<std::time::SystemTime>,
}

pub struct VolumeContext<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub pod_dir: &'a Path,
    pub node_allocatable: &'a BTreeMap<String, String>,
}

fn mount_tmpfs(dir: &Path) -> Result<(), Error> {
    if is_mountpoint(dir) {
        return Ok(());
    }
    use std::os::unix::ffi::OsStrExt;
    let target =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| Error::Invalid {
            volume: dir.display().to_string(),
            message: e.to_string(),
        })?;
    // SAFETY: mount(2) with valid C strings; failure is reported through errno.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            path: dir.display().to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_mountpoint(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(d.as_str()))
}

/// Unmounts whatever the pod's directory holds and removes it.
pub fn remove_pod_dir(pod_dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", pod_dir.display());
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Ok(c) = std::ffi::CString::new(t) {
            // SAFETY: umount2 with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Err(e) = std::fs::remove_dir_all(pod_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %pod_dir.display(), error = %e, "could not remove the pod directory");
        }
    }
}

/// Writes `files` into `dir` atomically: a fresh `..<stamp>` directory, `..data` pointing at
/// it, and one symlink per top-level name, so readers never see half an update.
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<(), Error> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if let Some(cur) = &current {
        // Unchanged content: nothing to do.
        let same = files
            .iter()
            .all(|(k, (v, _))| std::fs::read(dir.join(cur).join(k)).ok().as_ref() == Some(v))
            && count_files(&dir.join(cur)) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let ts = dir.join(&stamp);
    std::fs::create_dir_all(&ts).map_err(io(&ts))?;
    for (name, (bytes, mode)) in files {
        if name.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(Error::Invalid {
                volume: dir.display().to_string(),
                message: format!("invalid path {name:?}"),
            });
        }
        let path = ts.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
            .map_err(io(&path))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &data_link).map_err(io(&data_link))?;
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link).map_err(io(&link))?;
        }
    }
    // Names that are gone, and the previous generation.
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(cur) = current {
        let _ = std::fs::remove_dir_all(dir.join(cur));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}

fn project(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    volume: &str,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, Error> {
    let mut out = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let bytes = data.get(&item.key).cloned().ok_or_else(|| Error::Invalid {
                    volume: volume.to_string(),
                    message: format!(
                        "configuration error: key {:?} not found in {what}",
                        item.key
                    ),
                })?;
                out.insert(
                    item.path.clone(),
                    (bytes, item.mode.map(|m| m as u32).unwrap_or(default_mode)),
                );
            }
        }
        _ => {
            for (k, v) in data {
                out.insert(k, (v, default_mode));
            }
        }
    }
    Ok(out)
}

async fn config_map_data(
    ctx: &VolumeContext<'_>,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let ns = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(Some(data))
        }
        None if optional => Ok(None),
        None => Err(Error::NotFound {
            kind: "configmap",
            name: name.to_string(),
        }),
    }
}

async fn secret_data(
    ctx: &VolumeContext<'_>,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let ns = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await? {
        Some(s) => {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            data.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(Some(data))
        }
        None if optional => Ok(None),
        None => Err(Error::NotFound {
            kind: "secret",
            name: name.to_string(),
        }),
    }
}

fn downward_item(
    ctx: &VolumeContext<'_>,
    field: Option<&ObjectFieldSelector>,
    resource: Option<&ResourceFieldSelector>,
) -> Result<Vec<u8>, Error> {
    if let Some(f) = field {
        return env::field_value(ctx.pod, &f.field_path)
            .map(String::into_bytes)
            .map_err(|message| Error::Invalid {
                volume: "downwardAPI".into(),
                message,
            });
    }
    if let Some(r) = resource {
        return env::resource_value(ctx.pod, r, ctx.node_allocatable)
            .map(String::into_bytes)
            .map_err(|message| Error::Invalid {
                volume: "downwardAPI".into(),
                message,
            });
    }
    Ok(Vec::new())
}

async fn token(
    ctx: &VolumeContext<'_>,
    audience: Option<&str>,
    expiration: Option<i64>,
) -> Result<(Vec<u8>, std::time::SystemTime), Error> {
    let ns = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let seconds = expiration.unwrap_or(3600).max(600);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: ctx.pod.metadata.name.clone(),
                uid: ctx.pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };

    let issued: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await?;
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    let due =
        std::time::SystemTime::now() + std::time::Duration::from_secs((seconds as u64) * 8 / 10);
    Ok((token.into_bytes(), due))
}

/// Checks (or makes) a host path as its hostPath `type` asks.
fn host_path_type(volume: &str, path: &Path, type_: Option<&str>) -> Result<(), Error> {
    let shown = path.display();
    match type_.unwrap_or("") {
        "DirectoryOrCreate" => std::fs::create_dir_all(path).map_err(io(path))?,
        "FileOrCreate" if !path.exists() => {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            std::fs::write(path, b"").map_err(io(path))?;
        }
        "Directory" if !path.is_dir() => {
            return Err(Error::Invalid {
                volume: volume.to_string(),
                message: format!("hostPath type check failed: {shown} is not a directory"),
            })
        }
        "File" if !path.is_file() => {
            return Err(Error::Invalid {
                volume: volume.to_string(),
                message: format!("hostPath type check failed: {shown} is not a file"),
            })
        }
        _ => {}
    }
    Ok(())
}

/// The host directory behind a claim: its bound volume's hostPath or local path.
async fn claimed_path(
    ctx: &VolumeContext<'_>,
    volume: &str,
    claim: &str,
) -> Result<PathBuf, Error> {
    let ns = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(pvc) = claims.get_opt(claim).await? else {
        return Err(Error::NotFound {
            kind: "persistentvolumeclaim",
            name: claim.to_string(),
        });
    };
    let bound = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty());
    let Some(pv_name) = bound else {
        return Err(Error::Invalid {
            volume: volume.to_string(),
            message: format!("persistentvolumeclaim \"{claim}\" is not bound"),
        });
    };
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) = volumes.get_opt(&pv_name).await? else {
        return Err(Error::NotFound {
            kind: "persistentvolume",
            name: pv_name,
        });
    };
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = spec.host_path {
        let path = PathBuf::from(&h.path);
        host_path_type(volume, &path, h.type_.as_deref())?;
        return Ok(path);
    }
    if let Some(l) = spec.local {
        let path = PathBuf::from(&l.path);
        if !path.exists() {
            return Err(Error::Invalid {
                volume: volume.to_string(),
                message: format!("local volume {pv_name}: path {} does not exist", l.path),
            });
        }
        return Ok(path);
    }
    Err(Error::Invalid {
        volume: volume.to_string(),
        message: format!("persistentvolume {pv_name}: only hostPath and local volumes can be mounted by krab's agent"),
    })
}

/// Makes one volume ready (creating or refreshing its content); the path to mount.
pub async fn prepare(
    ctx: &VolumeContext<'_>,
    volume: &Volume,
    refresh: &mut Refresh,
) -> Result<Prepared, Error> {
    let base = ctx.pod_dir.join("volumes");
    let name = &volume.name;
    if let Some(h) = &volume.host_path {
        let path = PathBuf::from(&h.path);
        host_path_type(name, &path, h.type_.as_deref())?;
        return Ok(Prepared {
            host_path: path,
            read_only: false,
        });
    }
    if let Some(e) = &volume.empty_dir {
        let dir = base.join("kubernetes.io~empty-dir").join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if e.medium.as_deref() == Some("Memory") {
            mount_tmpfs(&dir)?;
        }
        return Ok(Prepared {
            host_path: dir,
            read_only: false,
        });
    }
    if let Some(cm) = &volume.config_map {
        let dir = base.join("kubernetes.io~configmap").join(name);
        let mode = cm.default_mode.unwrap_or(0o644) as u32;
        let files = match config_map_data(ctx, &cm.name, cm.optional.unwrap_or(false)).await? {
            Some(data) => project(
                data,
                cm.items.as_ref(),
                mode,
                &format!("configmap {:?}", cm.name),
                name,
            )?,
            None => BTreeMap::new(),
        };
        write_atomic(&dir, &files)?;
        return Ok(Prepared {
            host_path: dir,
            read_only: true,
        });
    }
    if let Some(s) = &volume.secret {
        let dir = base.join("kubernetes.io~secret").join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        mount_tmpfs(&dir)?;
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let files = match secret_data(ctx, &secret_name, s.optional.unwrap_or(false)).await? {
            Some(data) => project(
                data,
                s.items.as_ref(),
                mode,
                &format!("secret {secret_name:?}"),
                name,
            )?,
            None => BTreeMap::new(),
        };
        write_atomic(&dir, &files)?;
        return Ok(Prepared {
            host_path: dir,
            read_only: true,
        });
    }
    if let Some(d) = &volume.downward_api {
        let dir = base.join("kubernetes.io~downward-api").join(name);
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        let mut files = BTreeMap::new();
        for item in d.items.iter().flatten() {
            let bytes = downward_item(
                ctx,
                item.field_ref.as_ref(),
                item.resource_field_ref.as_ref(),
            )?;
            files.insert(
                item.path.clone(),
                (bytes, item.mode.map(|m| m as u32).unwrap_or(mode)),
            );
        }
        write_atomic(&dir, &files)?;
        return Ok(Prepared {
            host_path: dir,
            read_only: true,
        });
    }
    if let Some(p) = &volume.projected {
        let dir = base.join("kubernetes.io~projected").join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        mount_tmpfs(&dir)?;
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        let mut files = BTreeMap::new();
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                if let Some(data) =
                    config_map_data(ctx, &cm.name, cm.optional.unwrap_or(false)).await?
                {
                    files.extend(project(
                        data,
                        cm.items.as_ref(),
                        mode,
                        &format!("configmap {:?}", cm.name),
                        name,
                    )?);
                }
            }
            if let Some(s) = &source.secret {
                if let Some(data) = secret_data(ctx, &s.name, s.optional.unwrap_or(false)).await? {
                    files.extend(project(
                        data,
                        s.items.as_ref(),
                        mode,
                        &format!("secret {:?}", s.name),
                        name,
                    )?);
                }
            }
            if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    let bytes = downward_item(
                        ctx,
                        item.field_ref.as_ref(),
                        item.resource_field_ref.as_ref(),
                    )?;
                    files.insert(
                        item.path.clone(),
                        (bytes, item.mode.map(|m| m as u32).unwrap_or(mode)),
                    );
                }
            }
            if let Some(t) = &source.service_account_token {
                let (bytes, due) = token(ctx, t.audience.as_deref(), t.expiration_seconds).await?;
                refresh.tokens_due = Some(match refresh.tokens_due {
                    Some(d) if d < due => d,
                    _ => due,
                });
                // Tokens are readable by the pod's user only when fsGroup says so; 0600 is
                // the kubelet's mode for them otherwise... it uses the default mode.
                files.insert(t.path.clone(), (bytes, mode));
            }
        }
        write_atomic(&dir, &files)?;
        return Ok(Prepared {
            host_path: dir,
            read_only: true,
        });
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let path = claimed_path(ctx, name, &claim.claim_name).await?;
        return Ok(Prepared {
            host_path: path,
            read_only: claim.read_only.unwrap_or(false),
        });
    }
    Err(Error::Invalid {
        volume: name.clone(),
        message: "volume type not supported by krab's agent".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_swap_generations_and_drop_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("v");
        let mut files = BTreeMap::from([
            ("a".to_string(), (b"1".to_vec(), 0o644)),
            ("b".to_string(), (b"2".to_vec(), 0o644)),
        ]);
        write_atomic(&d, &files).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"1");
        files.remove("b");
        files.insert("a".into(), (b"3".to_vec(), 0o600));
        write_atomic(&d, &files).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"3");
        assert!(!d.join("b").exists());
        let gens = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("..2")
                    || e.file_name().to_string_lossy().starts_with("..1")
            })
            .count();
        assert_eq!(gens, 1);
        assert!(
            write_atomic(&d, &BTreeMap::from([("../x".to_string(), (vec![], 0o644))])).is_err()
        );
    }
}
