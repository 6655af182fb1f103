"""Train the built-in model and its MTP head on the synthetic corpus, then save the shipped weights.

Run ``python -m graphcap.models.train`` (about 1-2 minutes on 2 CPU cores). It
writes ``graphcap/models/tiny_lm.pdparams`` (float32 state dict, ``target.*`` and
``mtp.*`` keys) and ``graphcap/models/tiny_lm.json`` (the config and training
stats). Deterministic for a given seed and step count up to CPU kernel
reduction order.

Loss: next-token cross entropy of the target plus ``mtp_weight`` times the
next-next-token cross entropy of the MTP head. The head reads the target's hidden
states without detaching them (as in DeepSeek-V3), so the target also learns to
carry information about the token after next.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F

from graphcap.models import corpus
from graphcap.models.tiny_lm import (
    STATS_PATH,
    WEIGHTS_PATH,
    MTPHead,
    TinyLM,
    TinyLMConfig,
    build_models,
    state_dict_for_saving,
)


def joint_loss(
    model: TinyLM, mtp_head: MTPHead, tokens: paddle.Tensor, mtp_weight: float
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Return ``(total, target_ce, mtp_ce)`` for int64 ``tokens`` [B, N]."""
    logits, hidden = model(tokens[:, :-1])
    target_ce = F.cross_entropy(logits, tokens[:, 1:].unsqueeze(-1)).mean()
    # MTP row p: target hidden at p and the token at p+1 -> the token at p+2.
    mtp_logits, _ = mtp_head(hidden[:, :-1], tokens[:, 1:-1])
    mtp_ce = F.cross_entropy(mtp_logits, tokens[:, 2:].unsqueeze(-1)).mean()
    return target_ce + mtp_weight * mtp_ce, target_ce, mtp_ce


@paddle.no_grad()
def evaluate(model: TinyLM, mtp_head: MTPHead, tokens: np.ndarray) -> dict[str, float]:
    """Greedy top-1 accuracy and CE of the target (next token) and the MTP head (token after next).

    ``tokens`` int64 [B, N] held-out data; every position counts (all tokens are real).
    """
    t = paddle.to_tensor(tokens)
    logits, hidden = model(t[:, :-1])
    mtp_logits, _ = mtp_head(hidden[:, :-1], t[:, 1:-1])
    target_ce = float(F.cross_entropy(logits, t[:, 1:].unsqueeze(-1)).mean())
    mtp_ce = float(F.cross_entropy(mtp_logits, t[:, 2:].unsqueeze(-1)).mean())
    target_acc = float((logits.argmax(-1) == t[:, 1:]).astype("float32").mean())
    mtp_acc = float((mtp_logits.argmax(-1) == t[:, 2:]).astype("float32").mean())
    # Acceptance proxy: the draft's first token counts when the target's own
    # greedy token is right too, i.e. the draft agrees with the target's argmax
    # at p+2 given the true token at p+1.
    agree = float((mtp_logits.argmax(-1) == logits[:, 1:].argmax(-1)).astype("float32").mean())
    return {
        "target_ce": target_ce,
        "mtp_ce": mtp_ce,
        "target_acc": target_acc,
        "mtp_acc": mtp_acc,
        "mtp_agrees_with_target": agree,
    }


def train(
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    mtp_weight: float,
    seed: int,
    config: TinyLMConfig,
    log_every: int = 20,
) -> tuple[TinyLM, MTPHead, dict[str, Any]]:
    """Train from scratch with AdamW (linear warm-up, cosine decay); return the models and stats."""
    paddle.seed(seed)
    np.random.seed(seed)
    model, mtp_head = build_models(config)
    params = list(model.parameters()) + list(mtp_head.parameters())
    warmup = max(1, steps // 20)
    schedule = paddle.optimizer.lr.LambdaDecay(
        lr,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    opt = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=params,
        weight_decay=0.01,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    heldout = corpus.make_batch(64, seq_len, seed=0, heldout=True)
    start = time.perf_counter()
    for step in range(steps):
        tokens = paddle.to_tensor(corpus.make_batch(batch_size, seq_len + 1, seed=seed * 100_003 + step))
        loss, target_ce, mtp_ce = joint_loss(model, mtp_head, tokens, mtp_weight)
        loss.backward()
        opt.step()
        opt.clear_grad()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(
                f"step {step:4d}/{steps}  loss {float(loss):.3f}  target_ce {float(target_ce):.3f}  "
                f"mtp_ce {float(mtp_ce):.3f}  lr {schedule.get_lr():.2e}  "
                f"{time.perf_counter() - start:6.1f}s",
                flush=True,
            )
    seconds = time.perf_counter() - start
    model.eval()
    mtp_head.eval()
    metrics = evaluate(model, mtp_head, heldout)
    stats = {
        "config": config.to_dict(),
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "lr": lr,
            "mtp_weight": mtp_weight,
            "seed": seed,
            "seconds": round(seconds, 1),
            "final_loss": float(loss),
            "final_target_ce": float(target_ce),
            "final_mtp_ce": float(mtp_ce),
        },
        "heldout": {k: round(v, 4) for k, v in metrics.items()},
        "num_params": {
            "target": int(sum(math.prod(p.shape) for p in model.parameters())),
            "mtp_head_own": int(sum(math.prod(p.shape) for p in mtp_head.parameters())),
        },
    }
    return model, mtp_head, stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: train, print the held-out stats, save the weights and stats."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=180)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mtp-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=WEIGHTS_PATH, help="weights file; the stats go next to it"
    )
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    model, mtp_head, stats = train(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        mtp_weight=args.mtp_weight,
        seed=args.seed,
        config=TinyLMConfig(vocab_size=corpus.VOCAB_SIZE),
    )
    out = args.out
    stats_path = STATS_PATH if out == WEIGHTS_PATH else out.with_suffix(".json")
    paddle.save(state_dict_for_saving(model, mtp_head), str(out))
    stats["weights_bytes"] = out.stat().st_size
    stats_path.write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats["heldout"], indent=2))
    print(f"saved {out} ({stats['weights_bytes'] / 1e6:.2f} MB) and {stats_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
