#!/usr/bin/env python3
"""consolidate.py NAME -> results/NAME/summary.json + a table on stdout (all parts merged)"""
import glob, json, sys
name = sys.argv[1]
out = {}
for rep in sorted(glob.glob(f"results/{name}/part*/report.json")):
    for r in json.load(open(rep)):
        for s in r.get("SpecReports") or []:
            if s.get("LeafNodeType") != "It" or s["State"] in ("skipped", "pending"):
                continue
            full = " ".join((s.get("ContainerHierarchyTexts") or []) + [s["LeafNodeText"]])
            f = s.get("Failure") or {}
            loc = f.get("Location") or {}
            out[full] = {"state": s["State"], "seconds": round(s.get("RunTime", 0) / 1e9, 1),
                         "part": rep.split("/")[-2],
                         "at": (loc.get("FileName", "").split("k8s.io/kubernetes/")[-1] + ":" + str(loc.get("LineNumber"))) if loc else "",
                         "message": f.get("Message", "")}
json.dump(out, open(f"results/{name}/summary.json", "w"), indent=1)
from collections import Counter
print(name, dict(Counter(v["state"] for v in out.values())), "specs reported:", len(out))
for k, v in sorted(out.items(), key=lambda kv: (kv[1]["state"], kv[0])):
    if v["state"] != "passed":
        print(f"- [{v['state']}] {k} ({v['seconds']}s, {v['at']})\n    {v['message'][:400]!r}")
