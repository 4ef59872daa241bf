"""The registered text-generation pyfunc: batches of prompts of different lengths, predict_stream, the chat
template, and the caps on prompt and generation length. Real MLflow (a SQLite store), a real tiny CoMeT."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from framework.tracking.registry import log_and_register

PROMPTS = ["The passkey is", "a b c d e f g h i j k l m n o p", "Once upon a time there was a"]
TEMPLATE = "{% for m in messages %}<user> {{ m['content'] }} </user>{% endfor %}{% if add_generation_prompt %} <bot>{% endif %}"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_comet_dir, mlflow_store_factory):
    root = tmp_path_factory.mktemp("serving_store")
    chat_dir = Path(shutil.copytree(tiny_comet_dir, root / "chat_model"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_dir)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(chat_dir)
    with mlflow_store_factory(root / "store"):
        plain = log_and_register(tiny_comet_dir, registered_model_name="serving-plain", max_new_tokens=4,
                                 max_new_tokens_cap=6, max_prompt_tokens=40)
        chat = log_and_register(chat_dir, registered_model_name="serving-chat", max_new_tokens=4, chat=True)
        yield mlflow.pyfunc.load_model(plain.uri), mlflow.pyfunc.load_model(chat.uri)


def test_a_batch_of_different_lengths_gives_each_prompt_its_own_answer(served):
    plain, _ = served
    together = plain.predict(PROMPTS, params={"batch_size": 8})
    alone = [plain.predict([p], params={"batch_size": 1})[0] for p in PROMPTS]
    assert together == alone and len(together) == 3


def test_predict_stream_yields_the_same_continuation_in_pieces(served):
    plain, _ = served
    pieces = list(plain.predict_stream("Once upon a time there was a", params={"max_new_tokens": 5}))
    assert len(pieces) >= 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == plain.predict(["Once upon a time there was a"], params={"max_new_tokens": 5})[0]


def test_caps_refuse_long_generations_and_long_prompts(served):
    plain, _ = served
    with pytest.raises(Exception, match=r"max_new_tokens=7 is above this model's cap of 6"):
        plain.predict(["hello"], params={"max_new_tokens": 7})
    with pytest.raises(Exception, match=r"prompt 0 has [\d,]+ tokens, above this model's cap of 40"):
        plain.predict([" ".join(["word"] * 200)])


def test_a_chat_model_wraps_prompts_in_its_template(served):
    plain, chat = served
    templated = "<user> hello there </user> <bot>"
    assert chat.predict(["hello there"]) == chat.predict([templated], params={"chat": False})
    assert chat.predict(["hello there"]) != chat.predict(["hello there"], params={"chat": False}) or \
        chat.predict(["hello there"], params={"max_new_tokens": 6}) == chat.predict([templated], params={"max_new_tokens": 6, "chat": False})
