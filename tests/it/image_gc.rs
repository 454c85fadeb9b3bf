//! The kubelet's image garbage collector on the agent inside `krab server`, with real
//! containerd: with the high threshold at 1% the image filesystem is always over it, so
//! every round deletes the unused images (an image imported with `ctr` after start goes),
//! never the image a running pod uses, the pause image or the air-gap archives' images; and
//! since a 0% low threshold cannot be reached, the shortfall is a Warning `ImageGCFailed`
//! event on the node, with kube's message.
use std::time::Duration;

use crate::agent::ctr;
use crate::busybox_image::{write_busybox_image, write_image, BUSYBOX};
use crate::pods_support::PodNetwork;
use crate::support::{wait_for, Server};

#[test]
fn unused_images_are_collected_and_used_pinned_and_air_gap_images_kept() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    write_image(
        &data.join("agent/images"),
        "kept.tar",
        "docker.io/library/kept:1",
        "IMAGE=kept",
    );
    let s = Server::start_with_agent(
        &data,
        &[
            "--kubelet-arg=image-gc-high-threshold=1",
            "--kubelet-arg=image-gc-low-threshold=0",
            "--kubelet-arg=image-minimum-gc-age=0s",
        ],
    );
    s.kube_ok(&[
        "run",
        "web",
        &format!("--image={BUSYBOX}"),
        "--",
        "sleep",
        "3600",
    ]);
    wait_for("the pod to run", Duration::from_secs(60), || {
        (s.kube_ok(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"]) == "Running")
            .then_some(())
    });
    // An image nobody uses, imported behind the kubelet's back.
    write_image(
        dir.path(),
        "spare.tar",
        "docker.io/library/spare:1",
        "IMAGE=spare",
    );
    let spare = dir.path().join("spare.tar");
    ctr(&data, &["images", "import", spare.to_str().unwrap()]);
    assert!(ctr(&data, &["images", "ls", "-q"]).contains("docker.io/library/spare:1"));
    let left = wait_for(
        "the unused image collected",
        Duration::from_secs(90),
        || {
            let names = ctr(&data, &["images", "ls", "-q"]);
            (!names.contains("docker.io/library/spare:1")).then_some(names)
        },
    );
    for kept in [
        "docker.io/library/busybox:1.35",
        "docker.io/library/kept:1",
        "pause",
    ] {
        assert!(left.contains(kept), "{kept} is gone: {left}");
    }
    let message = wait_for("the ImageGCFailed event", Duration::from_secs(60), || {
        let m = s.kube_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=ImageGCFailed",
            "-o",
            "jsonpath={.items[0].type}/{.items[0].involvedObject.kind}: {.items[0].message}",
        ]);
        (!m.is_empty() && m != "/: ").then_some(m)
    });
    assert!(
        message.starts_with(
            "Warning/Node: Failed to garbage collect required amount of images. Attempted to free "
        ),
        "{message}"
    );
    // The pod still runs on its image.
    assert_eq!(
        s.kube_ok(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"]),
        "Running"
    );
}
