"""Run configs written as TOML read back to the same config, whatever characters their strings hold."""

import tomllib
from dataclasses import asdict, replace

import pytest

from bayesmeta.runs.config import DataConfig, FitConfig, ModelConfig, TrainConfig, load_config, to_toml

AWKWARD = 'a\nb\tc "quoted" back\\slash ünïcödé ∑ 😀'  # newline, tab, quote, backslash, non-ASCII (BMP and beyond)


def _config(text: str) -> FitConfig:
    return FitConfig(
        data=DataConfig(path=f"/data/{text}.csv", task=text, x=(text, "x2"), y=("y",), val_fraction=0.25,
                        split_seed=3),
        model=ModelConfig(kind="linear", latent_dim=4, hidden=(16, 8), heteroscedastic=False, guide="flow",
                          objective="iwae", num_particles=3),
        train=TrainConfig(steps=7, max_time=1.5e-7, tasks_per_step=5, lr=3e-4, seed=11, device="cuda:1",
                          checkpoint_every=2),
    )


def test_awkward_strings_round_trip_through_a_file(tmp_path):
    cfg = _config(AWKWARD)
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(path) == cfg
    assert load_config(path).data.task == AWKWARD  # the characters themselves, not an escaped form


def test_every_control_character_is_escaped():
    text = "".join(map(chr, range(0x20))) + "\x7f" + "\u2028\u00a0"  # all C0 controls, DEL, two odd spaces
    written = to_toml(_config(text))
    # TOML basic strings may hold no raw control character but tab; we escape tab as well
    assert not any(ord(c) < 0x20 and c != "\n" or ord(c) == 0x7F for c in written)
    assert tomllib.loads(written)["data"]["task"] == text
    assert "\\n" in written and "\\u0000" in written and "\\u007F" in written and "\\u001B" in written


@pytest.mark.parametrize("text", ["", "\\", '"', '\\"', "\\n", '"""', "'''", "a\r\nb", "#not a comment", "x = 1\n[model]"])
def test_strings_that_look_like_toml_syntax_stay_strings(text):
    cfg = _config(text)
    expected = {s: _toml_ready(v) for s, v in asdict(cfg).items()}
    expected["train"]["val_every"] = 0  # None is written as 0 (TOML has no null)
    del expected["train"]["val_fraction"]  # the command line holds out groups with data.val_fraction
    assert tomllib.loads(to_toml(cfg)) == expected


def _toml_ready(section: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}


def test_defaults_and_numbers_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    for cfg in (FitConfig(), replace(_config("s"), train=replace(_config("s").train, lr=1e-300, max_time=1e300))):
        path.write_text(to_toml(cfg), encoding="utf-8")
        assert load_config(path) == cfg


def test_train_val_fraction_is_refused_and_zero_means_none_for_validation_options():
    from bayesmeta.runs.config import config_from_dict

    with pytest.raises(ValueError, match="train.val_fraction is not a command-line setting; use data.val_fraction"):
        config_from_dict({"train": {"val_fraction": 0.3}})
    cfg = config_from_dict({"train": {"val_every": 0, "patience": 0, "val_shots": [1, 4], "weight_decay": 0.5}})
    assert (cfg.train.val_every, cfg.train.patience, cfg.train.val_shots, cfg.train.weight_decay) == (None, None, (1, 4), 0.5)
    with pytest.raises(ValueError, match="config: train.patience must be None"):
        config_from_dict({"train": {"patience": -1}})


def test_a_negative_split_seed_is_refused_as_train_seed_is():
    with pytest.raises(ValueError, match=r"config: data.split_seed must be an int >= 0 \(as train.seed\); got -1"):
        DataConfig(split_seed=-1)
