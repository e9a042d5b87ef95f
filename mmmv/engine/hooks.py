"""Hooks for mmengine runners.

:class:`TrainBenchmarkHook` (``custom_hooks = [dict(type='TrainBenchmarkHook', warmup=10)]``) measures what a training
run costs: the wall time of each iteration (the device synchronised at its end), the peak memory of every process and
how many SyncBatchNorm layers the model runs with. ``tools/analysis/benchmark_train.py`` adds it to the configs it
times; it works in any mmdet / mmseg / mmpretrain run, on one device or many.
"""
import json
import os.path as osp
import statistics
import time
from typing import List, Optional

import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook


def count_sync_batchnorm(model: torch.nn.Module) -> int:
    """Number of ``torch.nn.SyncBatchNorm`` layers in ``model`` (mmcv's SyncBN builds this class)."""
    return sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class TrainBenchmarkHook(Hook):
    """Time training iterations and record peak memory per process; write ``WORK_DIR/benchmark.json`` at the end.

    Args:
        warmup: iterations not counted in the timing (compilation, cudnn autotuning, allocator growth).
        out_file: file name of the report, in the run's work dir.
    """
    # Before mmengine's LoggerHook in every event: the logger resets the device's peak-memory counter each time it logs,
    # so the peak is read here, at the end of each iteration, ahead of it.
    priority = 'VERY_HIGH'

    def __init__(self, warmup: int = 10, out_file: str = 'benchmark.json'):
        if warmup < 0:
            raise ValueError(f'TrainBenchmarkHook: warmup must be >= 0, got {warmup}')
        self.warmup = warmup
        self.out_file = out_file
        self.times: List[float] = []
        self._start: Optional[float] = None
        self.sync_bn_layers = 0
        self.peak_allocated = 0
        self.peak_reserved = 0

    def before_train(self, runner) -> None:
        self.sync_bn_layers = count_sync_batchnorm(runner.model)
        runner.logger.info(f'TrainBenchmarkHook: {self.sync_bn_layers} SyncBatchNorm layers in the trained model, '
                           f'{get_world_size()} process(es)')
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        _synchronize()
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        _synchronize()
        self.times.append(time.perf_counter() - self._start)
        if len(self.times) <= self.warmup:  # progress while compiling (minutes, before the logger's first line)
            runner.logger.info(f'TrainBenchmarkHook: warm-up iteration {len(self.times)} of {self.warmup}: '
                               f'{self.times[-1]:.1f} s')
        if torch.cuda.is_available():
            self.peak_allocated = max(self.peak_allocated, torch.cuda.max_memory_allocated())
            self.peak_reserved = max(self.peak_reserved, torch.cuda.max_memory_reserved())

    def after_train(self, runner) -> None:
        timed = self.times[self.warmup:]
        median = statistics.median(timed) if timed else None
        per_rank = all_gather_object(dict(rank=get_rank(), peak_allocated_gib=self.peak_allocated / 2**30,
                                          peak_reserved_gib=self.peak_reserved / 2**30,
                                          median_iter_s=median, iterations_timed=len(timed)))
        report = dict(
            world_size=get_world_size(),
            device=torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
            sync_bn_layers=self.sync_bn_layers,
            warmup=self.warmup,
            iterations_run=len(self.times),
            first_iter_s=self.times[0] if self.times else None,  # with compilation, cudnn autotuning
            warmup_s=sum(self.times[:self.warmup]),
            median_iter_s=median,
            mean_iter_s=statistics.fmean(timed) if timed else None,
            ranks=per_rank)
        runner.logger.info('TrainBenchmarkHook: ' + json.dumps(report))
        if get_rank() == 0:
            with open(osp.join(runner.work_dir, self.out_file), 'w') as f:
                json.dump(report, f, indent=1)
