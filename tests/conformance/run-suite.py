#!/usr/bin/env python3
"""run-suite.py NAME FOCUS TOTAL_MIN SPEC_LIMIT_MIN

Runs e2e.test on the specs matching FOCUS (minus [Serial]/[Disruptive]) in parts under
results/NAME/partN/. e2e.test has no per-spec timeout and some specs poll forever when a
feature is missing, so a watchdog sends SIGINT when one spec runs longer than SPEC_LIMIT_MIN
(Ginkgo then reports it as "interrupted" and skips the rest); the next part skips every spec
already reported. Stops when nothing is left or TOTAL_MIN is used up.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

os.chdir(os.environ.get("CONFORMANCE_DIR", "/work/conformance"))
name, focus, total_min, limit_min = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
base = f"results/{name}"
os.makedirs(base, exist_ok=True)
deadline = time.time() + total_min * 60


def go_escape(s):
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", s)


def done_specs():
    done = set()
    for rep in glob.glob(f"{base}/part*/report.json"):
        try:
            data = json.load(open(rep))
        except Exception:
            continue
        for r in data:
            for s in r.get("SpecReports") or []:
                if s.get("LeafNodeType") == "It" and s["State"] not in ("skipped", "pending"):
                    done.add(" ".join((s.get("ContainerHierarchyTexts") or []) + [s["LeafNodeText"]]))
    return done


part = len(glob.glob(f"{base}/part*")) + 1
while True:
    left = deadline - time.time()
    if left < 120:
        print("budget used up")
        break
    done = done_specs()
    skip = r"\[Serial\]|\[Disruptive\]"
    if os.environ.get("EXTRA_SKIP"):
        skip += "|" + os.environ["EXTRA_SKIP"]
    if done:
        skip += "|" + "|".join(go_escape(d) for d in sorted(done))
    d = f"{base}/part{part}"
    os.makedirs(d, exist_ok=True)
    suite_timeout = f"{int(left // 60) - 1}m"
    cmd = ["./e2e.test", "--kubeconfig", "run/kubeconfig", "--provider", "skeleton",
           "--ginkgo.focus", focus, "--ginkgo.skip", skip,
           f"--ginkgo.timeout={suite_timeout}", "--ginkgo.v", "--ginkgo.no-color",
           f"--ginkgo.json-report={d}/report.json", f"--ginkgo.junit-report={d}/junit.xml",
           "--report-dir", d, "--allowed-not-ready-nodes=0", "--disable-log-dump"]
    with open(f"{d}/cmd.txt", "w") as f:
        f.write(" ".join(repr(c) if " " in c or "|" in c else c for c in cmd) + "\n")
    print(f"part{part}: {len(done)} specs already done, suite timeout {suite_timeout}", flush=True)
    log = open(f"{d}/output.log", "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    with open(f"{base}/e2e.pid", "w") as f:
        f.write(str(p.pid))
    seen, spec_start, interrupted = 0, time.time(), False
    kill_at = None
    while p.poll() is None:
        time.sleep(5)
        try:
            text = open(f"{d}/output.log", errors="replace").read()
        except OSError:
            text = ""
        n = len(re.findall(r"^• ", text, re.M))
        if n != seen:
            seen, spec_start = n, time.time()
        if not interrupted and (time.time() - spec_start > limit_min * 60 or time.time() > deadline):
            print(f"part{part}: spec running > {limit_min}m (or budget over): SIGINT", flush=True)
            p.send_signal(signal.SIGINT)
            interrupted, kill_at = True, time.time() + 120
        if kill_at and time.time() > kill_at:
            p.kill()
    log.close()
    m = re.findall(r"^Ran (\d+) of .*$\n^(.*)$", open(f"{d}/output.log", errors="replace").read(), re.M)
    print(f"part{part}: rc={p.returncode} {m[-1] if m else ''}", flush=True)
    part += 1
    ran = int(m[-1][0]) if m else 0
    if ran == 0 and not interrupted:
        # e.g. the BeforeSuite failed (API server briefly unavailable): try again, at most 3 times
        retries = globals().get("retries", 0) + 1
        globals()["retries"] = retries
        if retries <= 3:
            time.sleep(20)
            continue
    if not interrupted:
        break
os.remove(f"{base}/e2e.pid") if os.path.exists(f"{base}/e2e.pid") else None
