"""README sentences that state a number or a default of the code, checked against the code: when one of them
changes, this test names the sentence to update."""
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text()


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_serve_and_predict_upload_limits_are_the_codes():
    from bsegn.app.cli import build_parser
    from bsegn.datasets.images import DEFAULT_MAX_PIXELS

    serve = build_parser().parse_args(["serve"])
    readme = _flat(README)
    assert f"`--max-bytes` (default {serve.max_bytes // 1_000_000} MB)" in readme
    assert f"`--max-pixels` (default {serve.max_pixels // 1_000_000} million pixels, lower than `predict`'s default " \
           f"of about {DEFAULT_MAX_PIXELS / 1e6:.1f} million)" in readme
    assert serve.max_pixels < DEFAULT_MAX_PIXELS


def test_the_default_backbones_are_the_configs():
    import yaml

    demo = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["backbone"]["model"]
    benchmarks = {yaml.safe_load(path.read_text())["backbone"]["model"]
                  for path in (REPO_ROOT / "configs").glob("*.yaml") if path.stem in ("cub", "awa2", "sun", "flo")}
    assert demo == "tf_efficientnet_lite0" and benchmarks == {"resnet101"}
    assert "(the demo: an ImageNet EfficientNet-Lite0 that installs with bsegn; the benchmark configs: ResNet-101)" \
        in _flat(README)


def test_the_lowest_versions_claim_names_the_torch_pin():
    pins = (REPO_ROOT / ".ci" / "lowest-versions").read_text()
    torch, torchvision = re.search(r'"torch==([\d.]+)" "torchvision==([\d.]+)"', pins).groups()
    assert f"torch / torchvision, pinned at {torch} / {torchvision}" in _flat(README)


def test_the_network_weights_option_is_documented():
    from bsegn.app.commands_backbone import WEIGHTS_HELP

    assert "download" in WEIGHTS_HELP
    assert "only when told to (`--backbone.weights download`)" in _flat(README)
