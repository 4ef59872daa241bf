"""The autoencoder study's jobs (framework/studies/ae_study.py), built without running them: names,
the --max-steps cap, the pairing of registered LMs, held-out data, and bad settings."""

import pytest

from framework.config import ConfigError, apply_overrides
from framework.studies.ae_study import StudySettings, ae_job, heldout_spec, lm_job


def _tiny():
    import importlib.util

    from page_commands import REPO

    spec = importlib.util.spec_from_file_location("ae_study_recipe", REPO / "recipes" / "ae_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS


def test_stage_jobs_are_named_capped_and_paired():
    cfg = apply_overrides(_tiny()["tiny"](), ["--launch.max_steps", "7", "--tracking.model_name", "s"])
    lm = lm_job(cfg, "markov")
    assert type(lm).METHOD == "causal_lm" and lm.launch.max_steps == 7 and lm.data.kind == "entropy_text"
    assert lm.data.options == {"temperature": [0.3, 3.0]} and lm.tracking.model_name == "s-lm-markov"
    assert lm.launch.run_name == "ae_study-tiny-lm-markov"
    uris = {"austen": "models:/s-lm-austen/1", "markov": "models:/s-lm-markov/1"}
    ae = ae_job(cfg, "austen", "markov", uris)
    assert type(ae).METHOD == "autoencoder" and ae.launch.max_steps == 7
    assert (ae.autoencoder.encoder, ae.autoencoder.decoder) == (uris["austen"], uris["markov"])
    assert ae.data.kind == "entropy_text" and ae.tracking.model_name == "s-ae-austen-markov"
    cfg.study.ae_data = "encoder"
    assert ae_job(cfg, "austen", "markov", uris).data.kind == "text"
    uncapped = _tiny()["tiny"]()
    assert lm_job(uncapped, "austen").launch.max_steps == uncapped.study.lm_steps


def test_heldout_texts_are_not_the_training_ones():
    cfg = _tiny()["tiny"]()
    assert heldout_spec(cfg, "austen")["split"] == "validation"
    markov = heldout_spec(cfg, "markov")
    assert markov["seed"] != cfg.launch.seed and markov["num_samples"] == cfg.autoencoder.eval_samples


@pytest.mark.parametrize("corpora, needle", [
    ({"austen": {"kind": "text"}}, "at least two"),
    ({"a": {"kind": "text"}, "b": {"kind": "passkey"}}, "needs a 'kind'"),
    ({"a b": {"kind": "text"}, "c": {"kind": "text"}}, "letters, digits"),
])
def test_bad_corpora_name_the_fix(corpora, needle):
    with pytest.raises(ConfigError, match=needle):
        StudySettings(corpora=corpora)


def test_the_paper_preset_is_the_papers_setting():
    cfg = _tiny()["paper"]()
    assert cfg.autoencoder.slots == 128 and cfg.study.seq_len == 512   # k = 128 at ratio 4
