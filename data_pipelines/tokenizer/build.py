"""Train the project's byte-level BPE tokenizer on the shipped public-domain text.

    python -m data_pipelines.tokenizer.build [--vocab-size 8192] [--out DIR]

The result (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) is
written to ``data_pipelines/tokenizer/project/`` and committed, so nobody needs to run this
script to use the tokenizer; it is kept to show how the files were made.

Design:
- byte-level BPE, so any text (any language, any bytes) encodes without unknown tokens;
- digits are split one per token before the byte-level step, so a passkey of ``d`` digits is
  always exactly ``d`` tokens, whatever surrounds it;
- special tokens ``<|endoftext|>`` (end of document, also padding), ``<|im_start|>`` and
  ``<|im_end|>`` (ChatML turns) take ids 0, 1 and 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
OUT_DIR = Path(__file__).resolve().parent / "project"

# ChatML. The {% generation %} markers let ``apply_chat_template(..., return_assistant_tokens_mask=True)``
# report which tokens the assistant wrote (the answer tokens that carry the loss).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def training_texts():
    from data_pipelines.corpus import shipped_documents

    for doc in shipped_documents():
        # Paragraph-sized pieces keep the trainer's word counting cheap.
        yield from doc["text"].split("\n\n")


def build(vocab_size: int = 8192, out_dir: Path = OUT_DIR) -> Path:
    from transformers import PreTrainedTokenizerFast

    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=1 << 40,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    out = build(args.vocab_size, args.out)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
