"""The README's Python snippets run as written, in order, in one namespace, and produce what their
comments say."""

import os
import re

import jax
import numpy as np
import pytest

from conftest import ROOT


def readme_python_blocks():
  with open(os.path.join(ROOT, 'README.md')) as f:
    return re.findall(r'^```python\n(.*?)^```$', f.read(), flags=re.DOTALL | re.MULTILINE)


def test_readme_python_snippets_run(fast_compiles):
  blocks = readme_python_blocks()
  assert len(blocks) >= 2
  namespace = {'__name__': '__readme__'}
  for i, block in enumerate(blocks):
    exec(compile(block, f'README.md python block {i + 1}', 'exec'), namespace)
  # What the snippets' comments say they produce.
  ns = namespace
  assert {k: v.shape for k, v in ns['endpoints'].items()} == {
      3: (2, 32, 32, 256), 4: (2, 16, 16, 256), 5: (2, 8, 8, 256), 6: (2, 4, 4, 256),
      7: (2, 2, 2, 256)}
  assert set(ns['updates']) == {'batch_stats'}
  assert ns['out']['cls_outputs'][3].shape == (2, 32, 32, 9 * 91)
  assert ns['out']['box_outputs'][3].shape == (2, 32, 32, 9 * 4)
  assert ns['box_targets'][3].shape == (2, 32, 32, 36)
  assert np.all(np.asarray(ns['labels'].num_positives) > 0)   # every ground-truth box is matched
  assert sorted(ns['loss']) == ['box_loss', 'cls_loss', 'model_loss']
  assert all(np.isfinite(float(v)) for v in ns['loss'].values())
  assert ns['dets']['detection_boxes'].shape == (2, 100, 4)
  assert ns['dets']['detection_scores'].shape == (2, 100)
  # The detector interface block.
  assert sorted(ns['terms']) == ['cls_loss', 'weighted_box_loss']
  assert sorted(ns['metrics']) == ['box_loss', 'num_positives']
  assert all(np.isfinite(float(v)) for v in ns['terms'].values())
  assert set(ns['batch_stats']) == {'backbone', 'head'}
