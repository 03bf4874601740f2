"""The import layering of pyproject.toml's import-linter contracts holds (no cycles, training knows
no detector, evaluation never imports training, data flows one way)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
  exe = shutil.which('lint-imports') or os.path.join(os.path.dirname(sys.executable),
                                                     'lint-imports')
  result = subprocess.run([exe, '--no-cache'], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Contracts: 3 kept, 0 broken.' in result.stdout
