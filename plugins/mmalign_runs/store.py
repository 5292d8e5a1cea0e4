"""The ``local`` run store: ``output_dir`` on a file system, as docs/outputs.md describes.

    claim            the folder's lock, a fresh folder unless resuming (run_identity.py)
    start            --resume: the newest intact checkpoint of the same run (checkpoint_verify.py),
                     loaded (checkpoint.py; sharded_state.py under FSDP2); config.yaml; the
                     metrics rows logged so far (metrics_file.py)
    save_checkpoint  checkpoints/step-N, atomic and verified, keeping ``train.keep_last``
    save_final       final/ with the registered final files (the model card)
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

from mmalign.config import dump_config
from mmalign_runs.safe_files import write_atomic
from mmalign.run_setup import any_process
from mmalign.run_store import RunStore
from mmalign_runs import checkpoint as ckpt
from mmalign_runs.metrics_file import append_metrics, read_metrics, truncate_metrics
from mmalign_runs.run_identity import check_same_run, claim_output_dir, new_identity
from mmalign_runs.sharded_state import full_model_state, full_parameters, load_sharded, save_shards


class LocalRunStore(RunStore):
    """Checkpoints, metrics and ``final/`` under ``output_dir``."""

    def __init__(self, cfg: Any, accelerator: Any, log: Callable[[str], None]) -> None:
        super().__init__(cfg, accelerator, log)
        self.out = Path(cfg.output_dir)
        self.identity = None  # set by claim: it hashes the training data

    def claim(self, data_content: str, *, fresh: bool, overwrite: bool, cleanup: ExitStack) -> None:
        self.identity = new_identity(self.cfg, data_content)  # what must match for --resume
        claim_output_dir(self.out, is_main=self.accelerator.is_main_process, fresh=fresh, overwrite=overwrite,
                         cleanup=cleanup, vote=lambda failed: any_process(self.accelerator, failed)[0],
                         log=self.log)

    def start(self, run: Any, state: Any, resume: str | bool | None, force_resume: bool) -> None:
        if resume:
            self.restore(run, state, resume, force_resume)
        if run.is_main:
            write_atomic(self.out / "config.yaml", dump_config(self.cfg))
            truncate_metrics(self.out / "metrics.jsonl", state.step)
            state.history = read_metrics(self.out / "metrics.jsonl")

    def restore(self, run: Any, state: Any, resume: str | bool, force_resume: bool) -> None:
        """Continue from a checkpoint of the same run: weights, optimizer, schedule, data position."""
        path, saved_state, saved = ckpt.find_resume_checkpoint(
            self.out / "checkpoints", None if resume is True else Path(resume), run.log)
        check_same_run(path, saved, self.identity, force=force_resume, log=run.log)
        self.identity.run_id = saved.get("run_id") or self.identity.run_id  # the same run, continued
        whole = None if run.sharded else lambda d: run.plugin.load_weights(run.unwrapped, d)
        loaded = ckpt.load_checkpoint(path, load_model=whole, optimizer=run.optimizer, scheduler=run.scheduler,
                                      data_generator=run.stream.generator, rank=run.accelerator.process_index,
                                      state=saved_state,
                                      load_sharded=lambda d, meta: load_sharded(d, run.policy, run.optimizer, meta))
        state.step, state.skipped = loaded["step"], loaded.get("skipped_steps", 0)
        state.meter.started -= loaded.get("elapsed", 0.0)  # time/elapsed continues the run's clock
        run.stream.consumed = loaded["consumed"]
        state.window = [{k: torch.tensor(v) for k, v in m.items()} for m in loaded.get("metrics_window", [])]
        if "source_tensors" in loaded:  # what the online source keeps of its own (a PPO critic)
            run.stream.load_source_state(loaded["source_tensors"], loaded.get("source", {}))
        run.log(f"resumed from {path} at step {state.step}")
        if loaded.get("processes", run.stream.world) != run.stream.world:
            run.log(f"note: the checkpoint was written by {loaded['processes']} processes and this run has "
                    f"{run.stream.world}: training continues from the same data position, but not bit for bit.")

    def append_row(self, row: dict) -> None:
        append_metrics(self.out / "metrics.jsonl", row)

    def save_checkpoint(self, run: Any, state: Any) -> None:
        """Every process's generators are saved (each draws its own noise); only the main one writes."""
        rngs = [ckpt.rng_state(run.stream.generator)]
        if run.stream.world > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        source_tensors, source_meta = run.stream.source_state()
        sharded = save_shards(self.out / "checkpoints", state.step, run.policy, run.optimizer,
                              run.accelerator) if run.sharded else None
        if run.is_main:
            ckpt.save_checkpoint(self.out / "checkpoints", state.step,
                                 save_model=lambda d: run.plugin.save(run.unwrapped, d), optimizer=run.optimizer,
                                 scheduler=run.scheduler, data_generator=run.stream.generator,
                                 trainer_state=_trainer_state(run, state, source_meta),
                                 keep_last=self.cfg.train.keep_last, rng_states=rngs,
                                 identity_json=self.identity.to_json(), source_tensors=source_tensors,
                                 sharded=sharded)
        run.accelerator.wait_for_everyone()

    def save_final(self, run: Any, state: Any) -> Path:
        """``final/``: under FSDP2 the full state is gathered on the main process, which writes."""
        final = self.out / "final"
        full = full_model_state(run.policy) if run.sharded else None
        if run.is_main:
            with full_parameters(run.unwrapped, full) if full is not None else nullcontext():
                ckpt.save_final(ckpt.with_final_files(lambda d: run.plugin.save(run.unwrapped, d), self.cfg,
                                                      state.history), final)
        return final

    def last_checkpoint(self) -> Path | None:
        return ckpt.last_intact(self.out / "checkpoints")


def _trainer_state(run: Any, state: Any, source_meta: dict) -> dict:
    return {"step": state.step, "consumed": run.stream.consumed, "total_steps": run.total_steps,
            "processes": run.stream.world, "skipped_steps": state.skipped, "elapsed": state.meter.elapsed(),
            "metrics_window": [{k: float(v) for k, v in m.items()} for m in state.window],
            "source": source_meta}
