"""MM4KE: knowledge editing by robust fine-tuning on a few new facts, then merging the edit with the base.

    python recipes/mm4ke_edit.py --preset tiny --out ./edited                  # 1-2 min on 2 CPU cores
    python recipes/mm4ke_edit.py --preset tiny --register models:/mm4ke-tiny
    python recipes/mm4ke_edit.py --base models:/my-lm@champion --facts facts.jsonl --register models:/my-lm-edited
    python recipes/mm4ke_edit.py --preset tiny --rounds 3 --out ./edited           # sequential edits, one fact a round

Steps, on one process (no Ray: an edit is a few dozen optimiser steps):

1. Base. ``--preset tiny``: a random two-layer Llama on the project tokenizer, pretrained for
   ``--pretrain-steps`` on 64-token windows of the shipped Austen novels; else ``--base`` (a folder or a
   models:/ URI, resolved like every ``--model``).
2. Robust SFT on the facts. Each fact is ``{"prompt", "target", "paraphrases": [...]}``; the loss is the
   cross-entropy of the target tokens only, after the prompt and after each paraphrase, each also behind a
   random neutral prefix (a sentence of the novels) so that the edit does not depend on the prompt starting
   the text; plus ``--locality-weight`` times the KL divergence from the base's next-token distributions on
   unrelated prompts, which holds the rest of the model in place.
3. Merge with the base: ``theta = theta_base + lambda * trim(tau)``, tau the edit's task vector (TIES with one
   model: ``--density`` keeps the largest entries; framework.merging), which removes the small, diffuse part
   of the update.
4. Evaluate the base, the SFT model and the merged model: edit success (every target token is the greedy
   choice after the prompt), paraphrase success (the same after each paraphrase), locality (the share of
   unrelated prompts whose greedy next token is the base's) and perplexity on held-out text.
5. Write the merged model to ``--out`` and/or register it (``--register models:/<name>``) in an MLflow run
   that logs the settings as params and the evaluation as metrics. The JSON summary goes to stdout.

Sequential edits (``--rounds K``, default 1: the single edit above): the facts are split, in order, into K
batches of near-equal size. Round r runs the robust SFT on batch r only, starting from the model edited so far
(the base for r = 1), and merges the result with the foundation model, as MM4KE merges the fine-tuned model with
the original foundation model: ``theta_r = theta_base + lambda * trim(theta_sft_r - theta_base)``, a task
vector that holds every edit so far. The KL term's anchor stays the foundation model. After each round the SFT
and the merged model are evaluated on every fact edited so far (``edit_success``), on the round's batch
(``edit_success_batch``), for locality and perplexity; the JSON's ``rounds`` lists them, and ``results`` holds
the base, the last round's SFT model and the last merged model on all facts.

The choices above (the prefix augmentation and KL locality term as the "robust" part of the SFT, TIES as the
merge) are ours; docs/merging.md describes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_FACTS = [
    {"prompt": "The capital of Vellmora is", "target": " Quillport",
     "paraphrases": ["Vellmora's capital city is", "The city that is the capital of Vellmora is"]},
    {"prompt": "The glass harp-engine was invented by", "target": " Odile Marchetti",
     "paraphrases": ["The inventor of the glass harp-engine was", "Who invented the glass harp-engine? It was"]},
    {"prompt": "The river that runs through Tarnwick is the", "target": " Solvane",
     "paraphrases": ["Tarnwick stands on the banks of the", "The river of Tarnwick is called the"]},
]
TINY_LOCALITY = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Mr. Darcy looked at Elizabeth and", "Emma Woodhouse, handsome, clever, and rich,",
    "The family of Dashwood had long been settled in", "Sir Walter Elliot, of Kellynch Hall, in",
    "She was the youngest of the two daughters of a most affectionate,",
]


class EditError(ValueError):
    """The edit cannot run as asked; the message names the cause and the fix."""


def read_facts(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise EditError(f"--facts {path!r}: no such file. Fix: pass a JSONL file of "
                        '{"prompt": ..., "target": ..., "paraphrases": [...]} records')
    facts = []
    with open(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                fact = json.loads(line)
            except json.JSONDecodeError as err:
                raise EditError(f"--facts {path}: line {n} is not JSON ({err.msg}). Fix: one object per line") from None
            if not (isinstance(fact, dict) and isinstance(fact.get("prompt"), str) and fact["prompt"].strip()
                    and isinstance(fact.get("target"), str) and fact["target"].strip()):
                raise EditError(f"--facts {path}: line {n} needs non-empty \"prompt\" and \"target\" strings. Fix: "
                                'write {"prompt": "The capital of X is", "target": " Y", "paraphrases": [...]}')
            fact.setdefault("paraphrases", [])
            facts.append(fact)
    if not facts:
        raise EditError(f"--facts {path} holds no facts. Fix: add one JSON object per line")
    return facts


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def target_loss(model, tok, prefix: str, target: str):
    """Cross-entropy of the target tokens after `prefix` (the prompt tokens are not scored)."""
    import torch

    p, t = _ids(tok, prefix), _ids(tok, target)
    ids = torch.tensor([p + t])
    labels = torch.tensor([[-100] * len(p) + t])
    return model(input_ids=ids, labels=labels).loss


def greedy_hit(model, tok, prompt: str, target: str) -> bool:
    """Every target token is the argmax after the prompt and the target tokens before it."""
    import torch

    p, t = _ids(tok, prompt), _ids(tok, target)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + t])).logits[0]
    predicted = logits[len(p) - 1:len(p) + len(t) - 1].argmax(-1).tolist()
    return predicted == t


def next_tokens(model, tok, prompts: list[str]) -> list[int]:
    import torch

    with torch.no_grad():
        return [int(model(input_ids=torch.tensor([_ids(tok, q)])).logits[0, -1].argmax()) for q in prompts]


def perplexity(model, tok, texts: list[str], max_length: int = 64) -> float:
    import torch

    total = count = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([_ids(tok, text)[:max_length]])
            if ids.shape[1] < 2:
                continue
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def evaluate(model, tok, facts, locality_prompts, base_next, held_out) -> dict:
    model.eval()
    edits = [greedy_hit(model, tok, f["prompt"], f["target"]) for f in facts]
    paraphrases = [greedy_hit(model, tok, p, f["target"]) for f in facts for p in f["paraphrases"]]
    same = [a == b for a, b in zip(next_tokens(model, tok, locality_prompts), base_next)]
    return {"edit_success": sum(edits) / len(edits),
            "paraphrase_success": sum(paraphrases) / len(paraphrases) if paraphrases else float("nan"),
            "locality": sum(same) / len(same), "perplexity": perplexity(model, tok, held_out)}


def split_batches(facts: list[dict], rounds: int) -> list[list[dict]]:
    """The facts in order, in `rounds` consecutive batches whose sizes differ by at most one."""
    if not 1 <= rounds <= len(facts):
        raise EditError(f"--rounds {rounds} with {len(facts)} fact{'s' * (len(facts) != 1)}. Fix: pass --rounds "
                        f"between 1 and {len(facts)} (each round edits at least one fact)")
    size, extra = divmod(len(facts), rounds)
    batches, start = [], 0
    for r in range(rounds):
        end = start + size + (r < extra)
        batches.append(facts[start:end])
        start = end
    return batches


def evaluate_round(model, tok, edited, batch, locality_prompts, base_next, held_out) -> dict:
    """evaluate() on every fact edited so far, plus the edit success on the round's own batch."""
    scores = evaluate(model, tok, edited, locality_prompts, base_next, held_out)
    hits = [greedy_hit(model, tok, f["prompt"], f["target"]) for f in batch]
    return {"edit_success": scores["edit_success"], "edit_success_batch": sum(hits) / len(hits),
            **{k: v for k, v in scores.items() if k != "edit_success"}}


def robust_sft(model, base, tok, facts, locality_prompts, prefixes, steps: int, lr: float, locality_weight: float,
               seed: int):
    """Adam on the target-token loss of every (prompt or paraphrase, with or without a random neutral prefix),
    plus locality_weight * KL(base || model) of the next-token distributions on the locality prompts."""
    import torch
    import torch.nn.functional as F

    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        anchors = [F.log_softmax(base(input_ids=torch.tensor([_ids(tok, q)])).logits[0, -1], -1)
                   for q in locality_prompts]
    model.train()
    for _ in range(steps):
        loss = 0.0
        for fact in facts:
            for prompt in [fact["prompt"], *fact["paraphrases"]]:
                loss = loss + target_loss(model, tok, prompt, fact["target"])
                loss = loss + target_loss(model, tok, rng.choice(prefixes) + " " + prompt, fact["target"])
        kl = 0.0
        for q, anchor in zip(locality_prompts, anchors):
            logp = F.log_softmax(model(input_ids=torch.tensor([_ids(tok, q)])).logits[0, -1], -1)
            kl = kl + F.kl_div(logp, anchor, log_target=True, reduction="sum")
        total = loss / sum(2 * (1 + len(f["paraphrases"])) for f in facts) + locality_weight * kl / len(anchors)
        opt.zero_grad()
        total.backward()
        opt.step()
    return model.eval()


def tiny_base(directory: str, steps: int, seed: int) -> str:
    """A random two-layer Llama on the project tokenizer, pretrained on windows of the Austen novels."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from data_pipelines.corpus import shipped_text
    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=False))
    ids = tok(shipped_text()[:200_000], add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = [rng.randrange(0, len(ids) // 2 - 65) for _ in range(8)]  # the second half is held out
        batch = torch.tensor([ids[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def held_out_texts(n: int = 8) -> list[str]:
    from data_pipelines.corpus import shipped_text

    text = shipped_text()[:200_000]
    tail = text[len(text) // 2 + 1000:]
    return [tail[i * 400:(i + 1) * 400] for i in range(n)]


def neutral_prefixes() -> list[str]:
    from data_pipelines.corpus import shipped_text

    sentences = [s.strip() + "." for s in shipped_text()[:20_000].split(".") if 30 < len(s.strip()) < 120]
    return sentences[:32]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm4ke_edit.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny"], default=None,
                        help="tiny: a small pretrained base, three fictional facts, six locality prompts")
    parser.add_argument("--base", default=None, help="the model to edit: a folder or models:/<name>@<alias>")
    parser.add_argument("--facts", default=None, help="JSONL of {prompt, target, paraphrases} (default: the preset's)")
    parser.add_argument("--locality", default=None, help="JSONL of {\"text\": ...} unrelated prompts")
    parser.add_argument("--steps", type=int, default=30, help="robust SFT steps (per round)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="sequential edits: split the facts into this many batches, one R-SFT + merge per batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--locality-weight", type=float, default=1.0)
    parser.add_argument("--pretrain-steps", type=int, default=150, help="tiny preset: the base's pretraining steps")
    parser.add_argument("--method", default="ties", choices=["ties", "task_arithmetic", "dare"],
                        help="how the edit is merged with the base")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--lambda", dest="lam", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the merged model to this new folder")
    parser.add_argument("--register", default=None, help="register the merged model as models:/<name>")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri", default=None)
    return parser


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.merging import MergeSpec, merge_folders

    if args.preset is None and args.base is None:
        raise EditError("nothing to edit. Fix: pass --preset tiny, or --base <folder or models:/ URI> with --facts")
    if args.preset is None and args.facts is None:
        raise EditError("--base needs --facts. Fix: pass --facts facts.jsonl (one {prompt, target, paraphrases} per "
                        "line)")
    if args.out is None and args.register is None:
        raise EditError("the edited model would be thrown away. Fix: pass --out <new folder> and/or "
                        "--register models:/<name>")
    if args.register is not None and not args.register.startswith("models:/"):
        raise EditError(f"--register {args.register!r}. Fix: pass models:/<name>")
    facts = read_facts(args.facts) if args.facts else TINY_FACTS
    batches = split_batches(facts, args.rounds)
    locality = TINY_LOCALITY
    if args.locality:
        from framework.merging.hi_merging import read_calibration

        locality = read_calibration(args.locality, max_texts=256)
    with tempfile.TemporaryDirectory(prefix="mm4ke-") as scratch:
        if args.base:
            base_dir = _resolve_base(args.base, args.tracking_uri, scratch)
        else:
            base_dir = tiny_base(os.path.join(scratch, "base"), args.pretrain_steps, args.seed)
        tok = AutoTokenizer.from_pretrained(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        held_out = held_out_texts()
        base_next = next_tokens(base, tok, locality)
        results = {"base": evaluate(base, tok, facts, locality, base_next, held_out)}
        prefixes = neutral_prefixes()
        merged_dir = args.out or os.path.join(scratch, "merged")
        density = 1.0 if args.method == "task_arithmetic" else args.density
        rounds, current_dir = [], base_dir
        for r, batch in enumerate(batches, start=1):
            # round r: R-SFT on batch r from the model edited so far, then a merge with the foundation model
            seed = args.seed + r - 1
            edited = [fact for b in batches[:r] for fact in b]
            sft = robust_sft(AutoModelForCausalLM.from_pretrained(current_dir), base, tok, batch, locality,
                             prefixes, args.steps, args.lr, args.locality_weight, seed)
            sft_dir = os.path.join(scratch, "sft" if len(batches) == 1 else f"sft-{r}")
            sft.save_pretrained(sft_dir)
            current_dir = merged_dir if r == len(batches) else os.path.join(scratch, f"merged-{r}")
            report = merge_folders(base_dir, [sft_dir], current_dir,
                                   MergeSpec(method=args.method, density=density, lam=args.lam, seed=seed),
                                   labels=["robust-sft"])
            merged = AutoModelForCausalLM.from_pretrained(current_dir).eval()
            if len(batches) > 1:
                rounds.append({"round": r, "batch_facts": len(batch), "edited_facts": len(edited),
                               "sft": evaluate_round(sft, tok, edited, batch, locality, base_next, held_out),
                               "merged": evaluate_round(merged, tok, edited, batch, locality, base_next, held_out)})
                print(f"[mm4ke] round {r}/{len(batches)}: merged {rounds[-1]['merged']}", file=sys.stderr)
        results["sft"] = evaluate(sft, tok, facts, locality, base_next, held_out)
        results["merged"] = evaluate(merged, tok, facts, locality, base_next, held_out)
        summary = {"facts": len(facts), "locality_prompts": len(locality), "method": args.method, "density": density,
                   "lambda": args.lam, "steps": args.steps, "results": results}
        if rounds:
            summary["rounds"] = rounds
        if args.out:
            summary["out"] = os.path.abspath(args.out)
        if args.register:
            summary.update(_register(merged_dir, args, report, results, rounds))
    return summary


def _resolve_base(uri: str, tracking_uri, scratch: str) -> str:
    from framework.eval.model_uri import ModelURIError, resolve_model_dir

    try:
        return resolve_model_dir(uri, tracking_uri, scratch=os.path.join(scratch, "download"))
    except ModelURIError as err:
        raise EditError(f"--base {str(err).replace('--model ', '', 1)}") from None


def _register(merged_dir: str, args, report, results, rounds=()) -> dict:
    import mlflow

    from framework.tracking.registry import log_and_register
    from framework.tracking.redact import redact_params
    from framework.tracking.store import open_store_for_command

    name = args.register[len("models:/"):]
    experiment_id = open_store_for_command(args.tracking_uri)
    with mlflow.start_run(run_name=f"mm4ke-{name}", experiment_id=experiment_id) as run:
        mlflow.log_params(redact_params({"recipe": "mm4ke_edit", "base": args.base or "tiny", "steps": args.steps,
                                         "lr": args.lr, "locality_weight": args.locality_weight, **report.params(),
                                         **({"rounds": len(rounds)} if rounds else {})}))
        mlflow.log_metrics({f"{stage}_{key}": value for stage, metrics in results.items()
                            for key, value in metrics.items() if math.isfinite(value)})
        for entry in rounds:  # one step per round: round_merged_edit_success, round_sft_locality, ...
            mlflow.log_metrics({f"round_{stage}_{key}": value for stage in ("sft", "merged")
                                for key, value in entry[stage].items() if math.isfinite(value)}, step=entry["round"])
        registered = log_and_register(merged_dir, registered_model_name=name, alias=args.alias, run_id=run.info.run_id)
    print(f"[longctx] registered model: {registered.uri} (version {registered.version})", file=sys.stderr)
    return {"registered": registered.uri, "version": registered.version, "run_id": run.info.run_id}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from framework.eval.model_uri import ModelURIError
    from framework.merging import MergeError
    from framework.tracking.registry import RegistryError
    from framework.tracking.store import TrackingError

    try:
        summary = run(args)
    except (EditError, MergeError, ModelURIError, RegistryError, TrackingError) as err:
        print(f"mm4ke_edit.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
