"""``eval.samples: N``: at every evaluation the policy answers the first N prompts of data.eval
(data.train when there is none; the data source's ``first_records``) with the plugin's ``sample``, one response each, drawn with the
same generator every time (seeded by the run's seed), so that the samples show the policy's change
and not new noise. Callbacks get them as ``on_samples(step, samples)``: the ``samples`` callback
writes them under ``output_dir/samples/`` and the ``trackers`` callback logs them (text tables,
images). Token plugins sample as an online run's algorithm says, else at their defaults.
"""

from __future__ import annotations

from typing import Any

import torch


def draw_samples(run: Any) -> list[dict]:
    """[{"prompt", "response", "where"}] of this evaluation: one response per context; a response is
    text (token plugins) or a PIL image (diffusion)."""
    options = {}
    if run.cfg.algorithm.name:  # sample as training samples (an online run's temperature, length, steps)
        from mmalign.algorithms import sampling_keywords
        from mmalign.plugins import registry

        options = sampling_keywords(run.plugin, run.cfg.algorithm.name, run.cfg.algorithm.options, registry())
    generator = torch.Generator().manual_seed(run.cfg.seed)
    with torch.no_grad(), run.accelerator.autocast():
        samples = run.plugin.sample(run.unwrapped, run.sample_contexts, 1, generator, **options)
    return [{"prompt": context.fields.get("prompt"), "response": responses[0], "where": context.where}
            for context, responses in zip(run.sample_contexts, samples.responses)]
