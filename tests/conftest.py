"""Test setup: 8 simulated CPU devices (set before jax is imported) and shared helpers."""

import os
import sys

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Subprocess tests compile the same tiny programs again: share compiled code through the cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    __import__('tempfile').gettempdir(), 'spinenet_jax_test_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '2')

# The repository, importable here and in the tools, main.py and notebooks that tests run as
# subprocesses, also without `pip install -e .` (requirements.txt installs it).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ['PYTHONPATH'] = os.pathsep.join(
    p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)

DATA = os.path.join(ROOT, 'tests', 'data')


def rel_l2(a, b) -> float:
  """||a - b|| / ||b||, in float64."""
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope='module')
def fast_compiles():
  """XLA's optimization passes off for a module: compiling is most of the time of one-shot JAX
  runs (and of eager ops), and the computation is the same without them."""
  import jax
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def random_variables(model, input_shape, seed=0):
  """Variables of `model` filled from their shapes with numpy (no compile of `init`, which costs
  ~15 s for a SpineNet on CPU): kernels ~ N(0, 1/fan_in), BN gamma ~ 1, beta ~ 0, statistics sane."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))

  def fill(path, leaf):
    name = str(path[-1].key)
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
    if name in ('scale', 'var'):
      return jnp.asarray(rng.uniform(0.8, 1.2, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(size=leaf.shape) * 0.1, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def name_shapes(names, variables):
  """{checkpoint name: shape of the variable it maps to} for a {name: (collection, path)} map."""
  out = {}
  for name, (collection, path) in names.items():
    leaf = variables[collection]
    for key in path:
      leaf = leaf[key]
    out[name] = tuple(leaf.shape)
  return out
