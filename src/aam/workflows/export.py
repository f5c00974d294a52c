"""The work behind `aam export`: a fine-tuned model as an ONNX graph for onnxruntime (or any ONNX runtime).

The graph is the model on its PyTorch math path (the custom kernels are not in it), exported by torch.export
with every axis dynamic: batch, unique ASVs, read length, entries and slots. Its inputs are the batch contract
of docs/DEVELOPING.md plus the padded layout, which `onnx_inputs` builds from an `aam` batch:

| input | shape | what |
|---|---|---|
| tokens | int64 [U, L] | nucleotide tokens of the batch's unique ASVs (START 5, A C G T 1-4, PAD 0) |
| asv_index | int64 [T] | the unique ASV of each (sample, ASV) entry |
| offsets | int64 [B + 1] | sample b owns entries offsets[b]:offsets[b + 1] |
| counts | float32 [T] | reads of each entry (after the training's rarefaction) |
| entry_sample, entry_pos | int64 [T] | each entry's sample and slot |
| slots | float32 [S] | any values: its length S is the largest sample's entry count |
| asv_ids | int64 [U] | identity index of each unique ASV (models with an ASV vocabulary) |
| categorical | int64 [B, C] | category codes (models with categorical columns) |

Output `target` [B, out]: regression values on the model's (standardised) scale, quantiles, or class logits.
The model's preprocessing and target transform travel in the graph's metadata (`aam_info`, JSON), so a caller
can prepare tables and map predictions back to original units as `aam predict` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import aam
from aam.data.batching import packed_layout
from aam.errors import AAMError, InputError
from aam.ops import parity
from aam.workflows.inference import load_model
from aam.workflows.requests import ExportRequest, InferenceOptions

log = logging.getLogger("aam")
START, PAD = 5, 0


class OnnxForward(torch.nn.Module):
    """The model's `target` from the graph's inputs (the table above)."""

    def __init__(self, model: torch.nn.Module, vocabulary: bool, categorical: bool) -> None:
        super().__init__()
        self.model, self.vocabulary, self.categorical = model, vocabulary, categorical

    def forward(self, tokens, asv_index, offsets, counts, entry_sample, entry_pos, slots, asv_ids=None,
                categorical=None):
        return self.model(tokens=tokens, asv_index=asv_index, offsets=offsets, counts=counts, asv_ids=asv_ids,
                          categorical=categorical, layout=(entry_sample, entry_pos, slots.shape[0]))["target"]


def input_names(vocabulary: bool, categorical: bool) -> list[str]:
    names = ["tokens", "asv_index", "offsets", "counts", "entry_sample", "entry_pos", "slots"]
    return names + (["asv_ids"] if vocabulary else []) + (["categorical"] if categorical else [])


def onnx_inputs(batch: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """The graph's inputs (numpy, by name) from a batch of `aam.data.dataset.collate`."""
    b, pos, s = packed_layout(batch["offsets"])
    values = {"tokens": batch["tokens"], "asv_index": batch["asv_index"], "offsets": batch["offsets"],
              "counts": batch["counts"].float(), "entry_sample": b, "entry_pos": pos,
              "slots": torch.zeros(s), "asv_ids": batch.get("asv_ids"), "categorical": batch.get("categorical")}
    return {n: values[n].numpy() for n in names}


def example_batch(config: Any, seed: int, sizes: list[int], n_unique: int, length: int) -> dict[str, torch.Tensor]:
    """A random batch in the model's vocabulary: `sizes` entries per sample over `n_unique` ASVs of `length`
    tokens (a few shorter), for tracing and for the parity check."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 5, (n_unique, length), generator=g)
    tokens[:, 0] = START
    tokens[n_unique // 2:, length - length // 4:] = PAD
    total = sum(sizes)
    batch = {"tokens": tokens, "asv_index": torch.randint(0, n_unique, (total,), generator=g),
             "offsets": torch.tensor([0, *np.cumsum(sizes)], dtype=torch.long),
             "counts": torch.randint(1, 50, (total,), generator=g).float()}
    if config.asv_vocab_size:
        batch["asv_ids"] = torch.randint(0, config.asv_vocab_size + 1, (n_unique,), generator=g)
    if config.categorical_cardinalities:
        batch["categorical"] = torch.stack([torch.randint(0, max(c, 1), (len(sizes),), generator=g)
                                            for c in config.categorical_cardinalities], dim=1)
    return batch


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporter's own INFO/WARNING chatter (skipped optimisations, torchvision absent) stays out of the log."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _require_onnx() -> Any:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise AAMError("aam export needs onnx, onnxscript and onnxruntime: pip install 'aam[onnx]'") from None
    return onnxruntime


def run_export(req: ExportRequest) -> dict[str, Any]:
    if req.format != "onnx":
        raise InputError(f"--format {req.format!r}: aam exports onnx")
    ort = _require_onnx()
    output = Path(req.output)
    if output.resolve() == Path(req.model).resolve():
        raise InputError(f"--output {output} is the model itself; name a new .onnx file")
    from aam.workflows.requests import SavedModelInput

    source = SavedModelInput(model=req.model, table="")
    data, mcfg, pre, model, _ = load_model(source, InferenceOptions(device="cpu", kernels="math"), "train")
    vocabulary, categorical = bool(mcfg.asv_vocab_size), bool(mcfg.categorical_cardinalities)
    forward = OnnxForward(model, vocabulary, categorical).eval()
    names = input_names(vocabulary, categorical)
    length = min(pre.max_bp + 1, 40)
    example = example_batch(mcfg, 0, [3, 2, 4], 6, length)
    dynamic = {n: {0: torch.export.Dim.DYNAMIC} for n in names}
    dynamic["tokens"] = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    args = {n: torch.from_numpy(v) for n, v in onnx_inputs(example, names).items()}
    log.info("exporting %s to ONNX (the math path; every axis dynamic)", req.model)
    with warnings.catch_warnings(), torch.no_grad(), _quiet("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(forward, (), kwargs=args, dynamic_shapes=dynamic, input_names=names,
                                    output_names=["target"], dynamo=True, opset_version=req.opset, verbose=False)
    info = {"aam_version": aam.__version__, "kind": data.get("kind"), "model_config": mcfg.to_dict(),
            "preprocessing": pre.to_dict(), "inputs": names}
    program.model.metadata_props["aam_info"] = json.dumps(info, default=str)
    output.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(output))
    check = verify(forward, output, mcfg, names, ort, length)
    if not check.ok:
        raise AAMError(f"the exported graph does not reproduce the model: {check.message()}")
    log.info("wrote %s; onnxruntime vs PyTorch on a batch of another shape: %s", output, check.message())
    return {"output": str(output), "inputs": names, "max_abs_error": check.err, "bound": check.bound}


def verify(forward: OnnxForward, path: Path, config: Any, names: list[str], ort: Any, length: int) -> parity.Check:
    """onnxruntime on a batch of other sizes than the traced one, against the model in float64 (reference) and
    float32 (the same precision), by the parity rule."""
    batch = example_batch(config, 1, [5, 1, 7, 2, 3], 11, max(length - 3, 2))
    feeds = onnx_inputs(batch, names)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    tensors = {n: torch.from_numpy(v) for n, v in feeds.items()}
    with torch.no_grad():
        low = forward(**tensors)
        ref = forward.double()(**{n: t.double() if t.is_floating_point() else t for n, t in tensors.items()})
    forward.float()
    return parity.check(ref, low, torch.from_numpy(got), "forward", torch.float32, what="onnx")
