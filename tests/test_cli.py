"""`bsegn train` and `bsegn predict` are train.py and the predict script under the installed `bsegn` command:
every argument after the command reaches their own parser; other commands still refuse unknown options."""
import pytest

from bsegn.app.cli import main


def test_bsegn_train_is_train_py(capsys):
    from bsegn.app.config import config_help

    assert main(["train", "--help-config"]) == 0
    assert capsys.readouterr().out == config_help() + "\n"
    assert main(["train", "--generative.epochs", "five"]) == 2  # a config override, typed and checked
    assert capsys.readouterr().err.strip() == "bsegn train: error: generative.epochs must be an integer, got 'five'"


def test_bsegn_predict_is_the_predict_script(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    assert main(["predict", str(tmp_path / "photo.png"), "--model", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bsegn predict: error: ") and "missing" in error and "\n" not in error
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--top-k" in capsys.readouterr().out


def test_other_commands_still_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit):
        main(["data", "summary", "--data.benchmark", "demo", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
