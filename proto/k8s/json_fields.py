#!/usr/bin/env python3
"""Reads the Go types of the vendored Kubernetes packages and writes json_fields.txt: how each
protobuf field appears in kube's JSON, where that is not the default (same name, zero value
omitted). One line per exception: `<message> <proto field> <rule>`, where rule is
`zero` (the zero value is written: a pointer, or no omitempty), `inline` (the message's
fields are flattened into the parent, json:",inline"), or `name=<json name>`.
Usage: json_fields.py <dir of unpacked k8s.io module zips> <version> > json_fields.txt"""
import os, re, sys

root, version = sys.argv[1], sys.argv[2]
PACKAGES = {
    # go package dir (under the module) -> proto package
}
for gv in """core/v1 apps/v1 batch/v1 autoscaling/v1 autoscaling/v2 certificates/v1 coordination/v1
  discovery/v1 events/v1 networking/v1 node/v1 policy/v1 rbac/v1 scheduling/v1 storage/v1
  admissionregistration/v1 authentication/v1 authorization/v1""".split():
    PACKAGES[f"k8s.io/api@{version}/{gv}"] = "k8s.io.api." + gv.replace("/", ".")
for p in ["pkg/api/resource", "pkg/apis/meta/v1", "pkg/runtime", "pkg/util/intstr"]:
    PACKAGES[f"k8s.io/apimachinery@{version}/{p}"] = "k8s.io.apimachinery." + p.replace("/", ".")
PACKAGES[f"k8s.io/apiextensions-apiserver@{version}/pkg/apis/apiextensions/v1"] = \
    "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1"

TYPE = re.compile(r"^type (\w+) struct \{")
FIELD = re.compile(r'^\s+(\w+)?\s*(\S+)?\s*`(.*)`')
out = []
for d, pkg in sorted(PACKAGES.items()):
    path = os.path.join(root, d)
    for f in sorted(os.listdir(path)):
        if not f.endswith(".go") or f.endswith("_test.go") or f.startswith("zz_") or "generated" in f:
            continue
        msg = None
        for line in open(os.path.join(path, f)):
            m = TYPE.match(line)
            if m:
                msg = m.group(1)
                continue
            if line.startswith("}"):
                msg = None
                continue
            if not msg:
                continue
            fm = FIELD.match(line)
            if not fm:
                continue
            tags = fm.group(3)
            pb = re.search(r'protobuf:"([^"]*)"', tags)
            js = re.search(r'json:"([^"]*)"', tags)
            if not pb or not js:
                continue
            pname = re.search(r"name=(\w+)", pb.group(1))
            if not pname:
                continue
            pname = pname.group(1)
            jparts = js.group(1).split(",")
            jname, opts = jparts[0], jparts[1:]
            gotype = fm.group(2) or fm.group(1) or ""
            full = f"{pkg}.{msg}"
            if "inline" in opts and jname == "":
                out.append(f"{full} {pname} inline")
                continue
            if jname and jname != pname:
                out.append(f"{full} {pname} name={jname}")
            if gotype.startswith("*") or "omitempty" not in opts:
                out.append(f"{full} {pname} zero")
print("\n".join(out))
