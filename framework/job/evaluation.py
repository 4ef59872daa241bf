"""The `eval` section of a job: the evaluations to run on the registered model once training has finished.

    eval:
      tasks: [passkey, perplexity]        # empty (the default): train and register only
      out_dir: outputs/eval/my_run
      passkey: {multiples: [32, 128], depths: [0, 0.5, 1], trials: 20}
      perplexity: {docs: 1}               # lengths: empty means the passkey lengths
      heldout_lm: {lengths: [8192, 16384], docs: 1, fraction: 0.2}   # tasks: [heldout_lm]
      base: {enabled: true, max_len: 8192}

or, on any recipe's command line, ``--eval.tasks passkey --eval.passkey.lengths 8192,16384``.
`framework.eval.after_training` runs them on the driver (``recipe_cli.main`` calls it after registration):
the metrics and files go to the training run, the JSON summary to ``out_dir`` and stdout.

Plain dataclasses (no torch, Ray or Lightning); every rule is checked when the section is built, so a bad
setting fails before training starts, with the field and the fix in the message.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from framework.config import ConfigError

EVAL_TASKS = ("passkey", "perplexity", "heldout_lm")
FILLERS = ("repeat", "novels")  # or @<path of a text file>
MIN_LENGTH = 64  # the shortest haystack or window a task takes (tokens)


def _check_lengths(path: str, values, what: str, example: str) -> None:
    bad = [v for v in values if v < MIN_LENGTH]
    if bad:
        raise ConfigError(f"{path}={list(values)}: {bad} below {MIN_LENGTH} tokens; {what}. "
                          f"Fix: e.g. --{path} {example}")


@dataclass
class PasskeyEval:
    """lengths: haystack lengths in tokens; empty means `multiples` x data.seq_len. depths: where the key is
    hidden, fractions of the haystack in [0, 1]. trials: keys per (length, depth) cell. filler: the haystack
    text, repeat (the literature's "The grass is green..."), novels (the shipped novels) or @FILE. digits:
    the key's digits (empty: data.options.digits, else 5). seed: the keys' seed. batch_size: haystacks
    streamed at once (empty: the evaluator's default)."""

    lengths: list[int] = field(default_factory=list)
    multiples: list[int] = field(default_factory=lambda: [32, 128])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    trials: int = 20
    filler: str = "repeat"
    digits: int | None = None
    seed: int = 1234
    batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_lengths("eval.passkey.lengths", self.lengths, "a haystack must hold the key and the question",
                       "8192,32768")
        if not self.lengths:
            if not self.multiples:
                raise ConfigError("eval.passkey.lengths and eval.passkey.multiples are both empty: no haystack "
                                  "length to run. Fix: e.g. --eval.passkey.multiples 32,128 (x data.seq_len) or "
                                  "--eval.passkey.lengths 8192,32768")
            bad = [m for m in self.multiples if m < 1]
            if bad:
                raise ConfigError(f"eval.passkey.multiples={self.multiples}: {bad} not positive; a length is a "
                                  "multiple of data.seq_len. Fix: e.g. --eval.passkey.multiples 32,128")
        if not self.depths:
            raise ConfigError("eval.passkey.depths is empty. Fix: e.g. --eval.passkey.depths 0,0.5,1")
        bad = [d for d in self.depths if not 0.0 <= d <= 1.0]
        if bad:
            raise ConfigError(f"eval.passkey.depths={self.depths}: {bad} outside [0, 1]; a depth is a fraction of "
                              "the haystack (0 the start, 1 right before the question). "
                              "Fix: e.g. --eval.passkey.depths 0,0.5,1")
        if self.trials < 1:
            raise ConfigError(f"eval.passkey.trials={self.trials}: need at least 1 key per (length, depth) cell. "
                              "Fix: e.g. --eval.passkey.trials 8")
        if self.filler not in FILLERS and not (self.filler.startswith("@") and len(self.filler) > 1):
            raise ConfigError(f"eval.passkey.filler={self.filler!r} is not a filler. Fix: --eval.passkey.filler "
                              "repeat, novels, or @<path of a text file>")
        if self.digits is not None and not 1 <= self.digits <= 32:
            raise ConfigError(f"eval.passkey.digits={self.digits}: a key has 1 to 32 digits. "
                              "Fix: e.g. --eval.passkey.digits 5 (or none: data.options.digits)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"eval.passkey.batch_size={self.batch_size} must be >= 1. "
                              "Fix: --eval.passkey.batch_size 1 (or none: the evaluator's default)")

    def resolved_lengths(self, seq_len: int) -> list[int]:
        """The haystack lengths in tokens: `lengths`, else `multiples` x seq_len."""
        return list(self.lengths) if self.lengths else [m * seq_len for m in self.multiples]


@dataclass
class PerplexityEval:
    """lengths: window lengths in tokens (empty: the passkey lengths). docs: windows of the shipped novels
    per length."""

    lengths: list[int] = field(default_factory=list)
    docs: int = 1

    def __post_init__(self) -> None:
        _check_lengths("eval.perplexity.lengths", self.lengths, "a window that short says little", "8192,32768")
        if self.docs < 1:
            raise ConfigError(f"eval.perplexity.docs={self.docs}: need at least 1 window per length. "
                              "Fix: e.g. --eval.perplexity.docs 1")


@dataclass
class HeldoutLMEval:
    """The language-model comparison on held-out text (framework.eval.heldout_lm): the registered CoMeT model
    next to its own backbone (the base weights) reading each chunk's window alone and at full context.
    lengths: window lengths in tokens. docs: windows per length. fraction: the held-out tail of the shipped
    novels' token stream the windows come from, the share the text data's `validation_fraction` keeps out of
    training (the recipe's 0.2). The base side runs with eval.base.enabled; eval.base.max_len caps its
    full-attention pass (empty: the backbone's max_position_embeddings)."""

    lengths: list[int] = field(default_factory=lambda: [8192, 16384])
    docs: int = 1
    fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ConfigError("eval.heldout_lm.lengths is empty: no window length to run. "
                              "Fix: e.g. --eval.heldout_lm.lengths 8192,16384")
        _check_lengths("eval.heldout_lm.lengths", self.lengths, "a window that short says little", "8192,16384")
        if self.docs < 1:
            raise ConfigError(f"eval.heldout_lm.docs={self.docs}: need at least 1 window per length. "
                              "Fix: e.g. --eval.heldout_lm.docs 1")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"eval.heldout_lm.fraction={self.fraction}: the held-out tail is a share of the "
                              "token stream, strictly between 0 and 1. Fix: e.g. --eval.heldout_lm.fraction 0.2 "
                              "(the text data's validation_fraction)")


@dataclass
class BaseCompareEval:
    """enabled: also run the base model (model.base) with full attention on the same haystacks and windows
    (heldout_lm: the CoMeT model's own backbone, on each chunk's window alone and at full context).
    max_len: the longest length it runs at with full attention (empty: every length on a GPU; on a CPU up to
    its max_position_embeddings; heldout_lm: up to its max_position_embeddings); longer ones are reported as
    not run."""

    enabled: bool = False
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < MIN_LENGTH:
            raise ConfigError(f"eval.base.max_len={self.max_len}: below {MIN_LENGTH} tokens the base runs nothing. "
                              "Fix: e.g. --eval.base.max_len 8192, or --eval.base.enabled false")


@dataclass
class EvalConfig:
    """tasks: the evaluations run on the registered model after training, in order (passkey, perplexity,
    heldout_lm); empty: none. out_dir: where the JSON summaries and heat-maps go. summary_file: the name of the
    combined summary written when perplexity or the base comparison runs (passkey alone writes passkey.json;
    heldout_lm alone writes its own summary under this name, with other tasks as heldout_lm.json)."""

    tasks: list[str] = field(default_factory=list)
    out_dir: str = "outputs/eval"
    summary_file: str = "eval.json"
    passkey: PasskeyEval = field(default_factory=PasskeyEval)
    perplexity: PerplexityEval = field(default_factory=PerplexityEval)
    heldout_lm: HeldoutLMEval = field(default_factory=HeldoutLMEval)
    base: BaseCompareEval = field(default_factory=BaseCompareEval)

    def __post_init__(self) -> None:
        for task in self.tasks:
            if task not in EVAL_TASKS:
                close = difflib.get_close_matches(str(task), EVAL_TASKS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"eval.tasks={self.tasks}: {task!r} is not an evaluation{hint}. Valid: "
                                  f"{list(EVAL_TASKS)}. Fix: e.g. --eval.tasks {close[0] if close else 'passkey'}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"eval.tasks={self.tasks} names an evaluation twice. "
                              f"Fix: e.g. --eval.tasks {','.join(dict.fromkeys(self.tasks))}")
        if not self.out_dir:
            raise ConfigError("eval.out_dir is empty. Fix: e.g. --eval.out_dir outputs/eval")
        if not self.summary_file.endswith(".json") or "/" in self.summary_file:
            raise ConfigError(f"eval.summary_file={self.summary_file!r}: a file name ending in .json. "
                              "Fix: e.g. --eval.summary_file eval.json")

    def check_job(self, job) -> None:
        """The rules that need the rest of the job (data.seq_len, model.base); raises ConfigError naming the field."""
        from framework.job.model import RANDOM_PREFIX

        seq_len = job.data.seq_len
        # heldout_lm compares with the CoMeT model's own backbone, which a random model.base has too
        loads_base = [t for t in self.tasks if t != "heldout_lm"]
        if loads_base and self.base.enabled and str(job.model.base).startswith(RANDOM_PREFIX):
            raise ConfigError(f"eval.base.enabled=true, but model.base={job.model.base!r} is a random model: there "
                              f"is no trained base to compare with in {loads_base}. Fix: --eval.base.enabled false")
        if "heldout_lm" in self.tasks:
            self._check_heldout_lm(job)
        if "passkey" in self.tasks and not self.passkey.lengths:
            short = [m for m in self.passkey.multiples if m * seq_len < MIN_LENGTH]
            if short:
                raise ConfigError(f"eval.passkey.multiples={self.passkey.multiples}: {short} x data.seq_len {seq_len} "
                                  f"is below {MIN_LENGTH} tokens, too short for a haystack. Fix: e.g. "
                                  f"--eval.passkey.multiples {-(-MIN_LENGTH // seq_len)}, or --eval.passkey.lengths "
                                  "8192,32768")

    def _check_heldout_lm(self, job) -> None:
        options = job.data.options or {}
        trained = options.get("validation_fraction")
        if (job.data.kind == "text" and options.get("split", "train") == "train" and trained is not None
                and self.heldout_lm.fraction > float(trained)):
            raise ConfigError(f"eval.heldout_lm.fraction={self.heldout_lm.fraction} is more than the "
                              f"data.options.validation_fraction={trained} the training keeps out, so the held-out "
                              f"windows would include trained text. Fix: --eval.heldout_lm.fraction {trained}")

    def perplexity_lengths(self, seq_len: int) -> list[int]:
        """The perplexity window lengths: `perplexity.lengths`, else the passkey lengths."""
        return list(self.perplexity.lengths) or self.passkey.resolved_lengths(seq_len)
