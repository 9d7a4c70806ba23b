"""The flat public API: every exported name resolves to the module object it names, and importing the
package stays cheap (nothing heavy is imported until a name is used)."""

import importlib
import subprocess
import sys

import agentgen_jax


def test_every_exported_name_is_the_object_of_its_module():
  for name, (module, attr) in agentgen_jax.EXPORTS.items():
    assert getattr(agentgen_jax, name) is getattr(importlib.import_module(module), attr), name
  assert sorted(agentgen_jax.__all__) == sorted(agentgen_jax.EXPORTS)


def test_import_does_not_pull_in_jax():
  code = "import sys, agentgen_jax; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == "False", out.stderr
