//! The kubelet's image garbage collector, as kube's: when the image filesystem is used at
//! or above `image-gc-high-threshold` percent, unused images are deleted, least recently
//! used first and none detected less than `image-minimum-gc-age` ago, until usage is back
//! at `image-gc-low-threshold`. Under disk pressure the eviction manager first deletes
//! every unused image the same way. Images in use by any container, pinned images (CRI's
//! `pinned`), the pause image and the air-gap images imported from
//! `<data-dir>/agent/images` (which an offline node could not pull back) are never deleted.
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agent::cri::{Cri, ImageInfo};

/// kube's `--image-gc-high-threshold`, `--image-gc-low-threshold`, `--image-minimum-gc-age`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageGcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
}

impl Default for ImageGcPolicy {
    /// kube's defaults (85%, 80%, 2 minutes).
    fn default() -> Self {
        ImageGcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

impl ImageGcPolicy {
    /// Sets one of the three kubelet settings by its flag name; false when `name` is not one.
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, String> {
        let percent = |v: &str| -> Result<u8, String> {
            v.parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("{v:?} is not a percentage between 0 and 100"))
        };
        match name {
            "image-gc-high-threshold" => self.high_percent = percent(value)?,
            "image-gc-low-threshold" => self.low_percent = percent(value)?,
            "image-minimum-gc-age" => self.min_age = crate::resources::duration::parse_go(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// kube's check of the pair.
    pub fn validate(&self) -> Result<(), String> {
        if self.low_percent > self.high_percent {
            return Err(format!(
                "image-gc-low-threshold ({}) must not exceed image-gc-high-threshold ({})",
                self.low_percent, self.high_percent
            ));
        }
        Ok(())
    }
}

/// When an image was first seen and last used by a container.
#[derive(Debug, Clone, Copy)]
struct Record {
    first_detected: Instant,
    last_used: Instant,
}

/// An image as the collector weighs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub size: u64,
    first_detected: Instant,
    last_used: Instant,
}

/// What one collection did.
#[derive(Debug, Default, PartialEq)]
pub struct Collected {
    pub deleted: Vec<String>,
    pub freed: u64,
}

pub struct ImageGc {
    pub policy: ImageGcPolicy,
    /// Image names never deleted: the pause image and the air-gap archives' images.
    keep: HashSet<String>,
    records: Mutex<HashMap<String, Record>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Runtime(#[from] crate::agent::cri::Error),
    #[error("the container runtime reports no image filesystem")]
    NoImageFs,
    #[error(
        "Failed to garbage collect required amount of images. Attempted to free {wanted} \
         bytes, but only found {freed} bytes eligible to free."
    )]
    NotEnough { wanted: u64, freed: u64 },
}

impl ImageGc {
    pub fn new(policy: ImageGcPolicy, keep: impl IntoIterator<Item = String>) -> ImageGc {
        ImageGc {
            policy,
            keep: keep.into_iter().collect(),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Notes which images exist and which are in use now; returns the unused ones that may
    /// be deleted, least recently used (then first detected) first.
    fn detect(
        &self,
        images: &[ImageInfo],
        in_use: &HashSet<String>,
        now: Instant,
    ) -> Vec<Candidate> {
        let Ok(mut records) = self.records.lock() else {
            return Vec::new();
        };
        records.retain(|id, _| images.iter().any(|i| &i.id == id));
        let mut out = Vec::new();
        for image in images {
            let r = records.entry(image.id.clone()).or_insert(Record {
                first_detected: now,
                last_used: now,
            });
            let used = in_use.contains(&image.id)
                || image.tags.iter().any(|t| in_use.contains(t))
                || image.tags.iter().any(|t| in_use.contains(&short_name(t)));
            if used {
                r.last_used = now;
                continue;
            }
            if image.pinned || image.tags.iter().any(|t| self.keep.contains(t)) {
                continue;
            }
            out.push(Candidate {
                id: image.id.clone(),
                size: image.size,
                first_detected: r.first_detected,
                last_used: r.last_used,
            });
        }
        out.sort_by_key(|c| (c.last_used, c.first_detected));
        out
    }

    /// The threshold round: deletes unused images when the image filesystem is used at or
    /// above the high threshold, down to the low one.
    pub async fn collect(&self, cri: &Cri) -> Result<Collected, Error> {
        let (capacity, available) = image_fs(cri).await?;
        let images = cri.list_images().await?;
        let in_use = images_in_use(cri).await?;
        let candidates = self.detect(&images, &in_use, Instant::now());
        if self.policy.high_percent >= 100 || capacity == 0 {
            return Ok(Collected::default());
        }
        let used_percent = 100 - (available.saturating_mul(100) / capacity);
        if used_percent < u64::from(self.policy.high_percent) {
            return Ok(Collected::default());
        }
        let wanted =
            (capacity * u64::from(100 - self.policy.low_percent) / 100).saturating_sub(available);
        tracing::info!(
            used_percent,
            high = self.policy.high_percent,
            wanted,
            "image filesystem over the high threshold: deleting unused images"
        );
        let done = self.delete(cri, candidates, wanted).await;
        if done.freed < wanted {
            return Err(Error::NotEnough {
                wanted,
                freed: done.freed,
            });
        }
        Ok(done)
    }

    /// Deletes every unused image old enough (the eviction manager's reclaim under disk
    /// pressure).
    pub async fn delete_unused(&self, cri: &Cri) -> Result<Collected, Error> {
        let images = cri.list_images().await?;
        let in_use = images_in_use(cri).await?;
        let candidates = self.detect(&images, &in_use, Instant::now());
        Ok(self.delete(cri, candidates, u64::MAX).await)
    }

    async fn delete(&self, cri: &Cri, candidates: Vec<Candidate>, wanted: u64) -> Collected {
        let mut done = Collected::default();
        for c in plan(candidates, Instant::now(), self.policy.min_age, wanted) {
            match cri.remove_image(&c.id).await {
                Ok(()) => {
                    tracing::info!(image = %c.id, size = c.size, "image garbage collected");
                    done.freed += c.size;
                    done.deleted.push(c.id);
                }
                Err(e) => tracing::warn!(image = %c.id, error = %e, "image not removed"),
            }
        }
        done
    }
}

/// The candidates to delete, in order, until `wanted` bytes would be freed; images detected
/// less than `min_age` ago are spared.
fn plan(
    candidates: Vec<Candidate>,
    now: Instant,
    min_age: Duration,
    wanted: u64,
) -> Vec<Candidate> {
    let mut freed = 0u64;
    let mut out = Vec::new();
    for c in candidates {
        if freed >= wanted {
            break;
        }
        if now.saturating_duration_since(c.first_detected) < min_age {
            continue;
        }
        freed = freed.saturating_add(c.size);
        out.push(c);
    }
    out
}

/// `docker.io/library/busybox:1.35` as pods name it (`busybox:1.35`).
fn short_name(tag: &str) -> String {
    tag.strip_prefix("docker.io/library/")
        .or_else(|| tag.strip_prefix("docker.io/"))
        .unwrap_or(tag)
        .to_string()
}

/// The ids and names of images any container (in any state) was created from.
async fn images_in_use(cri: &Cri) -> Result<HashSet<String>, Error> {
    let mut used = HashSet::new();
    for c in cri.list_containers().await? {
        used.insert(c.image_ref);
        used.insert(c.image);
    }
    used.remove("");
    Ok(used)
}

/// The image filesystem's capacity and available bytes.
async fn image_fs(cri: &Cri) -> Result<(u64, u64), Error> {
    let mountpoint = cri.image_fs_mountpoint().await?.ok_or(Error::NoImageFs)?;
    super::node::statvfs(std::path::Path::new(&mountpoint)).ok_or(Error::NoImageFs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tag: &str, size: u64, pinned: bool) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            tags: vec![tag.into()],
            size,
            pinned,
        }
    }

    #[test]
    fn settings_parse_and_the_low_threshold_stays_under_the_high_one() {
        let mut p = ImageGcPolicy::default();
        assert_eq!(p.set("image-gc-high-threshold", "60"), Ok(true));
        assert_eq!(p.set("image-gc-low-threshold", "50"), Ok(true));
        assert_eq!(p.set("image-minimum-gc-age", "30s"), Ok(true));
        assert_eq!(p.set("eviction-hard", "x"), Ok(false));
        assert_eq!(
            p,
            ImageGcPolicy {
                high_percent: 60,
                low_percent: 50,
                min_age: Duration::from_secs(30)
            }
        );
        assert!(p.validate().is_ok());
        assert!(p.set("image-gc-high-threshold", "101").is_err());
        p.set("image-gc-low-threshold", "70").unwrap();
        assert!(p.validate().unwrap_err().contains("must not exceed"));
    }

    #[test]
    fn unused_images_go_least_recently_used_first_and_kept_ones_never() {
        let gc = ImageGc::new(
            ImageGcPolicy::default(),
            ["docker.io/library/busybox:1.35".to_string()],
        );
        let t0 = Instant::now();
        let images = vec![
            image("sha256:a", "docker.io/library/old:1", 100, false),
            image("sha256:b", "docker.io/library/newer:1", 200, false),
            image("sha256:c", "docker.io/library/busybox:1.35", 300, false),
            image("sha256:d", "docker.io/rancher/pause:3", 10, true),
            image("sha256:e", "docker.io/library/web:1", 400, false),
        ];
        // a and b are in use at first; then only b. e was never used.
        let both: HashSet<String> = ["sha256:a".to_string(), "newer:1".to_string()].into();
        gc.detect(&images, &both, t0);
        gc.detect(&images, &both, t0 + Duration::from_secs(30));
        let only_b: HashSet<String> = ["newer:1".to_string()].into();
        let c = gc.detect(&images, &only_b, t0 + Duration::from_secs(60));
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        // Least recently used first; busybox (kept) and pause (pinned) never.
        assert_eq!(ids, ["sha256:e", "sha256:a"]);
        let later = |s| t0 + Duration::from_secs(s);
        let min_age = Duration::from_secs(120);
        // Nothing before the minimum age; after it, only as much as is wanted.
        assert!(plan(c.clone(), later(60), min_age, 150).is_empty());
        let ids = |p: Vec<Candidate>| p.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(plan(c.clone(), later(180), min_age, 150)), ["sha256:e"]);
        assert_eq!(
            ids(plan(c, later(180), min_age, 450)),
            ["sha256:e", "sha256:a"]
        );
        // Images that went away are forgotten.
        gc.detect(&images[1..], &only_b, t0 + Duration::from_secs(200));
        assert!(!gc.records.lock().unwrap().contains_key("sha256:a"));
    }
}
