"""pyproject.toml: the installed package set and its dependencies agree with requirements.txt."""

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib

import pytest
import setuptools

from conftest import ROOT


def _pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def _requirement_lines():
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith('#')]


def test_dependencies_mirror_requirements_txt():
  lines = _requirement_lines()
  assert lines[-1] == '-e .'   # `pip install -r requirements.txt` installs the package too
  assert _pyproject()['project']['dependencies'] == lines[:-1]


def test_packages_are_spinenet_jax_and_configs():
  include = _pyproject()['tool']['setuptools']['packages']['find']['include']
  found = set(setuptools.find_packages(ROOT, include=include))
  expected = {'configs'} | {
      os.path.relpath(folder, ROOT).replace(os.sep, '.')
      for folder, _, files in os.walk(os.path.join(ROOT, 'spinenet_jax')) if '__init__.py' in files}
  assert found == expected and 'spinenet_jax.modeling' in found


def test_tools_run_from_anywhere_once_installed(tmp_path):
  try:
    importlib.metadata.distribution('spinenet-jax')
  except importlib.metadata.PackageNotFoundError:
    pytest.skip('not installed (pip install -e .)')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'summarize_model.py'),
       f'--config={os.path.join(ROOT, "configs", "demo.py")}', '--json'],
      capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])['total_params'] > 0
