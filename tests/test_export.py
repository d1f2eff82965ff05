"""export: the ONNX graph of a checkpoint from the other backend, in ONNX Runtime, against lmf_jax;
the opset-11 fixed-batch graph for ATC; float16; and the one-line refusals."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from engine import cli
from engine import prediction
from engine import records
from engine import state_dict
from flags.errors import ConfigError
from iemocap import formats
from lmf_jax import predict as jax_predict
from lmf_torch_npu import export
from tests import run_helpers


@pytest.fixture(scope='module')
def jax_workdir(small_runs):
  """A small finished lmf_jax run (conftest's, shared with predict): the checkpoint comes from
  the other backend."""
  return small_runs['jax']


@pytest.fixture(scope='module')
def test_split(small_data_dir):
  return formats.load(small_data_dir, 'sad').test


def graph_inputs(graph):
  return [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
          for i in graph.graph.input]


def test_a_jax_checkpoint_exports_to_onnx_that_onnxruntime_runs_as_jax_does(jax_workdir,
                                                                             test_split, tmp_path):
  out = tmp_path / 'model.onnx'
  result = run_helpers.run_cli('lmf_torch_npu.export', f'--checkpoint={jax_workdir}',
                               f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'opset 17, float32, dynamic batch' in result.stdout
  graph = onnx.load(out)
  assert graph.opset_import[0].version == 17
  assert graph_inputs(graph) == [('audio', ['batch', 74]), ('visual', ['batch', 35]),
                                 ('text', ['batch', 20, 300])]
  assert [o.name for o in graph.graph.output] == ['logits']
  reference = jax_predict.Predictor(jax_workdir)
  expected = reference.logits(test_split.audio, test_split.visual, test_split.text)
  session = export.session(out.read_bytes())
  for n in (1, test_split.n):  # batch 1 and the whole split through the same dynamic graph
    got = export.run(session, test_split.audio[:n], test_split.visual[:n], test_split.text[:n])
    assert np.max(np.abs(got - expected[:n])) <= 1e-5


def test_opset_11_with_a_fixed_batch_is_the_graph_atc_takes(jax_workdir, small_data_dir,
                                                            test_split, tmp_path):
  out = tmp_path / 'atc.onnx'
  result = run_helpers.run_cli('lmf_torch_npu.export', f'--checkpoint={jax_workdir}',
                               f'--out={out}', '--opset=11', '--batch=8',
                               f'--features={small_data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'opset 11, float32, batch 8' in result.stdout and '(sad/test)' in result.stdout
  graph = onnx.load(out)
  assert graph.opset_import[0].version == 11
  assert graph_inputs(graph)[0] == ('audio', [8, 74])
  lstm = [node for node in graph.graph.node if node.op_type == 'LSTM']
  # ATC's CommonLSTM: default activations, no clip, forward only (opset 11 has no `layout`).
  assert len(lstm) == 1 and {a.name for a in lstm[0].attribute} <= {'hidden_size', 'direction'}
  session = export.session(out.read_bytes())
  expected = jax_predict.Predictor(jax_workdir).logits(test_split.audio[:8], test_split.visual[:8],
                                                       test_split.text[:8])
  got = export.run(session, test_split.audio[:8], test_split.visual[:8], test_split.text[:8])
  assert np.max(np.abs(got - expected)) <= 1e-5
  with pytest.raises(Exception, match='dimension|Got: 3 Expected: 8'):
    session.run(None, {name: x[:3] for name, x in zip(
        export.INPUT_NAMES, (test_split.audio, test_split.visual, test_split.text))})


def test_a_float16_export_predicts_as_float32_does(jax_workdir, test_split, tmp_path):
  out = tmp_path / 'npu.onnx'
  result = run_helpers.run_cli('lmf_torch_npu.export', f'--checkpoint={jax_workdir}',
                               f'--out={out}', '--dtype=float16', '--batch=16')
  assert result.returncode == 0, result.stderr[-3000:]
  graph = onnx.load(out)
  assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
  got = export.run(export.session(out.read_bytes()), test_split.audio, test_split.visual,
                   test_split.text, batch=16)
  expected = jax_predict.Predictor(jax_workdir).logits(test_split.audio, test_split.visual,
                                                       test_split.text)
  agree = np.mean(np.argmax(got, 1) == np.argmax(expected, 1))
  assert agree >= 0.999, agree
  assert np.max(np.abs(got - expected)) <= 1e-2 * np.max(np.abs(expected))


def test_export_refuses_bad_requests_in_one_line(jax_workdir, tmp_path):
  arrays, config, _ = state_dict.load_checkpoint(os.path.join(jax_workdir, records.CHECKPOINT))
  with pytest.raises(ConfigError, match='--opset=9: choose 11 to 20'):
    export.export_onnx(arrays, config, opset=9)
  with pytest.raises(ConfigError, match='--batch=0: dynamic, or a batch size >= 1'):
    cli.parse_batch('0')
  (tmp_path / 'model.onnx').write_bytes(b'mine')
  with pytest.raises(ConfigError, match='exists: choose another --out, or pass --overwrite'):
    export.check_out(str(tmp_path / 'model.onnx'), overwrite=False)
  assert prediction.class_names(config) == ('not_sad', 'sad')
  # Without the optional extra: one line naming the install, from the command line and the API.
  hide = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
          "runpy.run_module('lmf_torch_npu.export', run_name=sys.argv[1])")
  result = subprocess.run([sys.executable, '-c', hide, '__main__'], capture_output=True,
                          text=True, check=False)
  run_helpers.assert_one_line(result, r'needs onnx and onnxruntime \(onnxruntime is missing\): '
                              r'pip install -e \.\[export\]')
  result = subprocess.run([sys.executable, '-c', hide, 'lmf_torch_npu.export'],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'ImportError: lmf_torch_npu.export needs onnx and onnxruntime')
