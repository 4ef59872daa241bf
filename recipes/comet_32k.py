"""CoMeT at 32k: the paper's setting (Qwen3 base, chunk 2048, global memory 512, stride 8, budget 2048).

    python recipes/comet_32k.py --preset tiny         # a laptop: tiny random Qwen3, CPU, about a minute
    python recipes/comet_32k.py --base PATH           # a local Hugging Face Qwen3 checkpoint

Until the Ray Train / MLflow orchestration lands (see the issue "Training orchestration"), this
recipe runs a single-process training loop on a generated passkey task, saves the CoMeT model with
`save_pretrained`, reloads it and answers a passkey prompt with `generate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import torch

from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

PAPER = dict(
    comet=CoMeTConfig(chunk_size=2048, global_mem_size=512, temp_stride=8, temp_budget=2048, gradient_checkpointing=True),
    seq_len=32768, lr=5e-5, memory_lr_multiplier=5.0, warmup_steps=10, clip=1.5, steps=1000,
)
TINY = dict(
    comet=CoMeTConfig(chunk_size=64, global_mem_size=8, temp_stride=8, temp_budget=64),
    seq_len=256, lr=3e-3, memory_lr_multiplier=5.0, warmup_steps=5, clip=1.5, steps=30,
)
DIGITS = range(10, 20)  # token ids used for passkey digits in the tiny preset


def tiny_backbone(vocab: int = 256):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return Qwen3ForCausalLM(cfg)


def passkey_batch(seq_len: int, vocab: int, gen: torch.Generator, key_len: int = 5):
    """Filler tokens with a passkey hidden at a random depth; the answer is the last key_len tokens."""
    key = torch.randint(DIGITS.start, DIGITS.stop, (key_len,), generator=gen)
    body = torch.randint(32, vocab, (seq_len,), generator=gen)
    at = int(torch.randint(1, seq_len - 3 * key_len - 2, (1,), generator=gen))
    body[at - 1], body[at:at + key_len] = 1, key  # marker token 1 before the key
    body[-key_len - 1], body[-key_len:] = 2, key  # question token 2, then the answer
    labels = torch.full_like(body, -100)
    labels[-key_len:] = key
    return body[None], labels[None], key


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "paper"], default="paper")
    p.add_argument("--base", help="local directory or model id of a Hugging Face causal LM (paper preset)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--output", default="outputs/comet_32k")
    args = p.parse_args(argv)
    preset = dict(TINY if args.preset == "tiny" else PAPER)
    if args.max_steps is not None:
        if args.max_steps <= 0:
            p.error(f"--max-steps {args.max_steps}: must be a positive number of optimizer steps")
        preset["steps"] = args.max_steps
    if args.preset == "paper" and not args.base:
        p.error("--preset paper needs --base PATH (a local Qwen3 checkpoint); use --preset tiny on a laptop")

    torch.manual_seed(0)
    backbone = tiny_backbone() if args.preset == "tiny" else args.base
    model = CoMeTForCausalLM.from_base(backbone, dataclasses.replace(preset["comet"])).train()
    vocab = model.backbone.config.vocab_size
    memory = {id(q) for q in model.memory_parameters()}
    groups = [{"params": [q for q in model.parameters() if id(q) not in memory], "lr": preset["lr"]},
              {"params": model.memory_parameters(), "lr": preset["lr"] * preset["memory_lr_multiplier"]}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    steps, warm = preset["steps"], preset["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for step in range(steps):
        ids, labels, _ = passkey_batch(preset["seq_len"], vocab, gen)
        loss = model(input_ids=ids, labels=labels, return_logits=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset["clip"])
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}", flush=True)
    print(f"trained {steps} steps in {time.perf_counter() - t0:.1f} s")

    model.save_pretrained(args.output)
    reloaded = CoMeTForCausalLM.from_pretrained(args.output).eval()
    ids, _, key = passkey_batch(preset["seq_len"], vocab, gen)
    answer = reloaded.generate(input_ids=ids[:, :-len(key)], max_new_tokens=len(key), eos_token_id=None)[0, -len(key):]
    print(f"saved to {args.output}; passkey {key.tolist()} -> generated {answer.tolist()}")
    print(f"load it with: CoMeTForCausalLM.from_pretrained({args.output!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
