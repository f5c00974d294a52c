"""`aam export --format onnx`: the graph of a fine-tuned model (an ensemble, with ASV identity, presence bag
and a categorical column; and a classifier) runs in onnxruntime on real batches of the table and matches the
PyTorch model within the fp32 parity rule; a missing extra is a one-line error."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.data.dataset import collate
from aam.data.prepare import Preprocessing, make_dataset, prepare_table
from aam.ops import parity
from aam.workflows.export import input_names, onnx_inputs
from aam.workflows.inference import load_model
from aam.workflows.requests import InferenceOptions, SavedModelInput
from test_e2e_cli import MODEL, run_err, write_tiny

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'aam[onnx]')")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'aam[onnx]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("onnx-data"))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "classifier"])
def test_onnx_graph_matches_pytorch_on_the_table(data, tmp_path, task):
    extra = ["--metadata-column", "age", "--categorical-columns", "group", "--ensemble", "2"] \
        if task == "regression" else ["--metadata-column", "group", "--classifier", "--ensemble", "1"]
    assert main(["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--output-dir",
                 str(tmp_path / "ft"), "--epochs", "1", *extra, *MODEL]) == 0
    model_path = tmp_path / "ft" / "checkpoints" / "best.pt"
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(model_path), "--format", "onnx", "--output", str(out)]) == 0
    graph = onnx.load(str(out))
    info = json.loads({p.key: p.value for p in graph.metadata_props}["aam_info"])
    names = [i.name for i in graph.graph.input]
    _, mcfg, pre, model, _ = load_model(SavedModelInput(model=str(model_path), table=str(data["table"])),
                                        InferenceOptions(device="cpu", kernels="math"), "train")
    assert names == info["inputs"] == input_names(bool(mcfg.asv_vocab_size), bool(mcfg.categorical_cardinalities))
    assert ("categorical" in names) == (task == "regression")
    # real batches of the table, of several sizes, prepared as `aam predict` does
    prepared = prepare_table(data["table"], None, pre.rarefy_depth, pre.rarefy_seed, pre.max_bp, drop_unknown=True)
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    cat = None
    if mcfg.categorical_cardinalities:
        from aam.data import metadata as meta
        from aam.data import targets as tgt

        cat = tgt.CategoryEncoder.from_dict(pre.category_encoder).transform(meta.load_metadata(data["md"]), ids)
    dataset = make_dataset(prepared, ids, Preprocessing.from_dict(pre.to_dict()), None, cat)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for lo, hi in ((0, 1), (1, 9), (9, len(dataset))):
        batch = collate([dataset[i] for i in range(lo, hi)])
        feeds = onnx_inputs(batch, names)
        got = torch.from_numpy(session.run(None, feeds)[0])
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        with torch.no_grad():
            kwargs = {k: tensors[k] for k in ("tokens", "asv_index", "offsets", "counts", "asv_ids", "categorical")
                      if k in tensors}
            low = model(**kwargs)["target"]
            ref = model.double()(**{k: v.double() if v.is_floating_point() else v for k, v in kwargs.items()})["target"]
            model.float()
        assert got.shape == (hi - lo, low.shape[1])
        parity.assert_parity(ref, low, got, "forward", torch.float32, what="onnx")
        assert np.isfinite(got.numpy()).all()


def test_missing_onnx_extra_is_a_one_line_error(data, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    msg = run_err(capsys, ["export", "--model", str(tmp_path / "none.pt"), "--output", str(tmp_path / "m.onnx")])
    assert msg.startswith("error:") and "pip install 'aam[onnx]'" in msg
