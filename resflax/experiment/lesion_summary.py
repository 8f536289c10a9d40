"""``summary.md`` of the lesion study: the findings in numbers.

Every number of Veit et al. quoted next to a measured one comes from
``resflax.experiment.paper`` (table ``veit``), so the summary and the tests
of the paper's numbers read the same transcription. The first line of a
study on synthetic data opens with its mark ("SYNTHETIC DATA — not a
result", from the study's ``setting``), and when the ResNet is not Veit et
al.'s network the summary says their numbers are a reference for another
one.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from resflax import fileio
from resflax.experiment import paper
from resflax.training import curves

__all__ = ["veit", "write_summary"]


def veit(case: str) -> str:
  """A number of Veit et al. as printed (e.g. '0.45'), from ``paper``."""
  return paper.format_paper_value(paper.lookup_entry("veit", case))


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.2f}%"


def _header(res) -> list[str]:
  setting = res.get("setting") or {}
  mark = setting.get("mark", "")
  lines = [
      "# "
      + curves.marked("Lesion and path study (Veit et al. 2016)", mark, ": "),
      "",
  ]
  if mark:
    lines += [
        f"**{mark}.** The networks saw synthetic data: the numbers "
        "below test the pipeline and say nothing about Veit et al.'s "
        "findings.",
        "",
    ]
  if setting and not setting.get("paper"):
    lines += [
        f"Veit et al.'s numbers (n = {veit('num_modules')} modules, "
        f"CIFAR-10) are quoted as a reference for a different network: "
        f"this ResNet has n = {setting.get('num_modules')} modules and "
        f"saw {setting.get('data')} data.",
        "",
    ]
  lines.append(f"Date: {res['date']}. Networks:")
  lines += [f"- {role}: {desc}" for role, desc in res["networks"].items()]
  lines.append(
      f"- evaluated on {res['eval_images']} test images; "
      f"{res['compilations']} compilation(s) of the lesion "
      "evaluator per network"
  )
  return lines


def _single(res) -> list[str]:
  lines = ["", "## Deleting single modules (Fig. 3)", ""]
  for role, st in res["single_deletion"].items():
    s = st["stats"]
    lines.append(
        f"- {role}: intact error {_pct(s['intact_error'])}; one "
        f"module deleted: mean {_pct(s['mean_error'])}, worst "
        f"{_pct(s['max_error'])}."
    )
    if "mean_error_non_downsampling" in s and "mean_error_downsampling" in s:
      lines.append(
          f"  Non-downsampling module deleted: mean "
          f"{_pct(s['mean_error_non_downsampling'])} (worst "
          f"{_pct(s['max_error_non_downsampling'])}); downsampling module "
          f"deleted: mean {_pct(s['mean_error_downsampling'])}."
      )
  lines.append(f"- chance level: {_pct(res['chance_error'])}.")
  lines.append(
      f"- Veit et al. (n = {veit('num_modules')}): the full model's "
      f"test error is {veit('full_model_error')}%; the text gives "
      "no error per deleted module."
  )
  return lines


def _k_deletion(res) -> list[str]:
  per_k = res["k_deletion"]["per_k"]
  if not per_k:
    return []
  lines = [
      "",
      "## Deleting k modules (Fig. 5a)",
      "",
      "| k | mean error | std | min | max |",
      "|---|---|---|---|---|",
  ]
  lines += [
      f"| {p['k']} | {_pct(p['mean'])} | {_pct(p['std'])} | "
      f"{_pct(p['min'])} | {_pct(p['max'])} |"
      for p in per_k
  ]
  ten = paper.lookup("veit", "delete_10_modules_error")
  lines += [
      "",
      f"Veit et al. (n = {veit('num_modules')}): with 10 modules "
      f"deleted the error stays around {100 * ten:g}%; deleting "
      f"{veit('delete_severe_modules')} gives a severe drop.",
  ]
  return lines


def _reorder(res) -> list[str]:
  r = res["reorder"]
  lines = ["", "## Swapping modules (Fig. 5b)", ""]
  if not r["rows"]:
    return lines + [f"- skipped: {r.get('skipped')}"]
  taus = [x["kendall_tau"] for x in r["rows"]]
  errs = [x["error"] for x in r["rows"]]
  corr = r["pearson_tau_error"]
  lines.append(
      f"- Kendall tau (over the modules that can move) {min(taus):.3f}.."
      f"{max(taus):.3f}; error {_pct(min(errs))}..{_pct(max(errs))}; "
      "Pearson correlation of tau and error: "
      f"{'n/a' if corr is None else f'{corr:.2f}'}."
  )
  return lines


def _paths(res) -> list[str]:
  p = res["paths"]
  e = p["effective"]
  n_paper = veit("num_modules")
  if p["decay_per_module"] is None:
    decay = "- Gradient magnitude: too few lengths measured for a fit."
  else:
    decay = (
        f"- Gradient magnitude per extra module on the path: x"
        f"{p['decay_per_module']:.3f} (fit over the measured lengths; "
        f"{p['samples']} samples of {p['batch']} images per length, "
        f"drawn from a class-balanced pool of {p['pool']})."
    )
  return [
      "",
      "## Paths (Fig. 6)",
      "",
      f"- n = {p['num_modules']} modules, 2^{p['num_modules']} paths; "
      f"{veit('path_length_bulk_pct')}% of the paths have length "
      f"{p['paths_95']['low']} to {p['paths_95']['high']} (Veit, n = "
      f"{n_paper}: {veit('path_length_95pct_min_modules')} to "
      f"{veit('path_length_95pct_max_modules')}).",
      decay,
      f"- Effective paths: lengths {e['low']} to {e['high']} carry "
      f"{e['gradient_share']:.1%} of the total gradient and are "
      f"{e['path_share']:.2%} of all paths (Veit, n = {n_paper}: "
      f"{veit('effective_path_min_modules')} to "
      f"{veit('effective_path_max_modules')}, "
      f"{veit('effective_path_fraction_pct')}%).",
  ]


def _by_label(rows, field):
  out = {}
  for row in rows:
    out.setdefault(row["label"], []).append(row[field])
  return out


def _signal(res) -> list[str]:
  sig = res.get("signal")
  if not sig:
    return []
  lines = ["", "## Signal propagation (He et al. Fig. 7)", ""]
  for label, v in _by_label(sig["response_std"], "std").items():
    lines.append(
        f"- {label}: response std mean {np.mean(v):.3f}, "
        f"median {np.median(v):.3f} over {len(v)} layers."
    )
  for label, v in _by_label(sig["gradients"], "grad_norm").items():
    ratio = v[0] / v[-1] if v[-1] else float("nan")
    lines.append(
        f"- {label}: gradient at the first module input / at "
        f"the head input = {ratio:.3g}."
    )
  if sig["scale"]:
    first = sig["scale"][0]
    lines.append(
        f"- lambda = {first['lambda']}: shortcut-only gradient at the "
        f"first module relative to x_L = {first['ratio_shortcut_only']:.3g}"
        f" against lambda^L = {first['predicted']:.3g}; whole network "
        f"{first['ratio_full']:.3g}."
    )
  if sig["gates"]:
    gm = [g["gate_mean"] for g in sig["gates"]]
    lines.append(
        f"- gates: mean g = {np.mean(gm):.3f} (min {min(gm):.3f},"
        f" max {max(gm):.3f}); below 0.5 leans to the skip."
    )
  else:
    lines.append("- no gated shortcuts in these networks.")
  return lines + [f"- {note}" for note in sig.get("notes", [])]


def write_summary(path: str, res: Mapping[str, Any]) -> str:
  """Writes ``summary.md``: the findings in numbers next to the paper's.

  Args:
    path: the file to write (atomically).
    res: the study's results (the content of ``results.json``).

  Returns:
    The text written.
  """
  lines = (
      _header(res)
      + _single(res)
      + _k_deletion(res)
      + _reorder(res)
      + _paths(res)
      + _signal(res)
      + ["", "## Time", ""]
  )
  lines += [f"- {name}: {sec:.1f} s" for name, sec in res["seconds"].items()]
  text = "\n".join(lines) + "\n"
  fileio.write_atomic(path, text)
  return text
