"""`aam pretrain`: a SequenceEncoder trained on pairwise UniFrac distances + masked nucleotides (no labels)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from aam.data.dataset import collate
from aam.data.prepare import PreparedTable, Preprocessing, make_dataset, prepare_table, report_token_limit
from aam.data.split import split_samples
from aam.data.streaming import StreamedTable, StreamingDataset, check_hdf5, open_streamed
from aam.models import ModelConfig, build_model, count_parameters
from aam.training.distributed import finish_distributed
from aam.training.losses import LossConfig, MultiTaskLoss
from aam.training.trainer import Trainer
from aam.workflows import distances
from aam.workflows.requests import PretrainRequest
from aam.workflows.runs import (
    check_batch_size,
    encoder_config,
    load_resume,
    pairwise_hook,
    preprocessing,
    report,
    resolve_resume,
    saved_plan,
    start_run,
    train_config,
    write_split,
)

log = logging.getLogger("aam")

PRETRAIN_METRICS = ["val_loss", "val_unifrac_loss", "val_unifrac_r2", "val_unifrac_mae", "val_nuc_accuracy"]


def run_pretrain(req: PretrainRequest) -> dict[str, Any]:
    req = resolve_resume(req)
    resume = load_resume(req.training.resume, "pretrain")
    dist_opts = distances.from_resume(req.distances, resume)
    dist_opts = distances.resolve(dist_opts, req.preprocess.asv_sampling, required=True)  # before the run folder
    req = dataclasses.replace(req, distances=dist_opts)
    check_batch_size(req.training.batch_size, pairwise=req.loss.penalty > 0)
    if req.stream:
        check_hdf5(req.input.table)
    run = start_run(req, req.hardware, req.training.seed)  # after every check of the options: it writes the folder
    kernels = req.hardware.kernels
    pre = Preprocessing.from_dict(resume["preprocessing"]) if resume else \
        preprocessing(req.preprocess, req.training.seed, kernels, "pretrain")
    if req.stream:  # the counts stay in the file; each batch reads its samples
        prepared: PreparedTable | StreamedTable = open_streamed(req.input.table, req.input.sequences,
                                                                pre.rarefy_depth, pre.rarefy_seed, pre.max_bp)
        ids = prepared.sample_ids
    else:
        prepared = prepare_table(req.input.table, req.input.sequences, pre.rarefy_depth, pre.rarefy_seed, pre.max_bp)
        ids = [str(s) for s in prepared.table.ids(axis="sample")]
    pre.rarefy_depth = prepared.depth
    dm = distances.load(dist_opts, req.input.table, req.hardware.num_workers, ids, prepared, pre)
    train_ids, val_ids = split_samples(ids, req.preprocess.test_size, pre.seed)
    write_split(run.out, train_ids, val_ids)
    if isinstance(prepared, StreamedTable):
        train_set, val_set = StreamingDataset(prepared, train_ids, pre), StreamingDataset(prepared, val_ids, pre)
    else:
        train_set, val_set = make_dataset(prepared, train_ids, pre), make_dataset(prepared, val_ids, pre)
    report_token_limit(train_set, pre.token_limit)
    if resume:
        mcfg = dataclasses.replace(ModelConfig.from_dict(resume["model_config"]), kernels=kernels)
    else:
        mcfg = encoder_config(req.model, pre, kernels)
    model = build_model(mcfg)
    log.info("SequenceEncoder: %d parameters; %d train / %d val samples", count_parameters(model), len(train_ids),
             len(val_ids))
    lo = req.loss
    loss = MultiTaskLoss(LossConfig(unifrac_weight=lo.penalty, unifrac_transform=lo.unifrac_transform,
                                    unifrac_scale=lo.unifrac_scale, nuc_weight=lo.nuc_penalty, kernels=kernels),
                         pairwise_fn=pairwise_hook(run.world, dm))
    info = {"kind": "pretrain", "model_config": mcfg.to_dict(), "preprocessing": pre.to_dict(),
            "unifrac": {"transform": lo.unifrac_transform, "scale": lo.unifrac_scale}}  # for `aam embed`
    trainer = Trainer(model, loss, train_set, val_set, functools.partial(collate, distances=dm),
                      train_config(req.training, lo, req.hardware, req.training.best_metric), run.device, run.out,
                      info, task="pretrain", batch_plan=saved_plan(resume))
    if req.training.resume:
        trainer.resume(req.training.resume)
    history = trainer.fit()
    trainer.close()
    finish_distributed()
    return report(trainer, history, PRETRAIN_METRICS)
