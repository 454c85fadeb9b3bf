#!/usr/bin/env python3
"""Build OCI image-layout archives (one .tar per image) for the conformance specs.

Usage: build-images.py OUTDIR
Every image is a busybox-static rootfs (Debian's /bin/busybox, a link per applet in /bin and
at its canonical place) plus per-image files. Nothing is pulled from a registry.
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUSYBOX = "/bin/busybox"
AGNHOST = os.path.join(HERE, "agnhost")
PORTER = os.path.join(HERE, "kubernetes/test/images/agnhost/porter")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    "daemon:x:1:\n"
    "www-data:x:33:\n"
    "user-defined-in-image:x:1000:\n"
    "group-defined-in-image:x:50000:user-defined-in-image\n"
    "nogroup:x:65534:\n"
)
IT_WORKS = b"<html><body><h1>It works!</h1></body></html>\n"
PAUSE_SH = b"""#!/bin/sh
# stand-in for registry.k8s.io/pause: sleep until TERM/INT, then exit 0
trap 'exit 0' TERM INT
while true; do sleep 3600 & wait $!; done
"""


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.GNU_FORMAT)
        self.seen = set()

    def _info(self, name, kind, mode):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid = ti.gid = 0
        ti.mtime = 0
        return ti

    def dir(self, name, mode=0o755):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in self.seen:
                continue
            self.seen.add(d)
            self.tar.addfile(self._info(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else mode))

    def file(self, name, data, mode=0o644):
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        if name in self.seen:
            return
        self.seen.add(name)
        ti = self._info(name, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        if name in self.seen:
            return
        self.seen.add(name)
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def busybox_rootfs(layer):
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "tmp", "var/www",
              "var/run", "root", "home", "proc", "sys", "dev", "run"]:
        layer.dir(d)
    with open(BUSYBOX, "rb") as f:
        layer.file("bin/busybox", f.read(), 0o755)
    full = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                          check=True).stdout.split()
    for path in full:
        applet = path.rsplit("/", 1)[-1]
        if applet in ("busybox", "") or path.endswith("/"):
            continue
        layer.symlink("bin/" + applet, "/bin/busybox")
        if not path.startswith("bin/"):
            layer.symlink(path, "/bin/busybox")
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    layer.file("etc/nsswitch.conf", b"hosts: files dns\n")


def write_image(outdir, filename, ref, layer_bytes, config):
    blobs = []

    def blob(data):
        h = hashlib.sha256(data).hexdigest()
        blobs.append((h, data))
        return "sha256:" + h, len(data)

    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    layer_digest, layer_size = blob(layer_bytes)
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "conformance build-images.py"}],
    }
    cfg_digest, cfg_size = blob(json.dumps(cfg).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }
    man_digest, man_size = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest, "size": man_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": ref},
        }],
    }
    path = os.path.join(outdir, filename)
    with tarfile.open(path + ".tmp", "w", format=tarfile.GNU_FORMAT) as out:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            out.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for h, data in blobs:
            add("blobs/sha256/" + h, data)
    os.rename(path + ".tmp", path)
    print(f"{path}: {ref} ({os.path.getsize(path)} bytes, manifest {man_digest})")


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)

    # agnhost:2.53
    l = Layer()
    busybox_rootfs(l)
    with open(AGNHOST, "rb") as f:
        l.file("agnhost", f.read(), 0o755)
    l.symlink("agnhost-2", "agnhost")
    l.dir("uploads")
    l.dir("home/user-defined-in-image")
    for n in ("localhost.crt", "localhost.key"):
        with open(os.path.join(PORTER, n), "rb") as f:
            l.file(n, f.read())
    write_image(outdir, "agnhost.tar", "registry.k8s.io/e2e-test-images/agnhost:2.53", l.bytes(),
                {"Entrypoint": ["/agnhost"], "Cmd": ["pause"], "Env": [PATH_ENV],
                 "ExposedPorts": {p + "/tcp": {} for p in ["80", "8080", "8081", "9376", "5000"]}})

    # busybox:1.36.1-1
    l = Layer()
    busybox_rootfs(l)
    write_image(outdir, "busybox.tar", "registry.k8s.io/e2e-test-images/busybox:1.36.1-1", l.bytes(),
                {"Cmd": ["sh"], "Env": [PATH_ENV]})

    # pause:3.10 (stand-in: a shell script)
    l = Layer()
    busybox_rootfs(l)
    l.file("pause", PAUSE_SH, 0o755)
    write_image(outdir, "pause.tar", "registry.k8s.io/pause:3.10", l.bytes(),
                {"Entrypoint": ["/pause"], "Env": [PATH_ENV]})

    # httpd stand-ins (busybox httpd)
    for tag in ("2.4.38-4", "2.4.39-4"):
        l = Layer()
        busybox_rootfs(l)
        l.file("usr/local/apache2/htdocs/index.html", IT_WORKS)
        write_image(outdir, f"httpd-{tag}.tar", f"registry.k8s.io/e2e-test-images/httpd:{tag}",
                    l.bytes(),
                    {"Entrypoint": ["/bin/httpd", "-f", "-v", "-p", "80", "-h",
                                    "/usr/local/apache2/htdocs"],
                     "Env": [PATH_ENV, "HTTPD_VERSION=" + tag], "ExposedPorts": {"80/tcp": {}},
                     "StopSignal": "SIGTERM"})

    # nginx stand-in
    l = Layer()
    busybox_rootfs(l)
    l.file("usr/share/nginx/html/index.html",
           b"<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>\n")
    write_image(outdir, "nginx.tar", "registry.k8s.io/e2e-test-images/nginx:1.14-4", l.bytes(),
                {"Entrypoint": ["/bin/httpd", "-f", "-v", "-p", "80", "-h", "/usr/share/nginx/html"],
                 "Env": [PATH_ENV], "ExposedPorts": {"80/tcp": {}}})


if __name__ == "__main__":
    main()
