"""The "Your model, your data, your cluster" page: its local commands run as shown, on a model folder of
one's own (a tokenizer saved with save_pretrained) and a JSONL of conversations."""

from __future__ import annotations

import json
import shutil
import subprocess

from page_commands import shown

PAGE = "your_model.md"


def run(argv, cwd):
    exe = shutil.which(argv[0]) or argv[0]
    return subprocess.run([exe, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_prepare_and_verify_a_store_with_your_own_tokenizer(tmp_path):
    from data_pipelines.tokenizer import load_project_tokenizer

    load_project_tokenizer().save_pretrained(tmp_path / "my-model")
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "chats.jsonl", "w") as fh:
        for i in range(20):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                              {"role": "assistant", "content": f"It is {2 * i}."}]}) + "\n")
    prepared = run(shown("longctx data prepare data/chats.jsonl --chat --tokenizer ./my-model --out ./stores/chat",
                         PAGE) + ["--no-progress"], tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    assert (tmp_path / "stores" / "chat" / "manifest.json").is_file()
    verified = run(shown("longctx data verify --store ./stores/chat", PAGE), tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "BAD" not in verified.stdout


def test_help_config_lists_the_keys_of_the_chosen_data_kind():
    from page_commands import REPO

    out = subprocess.run(shown("python recipes/comet_32k.py --help-config --data.kind store_windows", PAGE),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "# data.options of data.kind='store_windows'" in out.stdout
    assert "#   path REQUIRED" in out.stdout and "#   packing \"concat\"  (str)" in out.stdout
