//! The Container Runtime Interface client (CRI v1 over gRPC on containerd's socket). The only
//! module that knows CRI protobufs: it takes pods and containers in Kubernetes types and
//! returns krab's own view of sandboxes and containers.
pub mod container;
pub mod sandbox;
pub mod stats;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as pb;
use pb::image_service_client::ImageServiceClient;
use pb::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub use self::container::{ContainerSpec, MountSpec};
pub use self::sandbox::SandboxSpec;

/// Labels the agent puts on every sandbox and container (kubelet's names, so `crictl` users
/// see what they expect).
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CRI: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("CRI: cannot connect to {socket}: {message}")]
    Connect { socket: String, message: String },
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Rpc(s) if s.code() == tonic::Code::NotFound)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
    Unknown,
}

impl State {
    fn from_container(v: i32) -> State {
        match pb::ContainerState::try_from(v) {
            Ok(pb::ContainerState::ContainerCreated) => State::Created,
            Ok(pb::ContainerState::ContainerRunning) => State::Running,
            Ok(pb::ContainerState::ContainerExited) => State::Exited,
            _ => State::Unknown,
        }
    }
}

/// A pod sandbox as the runtime has it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: i64,
}

/// A container as the runtime lists it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub pod_uid: String,
    pub name: String,
    pub attempt: u32,
    pub state: State,
    pub created_at: i64,
    /// The id of the image it was created from.
    pub image_ref: String,
    /// The image as the pod named it.
    pub image: String,
}

/// An image on the node.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub pinned: bool,
}

/// A container's full status (times in nanoseconds since the epoch).
#[derive(Debug, Clone)]
pub struct ContainerDetail {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub state: State,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
    pub log_path: String,
}

#[derive(Debug, Clone)]
pub struct RuntimeVersion {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Which streams an exec or attach session carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamIo {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Registry credentials for one pull (from imagePullSecrets).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub auth: String,
    pub server: String,
}

#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri, Error> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| Error::Connect {
                socket: socket.display().to_string(),
                message: e.to_string(),
            })?;
        // Large lists (hundreds of containers) exceed tonic's 4 MiB default.
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
        })
    }

    pub async fn version(&self) -> Result<RuntimeVersion, Error> {
        let v = self
            .runtime
            .clone()
            .version(pb::VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner();
        Ok(RuntimeVersion {
            name: v.runtime_name,
            version: v.runtime_version,
        })
    }

    /// The runtime's conditions (RuntimeReady, NetworkReady) that are false, with reasons.
    pub async fn not_ready(&self) -> Result<Vec<String>, Error> {
        let s = self
            .runtime
            .clone()
            .status(pb::StatusRequest { verbose: false })
            .await?
            .into_inner();
        Ok(s.status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.status)
            .map(|c| format!("{} is false ({}: {})", c.r#type, c.reason, c.message))
            .collect())
    }

    pub async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, Error> {
        let items = self
            .runtime
            .clone()
            .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .map(|s| {
                let meta = s.metadata.unwrap_or_default();
                Sandbox {
                    ready: s.state == pb::PodSandboxState::SandboxReady as i32,
                    id: s.id,
                    uid: meta.uid,
                    namespace: meta.namespace,
                    name: meta.name,
                    attempt: meta.attempt,
                    created_at: s.created_at,
                }
            })
            .collect())
    }

    pub async fn list_containers(&self) -> Result<Vec<Container>, Error> {
        let items = self
            .runtime
            .clone()
            .list_containers(pb::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        Ok(items
            .into_iter()
            .map(|c| {
                let meta = c.metadata.unwrap_or_default();
                Container {
                    pod_uid: c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default(),
                    state: State::from_container(c.state),
                    id: c.id,
                    sandbox_id: c.pod_sandbox_id,
                    name: meta.name,
                    attempt: meta.attempt,
                    created_at: c.created_at,
                    image_ref: c.image_ref,
                    image: c.image.map(|i| i.image).unwrap_or_default(),
                }
            })
            .collect())
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerDetail, Error> {
        let s = self
            .runtime
            .clone()
            .container_status(pb::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        let meta = s.metadata.unwrap_or_default();
        Ok(ContainerDetail {
            state: State::from_container(s.state),
            id: s.id,
            name: meta.name,
            attempt: meta.attempt,
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            image: s.image.map(|i| i.image).unwrap_or_default(),
            image_ref: s.image_ref,
            log_path: s.log_path,
        })
    }

    /// Starts a sandbox; returns its id.
    pub async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String, Error> {
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(spec.config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    /// The sandbox's IPs (primary first).
    pub async fn sandbox_ips(&self, id: &str) -> Result<Vec<String>, Error> {
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(pb::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner();
        let net = status.status.and_then(|s| s.network).unwrap_or_default();
        let mut ips = Vec::new();
        if !net.ip.is_empty() {
            ips.push(net.ip);
        }
        ips.extend(net.additional_ips.into_iter().map(|i| i.ip));
        Ok(ips)
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<(), Error> {
        match self
            .runtime
            .clone()
            .stop_pod_sandbox(pb::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<(), Error> {
        match self
            .runtime
            .clone()
            .remove_pod_sandbox(pb::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    /// Creates a container in a sandbox; returns its id.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        spec: ContainerSpec,
    ) -> Result<String, Error> {
        Ok(self
            .runtime
            .clone()
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(spec.into_config()),
                sandbox_config: Some(sandbox.config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        self.runtime
            .clone()
            .start_container(pb::StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// Stops a container: SIGTERM (or the image's stop signal), then SIGKILL after `grace`.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error> {
        match self
            .runtime
            .clone()
            .stop_container(pb::StopContainerRequest {
                container_id: id.into(),
                timeout: grace.as_secs() as i64,
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), Error> {
        match self
            .runtime
            .clone()
            .remove_container(pb::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    /// Asks the runtime to reopen container `id`'s log file (after it was rotated away).
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), Error> {
        self.runtime
            .clone()
            .reopen_container_log(pb::ReopenContainerLogRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, Error> {
        let r = self
            .runtime
            .clone()
            .exec_sync(pb::ExecSyncRequest {
                container_id: id.into(),
                cmd,
                timeout: timeout.as_secs().max(1) as i64,
            })
            .await?
            .into_inner();
        Ok(ExecResult {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        })
    }

    /// The streaming server's URL for an exec session in container `id`.
    pub async fn exec_url(
        &self,
        id: &str,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> Result<String, Error> {
        let r = self
            .runtime
            .clone()
            .exec(pb::ExecRequest {
                container_id: id.into(),
                cmd,
                tty: io.tty,
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
            })
            .await?
            .into_inner();
        Ok(r.url)
    }

    /// The streaming server's URL for attaching to container `id`.
    pub async fn attach_url(&self, id: &str, io: StreamIo) -> Result<String, Error> {
        let r = self
            .runtime
            .clone()
            .attach(pb::AttachRequest {
                container_id: id.into(),
                stdin: io.stdin,
                tty: io.tty,
                stdout: io.stdout,
                stderr: io.stderr,
            })
            .await?
            .into_inner();
        Ok(r.url)
    }

    /// The streaming server's URL for forwarding ports of sandbox `id`.
    pub async fn port_forward_url(&self, id: &str, ports: Vec<i32>) -> Result<String, Error> {
        let r = self
            .runtime
            .clone()
            .port_forward(pb::PortForwardRequest {
                pod_sandbox_id: id.into(),
                port: ports,
            })
            .await?
            .into_inner();
        Ok(r.url)
    }

    /// Every image on the node.
    pub async fn list_images(&self) -> Result<Vec<ImageInfo>, Error> {
        let images = self
            .images
            .clone()
            .list_images(pb::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images;
        Ok(images
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                tags: i.repo_tags,
                size: i.size,
                pinned: i.pinned,
            })
            .collect())
    }

    /// Removes an image (every name it has).
    pub async fn remove_image(&self, id: &str) -> Result<(), Error> {
        self.images
            .clone()
            .remove_image(pb::RemoveImageRequest {
                image: Some(pb::ImageSpec {
                    image: id.into(),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(())
    }

    /// Where the runtime keeps its images (the image filesystem's mountpoint).
    pub async fn image_fs_mountpoint(&self) -> Result<Option<String>, Error> {
        let r = self
            .images
            .clone()
            .image_fs_info(pb::ImageFsInfoRequest {})
            .await?
            .into_inner();
        Ok(r.image_filesystems
            .into_iter()
            .find_map(|f| f.fs_id.map(|id| id.mountpoint)))
    }

    /// The image's id when it is present on the node.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, Error> {
        let r = self
            .images
            .clone()
            .image_status(pb::ImageStatusRequest {
                image: Some(pb::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner();
        Ok(r.image.map(|i| i.id))
    }

    /// Pulls an image (trying each credential, then none); returns its reference.
    pub async fn pull_image(&self, image: &str, auths: &[Auth]) -> Result<String, Error> {
        let mut last = None;
        let attempts: Vec<Option<&Auth>> = auths.iter().map(Some).chain([None]).collect();
        for auth in attempts {
            let r = self
                .images
                .clone()
                .pull_image(pb::PullImageRequest {
                    image: Some(pb::ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    auth: auth.map(|a| pb::AuthConfig {
                        username: a.username.clone(),
                        password: a.password.clone(),
                        auth: a.auth.clone(),
                        server_address: a.server.clone(),
                        ..Default::default()
                    }),
                    sandbox_config: None,
                })
                .await;
            match r {
                Ok(r) => return Ok(r.into_inner().image_ref),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(Error::from)
            .unwrap_or_else(|| Error::Rpc(tonic::Status::unknown("no pull attempted"))))
    }

    /// Labels a sandbox or container carries for a pod.
    pub fn pod_labels(uid: &str, namespace: &str, name: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_POD_UID.to_string(), uid.to_string()),
            (LABEL_POD_NAMESPACE.to_string(), namespace.to_string()),
            (LABEL_POD_NAME.to_string(), name.to_string()),
        ])
    }
}
