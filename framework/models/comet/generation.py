"""`generate` for CoMeT with transformers' arguments, on the streaming session instead of a KV cache.

It takes what `GenerationMixin.generate` callers pass (lm-evaluation-harness among them): a `generation_config`
and its fields as keyword arguments (`max_new_tokens` or `max_length`, `do_sample`, `temperature`, `top_k`,
`top_p`, `eos_token_id`, `pad_token_id`), an `attention_mask` with left or right padding, `stopping_criteria`,
`logits_processor`, `return_dict_in_generate` / `output_scores`, a `streamer` (one prompt, as in transformers:
`TextIteratorStreamer` works), and `use_cache` (always on: the stream is the cache). It returns the prompts as given followed by the new tokens, padded with `pad_token_id` after a row ends.

Prompts of different lengths share a batch: the rows are grouped by their number of real tokens and each group
streams as one batch (a prompt's chunk layout depends on its length), so every row gets what it would get alone.
"""

from __future__ import annotations

import copy

import torch

UNSUPPORTED = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
               "penalty_alpha": None, "num_beam_groups": 1}
ACCEPTED = {"attention_mask", "generator", "use_cache", "inputs", "streamer", "synced_gpus"}


class GenerationError(ValueError):
    """A generate argument CoMeT cannot honour; the message names it and the fix."""


def pick_token(logits: torch.Tensor, do_sample: bool, temperature, top_k, top_p, generator) -> torch.Tensor:
    """(B,) the next tokens: argmax, or a sample after temperature, top-k and top-p (nucleus) filtering."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(float(temperature or 1.0), 1e-5)
    if top_k:
        kth = logits.topk(min(int(top_k), logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _settings(model, generation_config, kwargs: dict):
    """(GenerationConfig, the keyword arguments that are not its fields)."""
    base = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if base is None:
        from transformers import GenerationConfig

        base = GenerationConfig()
    config = copy.deepcopy(base)
    fields = {k: v for k, v in kwargs.items() if k not in ACCEPTED}
    rest = {k: v for k, v in kwargs.items() if k in ACCEPTED}
    unused = config.update(**fields)
    if unused:
        raise GenerationError(f"CoMeT generate got unknown argument(s) {sorted(unused)}. Fix: pass transformers "
                              "GenerationConfig fields, attention_mask, stopping_criteria or logits_processor")
    for name, neutral in UNSUPPORTED.items():
        value = getattr(config, name, neutral)
        if value not in (None, neutral):
            raise GenerationError(f"CoMeT generate does not support {name}={value!r} (greedy or sampled decoding of "
                                  f"one sequence per prompt). Fix: leave {name} at {neutral!r}")
    return config, rest


def _real_spans(input_ids: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[int, int]]:
    """Per row, [start, end) of its real tokens: padding on the left or on the right, not in the middle."""
    width = input_ids.shape[1]
    if mask is None:
        return [(0, width)] * input_ids.shape[0]
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise GenerationError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}. "
                              "Fix: pass the mask the tokenizer returned with these ids")
    spans = []
    for row, m in enumerate(mask.bool()):
        real = m.nonzero().flatten()
        if real.numel() == 0:
            raise GenerationError(f"prompt {row} has no real token (its attention_mask is all 0)")
        start, end = int(real[0]), int(real[-1]) + 1
        if end - start != real.numel():
            raise GenerationError(f"prompt {row} has padding between real tokens. Fix: pad on the left or the right")
        spans.append((start, end))
    return spans


def _as_list(value) -> list:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor | None = None, generation_config=None, logits_processor=None,
             stopping_criteria=None, **kwargs):
    """Continue each prompt; see the module docstring. Returns (B, width + new) token ids, or a
    `GenerateDecoderOnlyOutput` with `return_dict_in_generate=True`."""
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise GenerationError("generate takes input_ids of shape (batch, length > 0)")
    config, rest = _settings(model, generation_config, kwargs)
    batch, width = input_ids.shape
    new = config.max_new_tokens if config.max_new_tokens is not None else max(0, (config.max_length or 0) - width)
    eos = torch.tensor(_as_list(config.eos_token_id), dtype=torch.long, device=input_ids.device)
    pad = config.pad_token_id if config.pad_token_id is not None else (int(eos[0]) if eos.numel() else 0)
    pick = dict(do_sample=bool(config.do_sample), temperature=config.temperature, top_k=config.top_k,
                top_p=config.top_p, generator=rest.get("generator"))
    want_scores = bool(config.return_dict_in_generate and config.output_scores)

    streamer = rest.get("streamer")
    if streamer is not None and batch != 1:
        raise GenerationError("a streamer takes one prompt at a time (as in transformers). Fix: pass one prompt")
    if streamer is not None:
        streamer.put(input_ids.cpu())
    spans = _real_spans(input_ids, rest.get("attention_mask"))
    groups: dict[int, list[int]] = {}
    for row, (start, end) in enumerate(spans):
        groups.setdefault(end - start, []).append(row)
    new_tokens = torch.full((batch, new), pad, dtype=torch.long, device=input_ids.device)
    scores = [None] * new if want_scores else None
    made = 0
    for length, rows in groups.items():
        prompts = torch.stack([input_ids[r, spans[r][0]:spans[r][1]] for r in rows])
        tokens, group_scores = _continue(model, prompts, input_ids[rows], new, eos, pad, pick, logits_processor,
                                         stopping_criteria, want_scores, streamer)
        new_tokens[rows, :tokens.shape[1]] = tokens
        made = max(made, tokens.shape[1])
        if want_scores:
            for step, s in enumerate(group_scores):
                if scores[step] is None:
                    scores[step] = s.new_full((batch, s.shape[-1]), float("-inf"))
                scores[step][rows] = s
    if streamer is not None:
        streamer.end()
    sequences = torch.cat([input_ids, new_tokens[:, :made]], dim=1)
    if not config.return_dict_in_generate:
        return sequences
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return GenerateDecoderOnlyOutput(sequences=sequences, scores=tuple(scores[:made]) if want_scores else None)


def _continue(model, prompts, given, new: int, eos, pad: int, pick: dict, processors, criteria, want_scores,
              streamer=None):
    """New tokens (B, <= new) for prompts of one length; `given` are the rows as passed (padding included), which
    stopping criteria and logits processors see in front of the new tokens."""
    batch = prompts.shape[0]
    out, scores = [], []
    if new <= 0:
        return prompts.new_zeros(batch, 0), scores
    stream = model.stream()
    logits = stream.feed(prompts, logits="last")[:, -1]
    done = torch.zeros(batch, dtype=torch.bool, device=prompts.device)
    for step in range(new):
        so_far = torch.cat([given] + [t[:, None] for t in out], dim=1)
        if processors is not None:
            logits = processors(so_far, logits)
        if want_scores:
            scores.append(logits.float())
        token = pick_token(logits, **pick)
        token = torch.where(done, torch.full_like(token, pad), token)
        if eos.numel():
            done |= torch.isin(token, eos)
        out.append(token)
        if streamer is not None:
            streamer.put(token.cpu())
        if criteria is not None:
            stop = criteria(torch.cat([so_far, token[:, None]], dim=1), logits)
            done |= stop if isinstance(stop, torch.Tensor) else torch.full_like(done, bool(stop))
        if bool(done.all()) or step == new - 1:
            break
        logits = stream.feed(token[:, None], logits="last")[:, -1]
    return torch.stack(out, dim=1), scores
