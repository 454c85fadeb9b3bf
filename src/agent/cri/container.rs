//! A container's runtime configuration: image, command, environment (already resolved by the
//! kubelet), mounts, log path, resources as cgroup values and the security context.
use std::collections::HashMap;

use k8s_cri::v1 as pb;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::Cri;

/// Paths the kubelet masks or makes read-only in every unprivileged container.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, Clone)]
pub struct MountSpec {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
}

/// Everything the kubelet resolved for one container start.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub config: pb::ContainerConfig,
}

/// CPU in millicores and memory in bytes, as the API's quantities parse.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub cpu_request_milli: Option<i64>,
    pub cpu_limit_milli: Option<i64>,
    pub memory_limit: Option<i64>,
}

const PERIOD: i64 = 100_000;

impl Resources {
    fn linux(&self) -> pb::LinuxContainerResources {
        // The kubelet's conversions: shares from the request (2 minimum), a CFS quota from
        // the limit over a 100 ms period.
        let shares = match self.cpu_request_milli.or(self.cpu_limit_milli) {
            Some(m) => (m * 1024 / 1000).max(2),
            None => 2,
        };
        let quota = self
            .cpu_limit_milli
            .map(|m| (m * PERIOD / 1000).max(1000))
            .unwrap_or(0);
        pb::LinuxContainerResources {
            cpu_period: if quota > 0 { PERIOD } else { 0 },
            cpu_quota: quota,
            cpu_shares: shares,
            memory_limit_in_bytes: self.memory_limit.unwrap_or(0),
            ..Default::default()
        }
    }
}

impl ContainerSpec {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pod: &Pod,
        container: &Container,
        attempt: u32,
        image: &str,
        envs: Vec<(String, String)>,
        mounts: Vec<MountSpec>,
        resources: Resources,
        log_path: String,
    ) -> ContainerSpec {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().unwrap_or_default();
        let mut labels = Cri::pod_labels(
            &uid,
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default(),
        );
        labels.insert(super::LABEL_CONTAINER_NAME.into(), container.name.clone());
        let annotations = HashMap::from([(
            "io.kubernetes.container.restartCount".to_string(),
            attempt.to_string(),
        )]);
        let pod_sc = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let sc = container.security_context.clone().unwrap_or_default();
        let privileged = sc.privileged.unwrap_or(false);
        let caps = sc.capabilities.clone().unwrap_or_default();
        let cap = |list: Option<Vec<String>>| -> Vec<String> {
            list.unwrap_or_default()
                .into_iter()
                .map(|c| {
                    let c = c.to_uppercase();
                    if c == "ALL" || c.starts_with("CAP_") {
                        c
                    } else {
                        format!("CAP_{c}")
                    }
                })
                .collect()
        };
        let pid_mode = if pod.spec.as_ref().and_then(|s| s.host_pid).unwrap_or(false) {
            pb::NamespaceMode::Node
        } else if pod
            .spec
            .as_ref()
            .and_then(|s| s.share_process_namespace)
            .unwrap_or(false)
        {
            pb::NamespaceMode::Pod
        } else {
            pb::NamespaceMode::Container
        };
        let host = |v: Option<bool>| {
            if v.unwrap_or(false) {
                pb::NamespaceMode::Node as i32
            } else {
                pb::NamespaceMode::Pod as i32
            }
        };
        let security = pb::LinuxContainerSecurityContext {
            capabilities: Some(pb::Capability {
                add_capabilities: cap(caps.add),
                drop_capabilities: cap(caps.drop),
                ..Default::default()
            }),
            privileged,
            namespace_options: Some(pb::NamespaceOption {
                network: host(pod.spec.as_ref().and_then(|s| s.host_network)),
                pid: pid_mode as i32,
                ipc: host(pod.spec.as_ref().and_then(|s| s.host_ipc)),
                ..Default::default()
            }),
            run_as_user: sc
                .run_as_user
                .or(pod_sc.run_as_user)
                .map(|value| pb::Int64Value { value }),
            run_as_group: sc
                .run_as_group
                .or(pod_sc.run_as_group)
                .map(|value| pb::Int64Value { value }),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            supplemental_groups: pod_sc.supplemental_groups.clone().unwrap_or_default(),
            no_new_privs: sc.allow_privilege_escalation == Some(false),
            masked_paths: if privileged {
                vec![]
            } else {
                MASKED.iter().map(|s| s.to_string()).collect()
            },
            readonly_paths: if privileged {
                vec![]
            } else {
                READONLY.iter().map(|s| s.to_string()).collect()
            },
            ..Default::default()
        };
        let config = pb::ContainerConfig {
            metadata: Some(pb::ContainerMetadata {
                name: container.name.clone(),
                attempt,
            }),
            image: Some(pb::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: container.command.clone().unwrap_or_default(),
            args: container.args.clone().unwrap_or_default(),
            working_dir: container.working_dir.clone().unwrap_or_default(),
            envs: envs
                .into_iter()
                .map(|(key, value)| pb::KeyValue { key, value })
                .collect(),
            mounts: mounts
                .into_iter()
                .map(|m| pb::Mount {
                    container_path: m.container_path,
                    host_path: m.host_path,
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            labels,
            annotations,
            log_path,
            stdin: container.stdin.unwrap_or(false),
            stdin_once: container.stdin_once.unwrap_or(false),
            tty: container.tty.unwrap_or(false),
            linux: Some(pb::LinuxContainerConfig {
                resources: Some(resources.linux()),
                security_context: Some(security),
            }),
            ..Default::default()
        };
        ContainerSpec { config }
    }

    pub fn into_config(self) -> pb::ContainerConfig {
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_become_shares_quota_and_a_limit() {
        let r = Resources {
            cpu_request_milli: Some(250),
            cpu_limit_milli: Some(500),
            memory_limit: Some(64 << 20),
        };
        let l = r.linux();
        assert_eq!(l.cpu_shares, 256);
        assert_eq!((l.cpu_quota, l.cpu_period), (50_000, 100_000));
        assert_eq!(l.memory_limit_in_bytes, 64 << 20);
        let none = Resources::default().linux();
        assert_eq!(
            (none.cpu_shares, none.cpu_quota, none.memory_limit_in_bytes),
            (2, 0, 0)
        );
    }
}
