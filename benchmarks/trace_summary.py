"""Where a jitted step's device time goes: a summary of a `jax.profiler.trace` Perfetto trace.

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes `perfetto_trace.json.gz` with
one Chrome-trace "X" event per kernel (GPU streams) or per XLA op (CPU threads). This groups
the device's events by name and by kind (matmul, attention, random bits, other), so that a
benchmark can say which part of a step is below the matmul rate, without xprof or TensorBoard
on the machine that ran it.

  python benchmarks/trace_summary.py DIR [--steps=3]
"""

import collections
import glob
import gzip
import json
import os
import re
import sys

# Kind of a kernel / op, by name (first match wins). GPU kernel names: cuBLAS/cuBLASLt
# ("nvjet", "sm90_xmma_gemm", "cutlass"), XLA's Triton GEMMs ("gemm_fusion", "triton_gemm"),
# cuDNN fused attention ("cudnn", "fmha", "flash"); CPU ops: the HLO names ("dot", "fusion").
KINDS = (
    ("attention", re.compile(r"cudnn|fmha|flash|sdpa|attention", re.I)),
    ("matmul", re.compile(r"gemm|cublas|nvjet|cutlass|xmma|wgmma|\bdot|matmul|convolution", re.I)),
    ("random", re.compile(r"threefry|rng|random|philox", re.I)),
)


def kind(name: str) -> str:
  return next((k for k, pat in KINDS if pat.search(name)), "other")


def find_trace(folder: str) -> str:
  paths = sorted(glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {folder}")
  return paths[-1]


def device_events(trace: dict, line: str = "kernels") -> list[dict]:
  """The X events of one line of the accelerator: "kernels" (its streams, one event per kernel
  launch) or "ops" (XLA's op line, one event per HLO op). On a CPU-only trace, XLA's threads."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  xs = [e for e in events if e.get("ph") == "X" and "dur" in e]
  gpu = {p for p, n in procs.items() if n.startswith("/device:")}
  if gpu:
    def wanted(name):
      if "xla ops" in name.lower():
        return line == "ops"
      derived = re.search(r"modules|steps|source|framework|name scope|trace", name, re.I)
      return line == "kernels" and not derived
    keep = {k for k, n in threads.items() if k[0] in gpu and wanted(n)}
  else:
    keep = {k for k, n in threads.items() if "xla" in n.lower() and "pjrt" not in n.lower()}
  return [e for e in xs if (e["pid"], e.get("tid")) in keep]


def summarize(folder: str, steps: int = 1, top: int = 25, line: str = "kernels") -> dict:
  """{line, total_ms, per kind {ms, share}, top [{name, kind, ms, count, share}]}, per step."""
  with gzip.open(find_trace(folder)) as f:
    events = device_events(json.load(f), line)
  by_name = collections.defaultdict(lambda: [0.0, 0])
  detail = {}
  for e in events:
    by_name[e["name"]][0] += e["dur"] / 1e3 / steps
    by_name[e["name"]][1] += 1
    detail.setdefault(e["name"], json.dumps(e.get("args", {}))[:400])
  total = sum(v[0] for v in by_name.values()) or float("nan")
  kinds = collections.defaultdict(float)
  for name, (ms, _) in by_name.items():
    kinds[kind(name)] += ms
  rows = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
  return {"line": line, "total_ms": total, "steps": steps,
          "kinds": {k: {"ms": v, "share": v / total} for k, v in sorted(kinds.items())},
          "top": [{"name": n[:160], "kind": kind(n), "ms": ms, "count": c // steps,
                   "share": ms / total, "args": detail[n]} for n, (ms, c) in rows]}


def table(summary: dict) -> str:
  lines = [f"device {summary['line']}: {summary['total_ms']:.1f} ms/step (summed over the line)",
           "| kind | ms/step | share |", "|---|---|---|"]
  lines += [f"| {k} | {v['ms']:.1f} | {100 * v['share']:.1f}% |" for k, v in summary["kinds"].items()]
  lines += ["", "| kernel / op | kind | ms/step | calls/step | share |", "|---|---|---|---|---|"]
  lines += [f"| `{r['name'][:90]}` | {r['kind']} | {r['ms']:.2f} | {r['count']} | "
            f"{100 * r['share']:.1f}% |" for r in summary["top"]]
  return "\n".join(lines)


if __name__ == "__main__":
  steps = next((int(a.split("=")[1]) for a in sys.argv[2:] if a.startswith("--steps=")), 1)
  for line in ("kernels", "ops"):
    print(table(summarize(sys.argv[1], steps, line=line)), "\n")
