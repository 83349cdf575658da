"""Search spaces: parsing, applying a trial's values to a fit config, and the errors that name the key."""

import pytest

from bayesmeta.runs.config import FitConfig, config_from_dict
from bayesmeta.tuning import load_space, space_from_dict
from bayesmeta.tuning.storage import _dict_to_toml

SPACE = {"space": {"train": {"lr": {"low": 3e-4, "high": 3e-3, "log": True}, "tasks_per_step": [8, 16, 32]},
                   "model": {"latent_dim": {"low": 2, "high": 16}, "width": [32, 64], "depth": {"low": 1, "high": 3},
                             "encoder_depth": {"low": 1, "high": 2}, "guide": ["diagonal", "flow"]}},
         "objective": {"shots": [1, 5]}, "study": {"sampler": "tpe", "trials": 7}}


def test_space_parses_types_and_applies_architecture_keys():
    space = space_from_dict(SPACE)
    by = {p.key: p for p in space.params}
    assert by["train.lr"].log and not by["train.lr"].integer
    assert by["model.latent_dim"].integer and by["model.depth"].integer
    assert by["train.tasks_per_step"].choices == (8, 16, 32)
    assert space.options.shots == (1, 5) and space.options.sampler == "tpe" and space.options.trials == 7
    base = FitConfig()
    cfg = space.apply(base, {"train.lr": 1e-3, "model.width": 64, "model.depth": 2, "model.encoder_depth": 1,
                             "model.latent_dim": 3, "model.guide": "flow", "train.tasks_per_step": 16})
    assert cfg.model.hidden == (64, 64) and cfg.model.encoder_hidden == (128,)  # encoder width kept from the base
    assert cfg.model.latent_dim == 3 and cfg.model.guide == "flow" and cfg.train.tasks_per_step == 16
    assert cfg.train.val_shots == (1, 5)  # the fit validates (and stops early) on the objective's shots
    # a depth alone keeps the base width
    assert space.apply(base, {"model.depth": 1}).model.hidden == (64,)


def test_space_file_round_trip(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(_dict_to_toml(SPACE))
    assert load_space(path) == space_from_dict(SPACE)


@pytest.mark.parametrize("space, match", [
    ({"space": {"train": {"learning_rate": [1e-3]}}}, r"unknown key train.learning_rate; tunable keys"),
    ({"space": {"train": {"lr": {"low": 1e-2, "high": 1e-3}}}}, r"train.lr is an empty range \(low=0.01"),
    ({"space": {"train": {"lr": {"low": 1e-3, "high": 1e-3}}}}, "empty range"),
    ({"space": {"train": {"lr": []}}}, "non-empty list of choices"),
    ({"space": {"train": {"lr": {"low": 0.0, "high": 1e-2, "log": True}}}}, "low > 0 when log"),
    ({"space": {"model": {"latent_dim": {"low": 1.5, "high": 4}}}}, "a range of integers"),
    ({"space": {"model": {"hidden": [[32], [64]]}}}, "tune model.width and model.depth"),
    ({"space": {"train": {"seed": [0, 1]}}}, "train.seed cannot be tuned"),
    ({"space": {"optimizer": {"lr": [1e-3]}}}, r"\[space\] holds the tables"),
    ({"spaces": {}}, "unknown table"),
    ({"space": {"train": {"lr": [1e-3]}}, "study": {"sampler": "cmaes"}}, "study.sampler must be one of"),
    ({"space": {"train": {"lr": [1e-3]}}, "objective": {"shots": []}}, "objective.shots"),
    ({"space": {"train": {"lr": [1e-3]}}, "study": {"budget": 3}}, r"unknown key\(s\) \['study.budget'\]"),
    ({"space": {}}, "no parameters to tune"),
])
def test_bad_spaces_name_the_key(space, match):
    with pytest.raises(ValueError, match=match):
        space_from_dict(space)


def test_check_refuses_a_parameter_the_model_does_not_have_and_invalid_values():
    linear = config_from_dict({"model": {"kind": "linear"}})
    with pytest.raises(ValueError, match=r"model.latent_dim is not a parameter of the model .*model.kind='linear'"):
        space_from_dict({"space": {"model": {"latent_dim": [2, 4]}}}).check(linear)
    glm = config_from_dict({"model": {"kind": "linear", "likelihood": "poisson"}})
    space_from_dict({"space": {"model": {"num_particles": [4, 8]}}}).check(glm)  # a GLM has a guide
    mine = config_from_dict({"model": {"kind": "models/herd.py:HerdModel"}})
    space_from_dict({"space": {"model": {"encoder_width": [64, 128], "num_particles": [4, 8]}}}).check(mine)
    with pytest.raises(ValueError, match=r"model.latent_dim is not a parameter .*HerdModel' \(your own model\)"):
        space_from_dict({"space": {"model": {"latent_dim": [2, 4]}}}).check(mine)
    with pytest.raises(ValueError, match=r"model.guide = 'normalizing' is not a valid setting"):
        space_from_dict({"space": {"model": {"guide": ["diagonal", "normalizing"]}}}).check(FitConfig())
    with pytest.raises(ValueError, match=r"train.tasks_per_step = 0 is not a valid setting"):
        space_from_dict({"space": {"train": {"tasks_per_step": [0, 8]}}}).check(FitConfig())


def test_load_space_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such search-space file"):
        load_space(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[space.train]\nlr = {low = 1e-3 high = 2e-3}\n")
    with pytest.raises(ValueError, match=f"{bad}: not valid TOML"):
        load_space(bad)
    bad.write_text("[space.train]\nlr = {low = 1e-2, high = 1e-3}\n")
    with pytest.raises(ValueError, match=f"{bad}: search space: train.lr is an empty range"):
        load_space(bad)
