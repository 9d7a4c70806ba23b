"""BENCHMARKS.md: the machine a run measures on, and the rows rendered as one table per group (no flags here,
so tests and other tools import it freely; launch/benchmark.py is the command)."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
  import jax
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}
  if info["backend"] != "cpu":
    info["device_kind"] = jax.devices()[0].device_kind
  try:
    import psutil
    info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
  except ImportError:
    pass
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    info["cpu"] = names[0] if names else platform.processor()
  except OSError:
    info["cpu"] = platform.processor()
  return info


def _fmt(value) -> str:
  if value is None:
    return "–"
  if isinstance(value, float):
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
  return str(value)


def render(rows: list[dict], info: dict, machines: dict | None = None) -> str:
  """Markdown: one table per group of rows; `machines` (backend -> machine info) describes rows measured on
  another backend than this run's."""
  groups: dict[str, list[dict]] = {}
  for row in rows:
    groups.setdefault(row["group"], []).append(row)
  dates = {group: sorted({r.get("date", info["date"]) for r in group_rows})
           for group, group_rows in groups.items()}
  machines = dict(machines or {})
  machines[info["backend"]] = info
  describe = lambda m: ", ".join(f"{k}={v}" for k, v in m.items() if k != "date")
  machine = f"Machine ({info['backend']} rows): {describe(info)}"
  for backend, other in machines.items():
    if backend != info["backend"]:
      machine += f"\n\nMachine ({backend} rows, as of {other.get('date', '?')}): {describe(other)}"
  if any(d != [info["date"]] for d in dates.values()):
    machine += (f"\n\nRows come from separate runs (each suite's rows are kept until it is run again); rows "
                f"measured before {info['date']}: "
                + "; ".join(f"{g}: {', '.join(d)}" for g, d in dates.items() if d != [info["date"]]))
  lines = ["# Benchmarks", "", f"Written by `python -m launch.benchmark` on {info['date']}.", "", machine, ""]
  for group, group_rows in groups.items():
    backends = sorted({r.get("machine", info["backend"]) for r in group_rows})
    lines += [f"## {group}" + ("" if backends == ["cpu"] else f" ({', '.join(backends)})"), "",
              "| metric | ours | reference | ratio | unit | target | met | notes |",
              "|---|---|---|---|---|---|---|---|"]
    for r in group_rows:
      ref = r.get("reference")
      ratio = r["ours"] / ref if ref else None
      ref_cell = f"{_fmt(ref)} ({r['reference_name']})" if ref is not None else "–"
      met = {True: "yes", False: "**no**", None: "–"}[r.get("met")]
      lines.append(f"| {r['metric']} | {_fmt(r['ours'])} | {ref_cell} | {_fmt(ratio)} | "
                   f"{r.get('unit', '')} | {r.get('target', '')} | {met} | {r.get('notes', '')} |")
    lines.append("")
  return "\n".join(lines)
