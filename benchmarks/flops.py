"""Model FLOPs of one mmalign step, and the matrix-multiply peak they are compared with.

The usual dense estimate: a forward pass costs 2 FLOPs per parameter per token it processes, a
backward pass twice that. One DPO step of mmalign is a policy forward + backward (6 N T) and a
reference forward (2 N T):

    FLOPs/step = 8 * sum over parameter groups g of N_g * T_g

with the tokens T_g that mmalign's path actually sends through group g (padding not counted):

    blocks (decoder layers)   T = sum over pairs of (prompt + image tokens + chosen + rejected):
                              prefix sharing runs the prompt once per pair
    lm_head                   T = sum over pairs of (chosen + rejected): logits only at completion
                              positions
    vision tower (VLM)        T = 257 per pair (256 patches + CLS): each image encoded once per pair
    projector (VLM)           T = 256 per pair
    embeddings                0 (a lookup, not a matmul)

Attention scores (2 * T^2 * hidden per layer, forward) are left out, as in the 6 N T rule, so the
share of peak is a lower bound. The whole model is trained (full fine-tuning, as the peer does).
"""

from __future__ import annotations

import time

from benchmarks.workloads import IMAGE_TOKENS, Lengths, Workload, step_lengths


def tokens_per_group(pairs: list[Lengths]) -> dict[str, int]:
    """Tokens each parameter group processes for these pairs on mmalign's (prefix-shared) path."""
    tokens = {"blocks": sum(p.prompt + p.image_tokens + p.chosen + p.rejected for p in pairs),
              "lm_head": sum(p.chosen + p.rejected for p in pairs)}
    images = sum(1 for p in pairs if p.image_tokens)
    if images:
        tokens["vision"] = images * (IMAGE_TOKENS + 1)
        tokens["projector"] = images * IMAGE_TOKENS
    return tokens


def step_flops(params: dict, pairs: list[Lengths]) -> float:
    """8 * sum_g N_g * T_g: policy forward + backward (6) and reference forward (2)."""
    return 8.0 * sum(params[g] * t for g, t in tokens_per_group(pairs).items())


def timed_flops_per_step(w: Workload) -> float:
    """Mean FLOPs of the timed steps (the warm-up steps are not timed). Diffusion: the UNet FLOPs
    counted by torch's FlopCounterMode (LoRA policy forward + backward, reference forward) per row,
    2 rows (chosen, rejected) per pair; the VAE and text encoders are cached after the warm-up."""
    if w.kind == "online":
        return online_step_flops(w)
    if w.kind == "vlm_online":
        return vlm_online_step_flops(w)
    if w.kind == "ddpo":
        from benchmarks.ddpo import ddpo_step_flops

        return ddpo_step_flops(w)
    if w.kind == "diffusion":
        return 2 * w.pairs * (w.params["policy_flops_per_row"] + w.params["reference_flops_per_row"])
    steps = step_lengths(w)[w.warmup:]
    return sum(step_flops(w.params, s) for s in steps) / len(steps)


def online_step_flops(w: Workload) -> float:
    """One online step of R = prompts x G rows of prompt P + completion L tokens (plain rows, the
    prompt repeated per response): generation 2 N T (prefill + KV-cached decode; the LM head only
    at the L sampled positions), policy forward + backward 6 N T, reference forward 2 N T:

        FLOPs/step = 10 * (N_blocks * R * (P + L) + N_lm_head * R * L)
    """
    rows = w.pairs * w.samples
    n = w.records[0]
    return 10.0 * (w.params["blocks"] * rows * (n.prompt + n.chosen) + w.params["lm_head"] * rows * n.chosen)


def vlm_online_step_flops(w: Workload) -> float:
    """One vlm_grpo step on mmalign's path, C contexts x G samples = R rows of image tokens I +
    prompt P + completion L. Each context's image and prompt go through the model once per group,
    in generation (2 N T: prefilled once, KV cache repeated per sample) and in the update (policy
    forward + backward 6, reference forward 2; group sharing); the completions once per row:

        FLOPs/step = 10 N_blocks (C (I + P) + R L) + 10 N_lm_head R L
                     + 10 C (N_vision (I + 1) + N_projector I)
    """
    contexts, n = w.pairs, w.records[0]
    rows = contexts * w.samples
    tokens = contexts * (n.image_tokens + n.prompt) + rows * n.chosen
    image = w.params["vision"] * (IMAGE_TOKENS + 1) + w.params["projector"] * IMAGE_TOKENS
    return 10.0 * (w.params["blocks"] * tokens + w.params["lm_head"] * rows * n.chosen + contexts * image)


def matmul_peak(device: str = "cpu", size: int | None = None, repeats: int = 10) -> dict[str, float]:
    """Measured FLOP/s of a square torch matmul in fp32 and in bf16 (best of several sizes on CPU,
    8192 on a GPU; best of ``repeats`` timed products after warm-up)."""
    import torch

    sizes = [size] if size else ([1024, 2048] if device == "cpu" else [8192])
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(3):
                a @ b
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                a @ b
                _sync(device)
                best = max(best, 2 * n**3 / (time.perf_counter() - start))
        out[name] = best
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
