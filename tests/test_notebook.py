"""The block-spec notebook: committed without outputs, and it runs top to bottom on a CPU."""

import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'inspect_block_specs.ipynb')


def _text_outputs(nb) -> str:
  parts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      parts.append(out.get('text', ''))
      parts.extend(str(v) for k, v in out.get('data', {}).items() if k.startswith('text/'))
  return '\n'.join(parts)


def test_committed_notebook_is_valid_and_stripped():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code
  assert all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes(tmp_path, monkeypatch):
  # The kernel runs in tmp_path (the PNGs land there, not in the repository) and imports the
  # library from ROOT; IPython's profile and history stay in tmp_path too.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute()   # raises CellExecutionError on the first failing cell

  errors = [o for c in nb.cells for o in c.get('outputs', []) if o.output_type == 'error']
  assert not errors, errors
  for name in ('spinenet49_block_specs.png', 'spinenet49_edited_block_specs.png'):
    with open(tmp_path / name, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
  text = _text_outputs(nb)
  assert "{'node': 17, 'edge': 30, 'merge': 1}" in text
  assert '| TOTAL |' in text and '21,831,488' in text and '28.26 GMACs' in text
  assert 'BlockSpecError: block 3 ' in text and 'input offset 5 is out of range' in text
  assert 'block 14 parents (12, 14) -> (12, 13)' in text
  for model_id, params in (('49S', '9,089,215'), ('190', '126,587,664')):
    assert f'| SpineNet-{model_id} |' in text and params in text
  images = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) == 2
