#!/usr/bin/env python3
"""summarize.py results/NAME/report.json -> counts + failed specs with failure message/location"""
import json, sys, re
rep = json.load(open(sys.argv[1]))
specs = [s for r in rep for s in r.get("SpecReports", []) if s.get("LeafNodeType") == "It"]
from collections import Counter
c = Counter(s["State"] for s in specs)
print("counts:", dict(c))
for s in specs:
    if s["State"] in ("passed", "skipped", "pending"):
        continue
    name = " ".join(s.get("ContainerHierarchyTexts") or []) + " " + s.get("LeafNodeText", "")
    f = s.get("Failure", {})
    loc = f.get("Location", {})
    msg = f.get("Message", "")
    print("\n###", s["State"], "|", name.strip(), f"[{s.get('RunTime',0)/1e9:.1f}s]")
    print("  at", loc.get("FileName","").split("kubernetes/")[-1] + ":" + str(loc.get("LineNumber")))
    print("  ", msg[:3000].replace("\n", "\n   "))
