"""longctx eval passkey: JSON shape and heat-map, key depth, exact-match scoring, a blind model at chance,
and the models:/ and runs:/ URIs through a real MLflow registry."""

import json

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL_COMET = {"chunk_size": 64, "global_mem_size": 4, "temp_stride": 8, "temp_budget": 16}


def longctx(argv, capsys):
    from framework import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.eval.efficiency import build_tiny_model

    model, _ = build_tiny_model(seed=3, comet=SMALL_COMET)
    path = tmp_path_factory.mktemp("passkey_model")
    model.save_pretrained(str(path), tokenizer=load_project_tokenizer())
    return str(path)


def test_passkey_cli_json_shape_heatmap_and_files(model_dir, tmp_path, capsys):
    out = tmp_path / "pk"
    code, stdout, stderr = longctx(["eval", "passkey", "--model", model_dir, "--lengths", "200,300",
                                    "--depths", "0,0.5,1", "--trials", "2", "--seed", "4", "--out", str(out)], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert set(summary["accuracy"]) == {"200", "300"}
    assert set(summary["by_depth"]) == {"0", "0.5", "1"}
    assert all(set(row) == {"200", "300"} for row in summary["by_depth"].values())
    assert all(0.0 <= v <= 1.0 for v in summary["accuracy"].values())
    assert summary["trials"] == 2 and summary["lengths"] == [200, 300]
    heatmap = out / "passkey_heatmap.png"
    assert summary["heatmap"] == str(heatmap)
    assert heatmap.read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "passkey.json").read_text())["accuracy"] == summary["accuracy"]
    assert "passkey length 300 depth 1" in stderr  # progress goes to stderr


@pytest.mark.parametrize("depth", [0.25, 0.5, 0.75])
def test_generator_hides_the_key_at_the_requested_depth(depth):
    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER, PasskeyTask
    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    length = 4096
    task = PasskeyTask(tok, seq_len=length, num_samples=3, depth=depth, filler=PASSKEY_REPEAT_FILLER)
    intro = len(tok(task.INTRO, add_special_tokens=False)["input_ids"])
    tail = len(tok(task.QUESTION, add_special_tokens=False)["input_ids"]) + task.digits
    needle_start = np.asarray(tok(" The pass key is ", add_special_tokens=False)["input_ids"])
    for i in range(3):
        ids = task[i]["input_ids"].numpy()
        starts = [p for p in range(length - needle_start.size) if (ids[p:p + needle_start.size] == needle_start).all()]
        assert len(starts) == 2  # the needle, and the question at the end
        haystack = length - intro - tail
        relative = (starts[0] - intro) / haystack
        assert abs(relative - depth) < 64 / haystack  # within the sentence-snap window
        key = task.key(i)
        assert tok.decode(ids[-task.digits:].tolist()) == key


def test_token_filler_starts_cover_every_phase_before_the_question():
    """Sentence starts end a fixed-length haystack at a few offsets of a repeated filler; token starts at all."""
    from data_pipelines.factory import build_source
    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER, PasskeyTask
    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    period = len(tok(PASSKEY_REPEAT_FILLER, add_special_tokens=False)["input_ids"])
    sentences = PASSKEY_REPEAT_FILLER.count(". ")
    tail = len(tok(PasskeyTask.QUESTION, add_special_tokens=False)["input_ids"]) + 5
    ends = {}
    for start in ("sentence", "token"):
        spec = {"kind": "passkey", "seq_len": 256, "num_samples": 300, "filler": PASSKEY_REPEAT_FILLER,
                "depth": 0.0, "filler_start": start}
        task = build_source(spec, tok)
        ends[start] = {tuple(task[i]["input_ids"][-tail - period:-tail].tolist()) for i in range(300)}
        assert all(task.key(i) == tok.decode(task[i]["input_ids"][-5:].tolist()) for i in range(5))
    assert len(ends["sentence"]) <= sentences  # one ending per sentence the filler may start at
    assert len(ends["token"]) == period  # every rotation of the filler
    with pytest.raises(ValueError, match="filler_start"):
        PasskeyTask(tok, seq_len=256, filler_start="word")


def test_edge_depths_put_the_needle_right_after_the_intro_or_right_before_the_question():
    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER, PasskeyTask
    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    ids_of = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    intro, question = len(ids_of(PasskeyTask.INTRO)), ids_of(PasskeyTask.QUESTION)
    needle_end = ids_of(" is the pass key.")
    task = PasskeyTask(tok, seq_len=256, num_samples=400, seed=5, filler=PASSKEY_REPEAT_FILLER, edge_depth_prob=0.5)
    at_start = at_end = 0
    for i in range(400):
        ids = task[i]["input_ids"].tolist()
        at_start += ids[intro:intro + 4] == ids_of(" The pass key is")
        before_question = len(ids) - 5 - len(question)
        at_end += ids[before_question - len(needle_end):before_question] == needle_end
    assert 70 <= at_start <= 130 and 70 <= at_end <= 130  # a quarter each, give or take
    plain = PasskeyTask(tok, seq_len=256, num_samples=50, seed=5, filler=PASSKEY_REPEAT_FILLER)
    zero = PasskeyTask(tok, seq_len=256, num_samples=50, seed=5, filler=PASSKEY_REPEAT_FILLER, edge_depth_prob=0.0)
    assert all(plain[i]["input_ids"].equal(zero[i]["input_ids"]) for i in range(50))  # off by default, same samples
    with pytest.raises(ValueError, match="edge_depth_prob"):
        PasskeyTask(tok, seq_len=256, edge_depth_prob=1.5)


def test_scoring_is_exact_match_on_the_digits():
    from framework.eval.passkey import digit_hits, score_answer

    assert score_answer("48213", "48213")
    assert score_answer(" 48213.", "48213")
    assert score_answer("is 48213 and", "48213")
    assert not score_answer("482130", "48213")   # an extra digit is wrong
    assert not score_answer("4821", "48213")     # a missing digit is wrong
    assert not score_answer("48 213", "48213")   # the first run of digits counts
    assert not score_answer("no digits", "48213")
    assert digit_hits("48000", "48213") == 2 and digit_hits("", "48213") == 0


def test_a_model_that_cannot_see_the_key_scores_at_chance():
    """Zero attention outputs: each position sees only its own token, so no key can reach the answer.
    The LM head is restricted to digits, so the model does answer with digits; it just cannot know which."""
    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.eval.efficiency import build_tiny_model
    from framework.eval.passkey import evaluate_passkey, summarize

    tok = load_project_tokenizer()
    model, _ = build_tiny_model(seed=5, comet=SMALL_COMET)
    digit_ids = torch.tensor([tok.convert_tokens_to_ids(str(d)) for d in range(10)])
    with torch.no_grad():
        for layer in model.backbone.model.layers:
            layer.self_attn.o_proj.weight.zero_()
        head = model.backbone.lm_head
        keep = torch.zeros(head.weight.shape[0], dtype=torch.bool)
        keep[digit_ids] = True
        head.weight[~keep] = 0.0
        head.weight[keep] *= 50.0  # digits win the argmax
    model.backbone.config.tie_word_embeddings = False
    model.eval()
    trials = 300
    results = evaluate_passkey(model, tok, lengths=[160], depths=[0.0, 1.0], trials=trials, seed=11,
                               filler=PASSKEY_REPEAT_FILLER, batch_size=150)
    summary = summarize(results, digits=5)
    answers = [a["answer"] for c in results for a in c.answers]
    assert all(a[:5].isdigit() for a in answers)  # it answers with digits
    assert summary["accuracy"]["160"] == 0.0  # chance of an exact 5-digit match: 1 in 90,000
    # per digit, a blind guess is right 1 time in 10 (1 in 9 for the leading digit); 600 keys
    assert 0.05 < summary["digit_accuracy"]["160"] < 0.16


def test_models_and_runs_uris_load_through_the_registry(model_dir, tmp_path, capsys, monkeypatch):
    import mlflow

    from framework.tracking.registry import log_and_register

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    mlflow.set_experiment("passkey-eval")
    with mlflow.start_run() as run:
        log_and_register(model_dir, registered_model_name="pk-tiny", run_id=run.info.run_id, max_new_tokens=4)
    for uri in ("models:/pk-tiny@champion", f"runs:/{run.info.run_id}"):
        out = tmp_path / uri.split(":")[0]
        code, stdout, stderr = longctx(["eval", "passkey", "--model", uri, "--tracking-uri", store, "--lengths", "160",
                                        "--depths", "0.5", "--trials", "1", "--out", str(out)], capsys)
        assert code == 0, stderr
        assert json.loads(stdout)["model"] == uri and (out / "passkey_heatmap.png").exists()
    # with an active run, the accuracies and the heat-map are logged to it
    with mlflow.start_run() as run:
        code, _, stderr = longctx(["eval", "passkey", "--model", model_dir, "--lengths", "160", "--depths", "0.5",
                                   "--trials", "1", "--out", str(tmp_path / "active")], capsys)
    assert code == 0, stderr
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert "eval/passkey/acc_160" in logged.data.metrics
    names = [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "eval/passkey")]
    assert "eval/passkey/passkey_heatmap.png" in names


@pytest.mark.parametrize("argv, needle", [
    (["--lengths", "4096,abc"], "--lengths"),
    (["--depths", "0,1.5"], "--depths"),
    (["--trials", "0"], "--trials"),
    (["--filler", "lorem"], "--filler"),
])
def test_bad_passkey_flags_exit_2_naming_the_fix(model_dir, tmp_path, capsys, argv, needle):
    code, stdout, stderr = longctx(["eval", "passkey", "--model", model_dir, "--out", str(tmp_path), *argv], capsys)
    assert code == 2 and stdout == ""
    assert needle in stderr and "Fix" in stderr


def test_missing_model_directory_exits_2(tmp_path, capsys):
    code, _, stderr = longctx(["eval", "passkey", "--model", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such directory" in stderr and "Fix" in stderr


def test_label_needle_labels_exactly_the_keys_second_mention():
    from data_pipelines.factory import build_source
    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER
    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    spec = {"kind": "passkey", "seq_len": 512, "num_samples": 4, "filler": PASSKEY_REPEAT_FILLER}
    plain, dense = build_source(spec, tok), build_source({**spec, "label_needle": True}, tok)
    for i in range(4):
        a, b = plain[i], dense[i]
        assert torch.equal(a["input_ids"], b["input_ids"])
        extra = ((b["labels"] != -100) & (a["labels"] == -100)).nonzero().flatten()
        assert extra.numel() == 5 and int(extra[-1] - extra[0]) == 4  # five consecutive tokens
        key = plain.key(i)
        assert tok.decode(b["input_ids"][extra].tolist()) == key
        assert tok.decode(b["input_ids"][extra[-1] + 1:extra[-1] + 6].tolist()).startswith(" is the pass key")


def test_a_run_that_does_not_exist_is_a_clear_error(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, stdout, stderr = longctx(["eval", "passkey", "--model", "runs:/0123456789abcdef0123456789abcdef",
                                    "--tracking-uri", store, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and stdout == ""
    assert "no such MLflow run" in stderr and "Fix" in stderr
