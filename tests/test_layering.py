"""The package's import graph, read from the source: no cycles (function-level imports count), no module
using another's underscore names, flags only in entry points, and the trainer below every later stage."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxcxr")
# Commands (python -m jaxcxr.X): the only modules that define flags; no library module imports them.
ENTRY_POINTS = {"jaxcxr.main", "jaxcxr.evaluate", "jaxcxr.study", "jaxcxr.smote", "jaxcxr.export_embeddings",
                "jaxcxr.prepare", "jaxcxr.stats", "jaxcxr.inspect_data", "jaxcxr.phantom", "jaxcxr.bench",
                "jaxcxr.convert_weights", "jaxcxr.predict", "jaxcxr.localize"}
# Stages above the trainer: train.py imports none of them.
STAGES = {"jaxcxr.embeddings", "jaxcxr.head_stages", "jaxcxr.heads", "jaxcxr.resampling", "jaxcxr.evaluation",
          "jaxcxr.experiment", "jaxcxr.study_runner", "jaxcxr.smote", "jaxcxr.evaluate",
          "jaxcxr.export_embeddings", "jaxcxr.prediction", "jaxcxr.localization", "jaxcxr.heatmaps"}


def _modules():
  """{dotted module name: parsed AST} of every module of the package."""
  out = {}
  for dirpath, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
        with open(path) as fh:
          out[name] = ast.parse(fh.read(), path)
  return out


MODULES = _modules()


def _imports(name, tree):
  """{imported jaxcxr module: local alias} for every import in the module, at any depth."""
  found = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("jaxcxr"):
          found[a.name] = a.asname or a.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxcxr"):
      for a in node.names:
        full = f"{node.module}.{a.name}"
        target = full if full in MODULES else node.module
        found[target] = a.asname or a.name
  found.pop(name, None)
  return found


GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def _package_parents(name):
  """'jaxcxr.data.nih' -> ['jaxcxr', 'jaxcxr.data']: importing a module runs its packages' __init__."""
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_the_graph_is_read():
  assert "jaxcxr.train" in GRAPH and "jaxcxr.model_context" in GRAPH["jaxcxr.train"]
  assert "jaxcxr.data.nih" in GRAPH["jaxcxr.data.datasets"]


def test_no_import_cycles():
  edges = {m: set(deps) for m, deps in GRAPH.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(edges.get(m, ())):
      if d not in MODULES or d in _package_parents(m):
        continue
      if state.get(d) == "open":
        cycle = stack[stack.index(d):] + [d]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m)


def test_no_module_uses_another_modules_private_names():
  offences = []
  for name, tree in MODULES.items():
    aliases = {alias: target for target, alias in GRAPH[name].items()}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
          and node.attr.startswith("_") and not node.attr.startswith("__")):
        offences.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxcxr"):
        offences += [f"{name} imports {node.module}.{a.name}" for a in node.names
                     if a.name.startswith("_")]
  assert not offences, offences


def test_flags_live_in_entry_points_only():
  defining = set()
  for name, tree in MODULES.items():
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("DEFINE")
          and isinstance(node.value, ast.Name) and node.value.id in ("flags", "config_flags")):
        defining.add(name)
  assert defining and defining <= ENTRY_POINTS, defining - ENTRY_POINTS
  importers = {m: sorted(set(GRAPH[m]) & ENTRY_POINTS) for m in MODULES if m not in ENTRY_POINTS}
  assert not {m: e for m, e in importers.items() if e}, "a library module imports a command"


def test_the_trainer_knows_nothing_of_later_stages():
  assert not set(GRAPH["jaxcxr.train"]) & STAGES, GRAPH["jaxcxr.train"]
  assert not set(GRAPH["jaxcxr.model_context"]) & (STAGES | {"jaxcxr.train"})


def test_lower_layers_never_import_higher_ones():
  bottom = [m for m in MODULES if m.startswith(("jaxcxr.data", "jaxcxr.models")) or m in (
      "jaxcxr.losses", "jaxcxr.metrics", "jaxcxr.bootstrap", "jaxcxr.calibration", "jaxcxr.reports")]
  higher = STAGES | ENTRY_POINTS | {"jaxcxr.train", "jaxcxr.model_context", "jaxcxr.runfolder"}
  bad = {m: sorted(set(GRAPH[m]) & higher) for m in bottom if set(GRAPH[m]) & higher}
  assert not bad, bad
