"""One class-name rule for every way a class is added (CLI, Python API; the page and the HTTP API:
test_app_serve), names escaped where they are rendered, and numbers range-checked where they enter, so
that predict's JSON is valid JSON (issue 25). The tiny bundle of test_app_bundle; fast."""
import json
import shutil
from pathlib import Path

import pytest
from test_app_add_class import VALUES, _bsegn
from test_app_bundle import CLASSES, _one_image, shared_tiny_bundle
from test_app_bundle_checks import _set, rewrite_config

from bsegn.app.add_class import add_classes
from bsegn.app.bundle import load_bundle
from bsegn.app.class_inputs import MAX_CLASS_NAME, class_name
from bsegn.core.errors import BundleError, ConfigError

BAD_NAMES = {  # name -> words of the refusal
    "two\nlines": "non-printing character", "red\x1b[31mbird": "non-printing character",
    "tab\tbed": "non-printing character", "zero\u200bwidth": "non-printing character",
    "x" * 10_000: f"at most {MAX_CLASS_NAME}", "   ": "class name is empty",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


@pytest.mark.parametrize("name", sorted(BAD_NAMES), ids=lambda name: repr(name[:12]))
def test_add_class_refuses_a_name_the_rule_refuses_in_one_line(saved, tmp_path, capsys, name):
    """Issue 25: add-class took names with a newline, escape sequences, tabs or 10,000 characters (predict
    then split one answer over two lines and sent raw terminal escapes)."""
    code, err = _bsegn(capsys, "add-class", "--model", str(saved), "--name", name, "--attributes", VALUES,
                       "--out", str(tmp_path / "out"))
    assert code == 2 and BAD_NAMES[name] in err and len(err.strip().splitlines()) == 1, err
    csv = tmp_path / "new.csv"
    csv.write_text(f'"{name}",{VALUES}\n')
    code, err = _bsegn(capsys, "add-class", "--model", str(saved), "--attributes", str(csv), "--out",
                       str(tmp_path / "out"))
    assert code == 2 and BAD_NAMES[name] in err and "new.csv:1" in err, err
    with pytest.raises(BundleError, match=BAD_NAMES[name]):  # the Python API: the same rule
        add_classes(saved, [(name, [0.1] * 5)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_are_trimmed_and_unique_ignoring_case_in_every_path(saved, tmp_path):
    assert class_name("  blue dotted circle ", "x") == "blue dotted circle"
    with pytest.raises(BundleError, match="already in the model"):
        add_classes(saved, [("class0 ", [0.1] * 5)], tmp_path / "out")  # beside the model's class0
    out = add_classes(saved, [("  new one  ", [0.1] * 5)], tmp_path / "out")
    assert load_bundle(out).class_names == CLASSES + ["new one"]


def test_a_bundle_class_name_with_a_control_character_is_refused_at_load(saved, tmp_path):
    folder = Path(shutil.copytree(saved, tmp_path / "bundle"))
    rewrite_config(folder, _set("classes/0/name", "class0\x1b]8;;http://x\x07"))
    with pytest.raises(BundleError, match=r"classes\[0\].*printable"):
        load_bundle(folder)


def test_names_are_escaped_in_the_saved_bundles_model_card(saved, tmp_path):
    """Issue 25: a class name landed unescaped in a saved bundle's README.md (`<img src=x onerror=...>`).
    Rendered as Markdown, a name is text: no element comes from it."""
    MarkdownIt = pytest.importorskip("markdown_it", reason="markdown-it-py renders the card").MarkdownIt

    hostile = ["<img src=x onerror=alert(1)>", "`tick` **bold** [link](http://x)", "<script>alert(2)</script>"]
    out = add_classes(saved, [(name, [0.1 * (i + 1)] * 5) for i, name in enumerate(hostile)], tmp_path / "out")
    html = MarkdownIt("commonmark").render((out / "README.md").read_text())
    assert "<img" not in html and "<script" not in html and "<a " not in html and "<strong" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "**bold** [link](http://x)" in html


@pytest.mark.parametrize("value", ["1e39", "-1e39", "1e10", "nan", "inf"])
def test_predict_refuses_a_threshold_out_of_range_in_one_line(saved, tmp_path, capsys, value):
    """Issue 25: `predict --threshold=1e39 --json` printed "probability": NaN (not JSON) with exit 0."""
    from bsegn.app.cli import predict_main

    assert predict_main([str(_one_image(tmp_path)), "--model", str(saved), f"--threshold={value}", "--json"]) == 2
    captured = capsys.readouterr()
    assert "--threshold) must be a finite number from -1e+09 to 1e+09" in captured.err and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("threshold", ["1e9", "-1e9", "0"])
def test_predict_json_is_valid_json_at_the_ends_of_the_range(saved, tmp_path, capsys, threshold):
    from bsegn.app.cli import predict_main

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert predict_main([str(_one_image(tmp_path)), "--model", str(saved), f"--threshold={threshold}", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert answer["unseen"] == (threshold == "-1e9") and 0 <= answer["p_unseen"] <= 1
    assert all(0 <= t["probability"] <= 1 for t in answer["top"])


@pytest.mark.parametrize("value", ["1.0e+39", "-1.0e+10"])
def test_run_threshold_is_range_checked_as_the_bundle_is(value):
    """A threshold train.py would write into the bundle is refused before any compute, as the bundle would be."""
    from bsegn.app.config import load_run_config

    with pytest.raises(ConfigError, match="run.threshold must be null or a number a bundle can hold"):
        load_run_config(None, ["--run.threshold", value])
    assert load_run_config(None, ["--run.threshold", "-1.0e+9"]).run.threshold == -1e9


def test_a_saved_bundle_is_valid_json_and_never_one_that_would_not_load(saved, tmp_path):
    """A metric that is not a number (an AUROC with one domain empty) is written null; a gate threshold out of
    range is refused at save, as the load would refuse it, and nothing is written."""
    bundle = load_bundle(saved)
    bundle.metrics = {**bundle.metrics, "domain_auroc": float("nan"), "oracle_H": float("inf")}
    from bsegn.app.bundle import CONFIG_NAME, save_bundle

    save_bundle(bundle, tmp_path / "nan")

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    config = json.loads((tmp_path / "nan" / CONFIG_NAME).read_text(), parse_constant=refuse)
    assert config["metrics"]["domain_auroc"] is None and load_bundle(tmp_path / "nan").metrics["oracle_H"] is None
    bundle.gate.threshold = 1e39
    with pytest.raises(BundleError, match="not written.*'gate.threshold' must be a finite number"):
        save_bundle(bundle, tmp_path / "huge")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


@pytest.mark.parametrize("text, words", [("a red\x1b[31m star", "printable"), ("word " * 2001, "at most 10000"),
                                         ("   ", "is empty")])
def test_a_description_is_one_printable_line_of_bounded_length(text, words):
    from bsegn.app.class_inputs import parse_descriptions

    with pytest.raises(BundleError, match=words):
        parse_descriptions(text, name="star")
    assert parse_descriptions("a red\n\tstar ", name=" star ") == [("star", "a red star")]  # whitespace folded


def test_values_or_words_longer_than_a_file_name_are_read_as_values_or_words():
    """312 attribute values (CUB) are one argument longer than a file name may be: asking whether it names a
    file raised OSError (File name too long) instead of reading the values."""
    from bsegn.app.class_inputs import parse_attributes, parse_descriptions

    assert len(parse_attributes(",".join(["0.0123"] * 312), 312, "bird")[0][1]) == 312
    assert parse_descriptions("word " * 100, name="wordy")[0][1] == ("word " * 100).strip()
