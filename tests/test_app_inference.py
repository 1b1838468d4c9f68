"""The inference engine (bsegn.app.inference): typed, frozen results that carry the gate's decision and
p_unseen, no per-call state on the Predictor, and one JSON/text form shared by predict, serve and the
Python API. On the session's tiny bundle (test_app_bundle); each test takes a second or two."""
import dataclasses
import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_app_bundle import IMAGE_SIZE, shared_tiny_bundle

from bsegn.app.bundle import load_bundle
from bsegn.app.inference import ClassScore, Prediction, Predictor


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def _image_files(folder: Path) -> list[Path]:
    paths = []
    for index, colour in enumerate([(200, 30, 30), (10, 200, 40), (0, 0, 255)]):
        paths.append(folder / f"{index}.png")
        Image.new("RGB", (40, 40), colour).save(paths[-1])
    return paths


def test_the_predictor_keeps_no_per_call_state(saved):
    """Calls on one Predictor, one after another or at once from two threads, answer as separate Predictors
    do, and leave its attributes as they were (no `_last`, no `last_p_unseen()` to read back)."""
    first, second = _images(4, 0), _images(3, 1)
    alone = (Predictor(load_bundle(saved)).predict_tensors(first, top_k=3),
             Predictor(load_bundle(saved)).predict_tensors(second, top_k=3))
    shared = Predictor(load_bundle(saved))
    before = {name: id(value) for name, value in vars(shared).items()}
    interleaved = [shared.predict_tensors(first, top_k=3), shared.predict_tensors(second, top_k=3)]
    assert tuple(interleaved) == alone
    threaded = [None, None]

    def answer(slot, images):
        for _ in range(3):
            threaded[slot] = shared.predict_tensors(images, top_k=3)

    threads = [threading.Thread(target=answer, args=(slot, images)) for slot, images in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tuple(threaded) == alone
    assert {name: id(value) for name, value in vars(shared).items()} == before
    assert not hasattr(shared, "last_p_unseen") and not hasattr(shared, "_last")


def test_results_are_typed_and_frozen(saved):
    answer = Predictor(load_bundle(saved)).predict_tensors(_images(1, 2), top_k=2)[0]
    assert isinstance(answer, Prediction) and isinstance(answer.top, tuple)
    assert all(isinstance(score, ClassScore) for score in answer.top)
    assert isinstance(answer.unseen, bool) and isinstance(answer.p_unseen, float) and answer.mode == "gzsl"
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.unseen = not answer.unseen
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.top[0].probability = 1.0


@pytest.mark.parametrize("options", [[], ["--explain"], ["--mode", "zsl", "--top-k", "2"]])
def test_to_json_and_to_text_are_what_predict_prints(saved, tmp_path, capsys, options):
    """predict --json prints json_text(Prediction.to_json()) byte for byte, its keys in the documented order;
    without --json, Prediction.to_text()."""
    from bsegn.app.cli import predict_main
    from bsegn.core.files import json_text

    paths = _image_files(tmp_path)
    mode = options[options.index("--mode") + 1] if "--mode" in options else "gzsl"
    top_k = int(options[options.index("--top-k") + 1]) if "--top-k" in options else 5
    results = Predictor(load_bundle(saved), mode=mode).predict_paths(paths, top_k=top_k, explain="--explain" in options)
    assert predict_main([*map(str, paths), "--model", str(saved), "--json", *options]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [json_text(result.to_json()) for result in results]
    keys = ["image", "mode", "top", "unseen", "p_unseen"] + (["explain"] if "--explain" in options else [])
    assert all(list(json.loads(line)) == keys for line in printed)
    assert all(list(top) == ["class", "class_id", "probability", "seen"] for top in json.loads(printed[0])["top"])
    assert predict_main([*map(str, paths), "--model", str(saved), *options]) == 0
    assert capsys.readouterr().out == "".join(result.to_text() + "\n" for result in results)


def test_the_python_api_carries_the_decision_and_p_unseen_that_predict_json_prints(saved, tmp_path, capsys):
    from bsegn.app.api import load_model
    from bsegn.app.cli import predict_main

    paths = _image_files(tmp_path)
    assert predict_main([*map(str, paths), "--model", str(saved), "--json", "--top-k", "3"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answers = load_model(saved).predict([Image.open(path) for path in paths], top_k=3)
    assert [a.unseen for a in answers] == [p["unseen"] for p in printed]
    assert [a.p_unseen for a in answers] == [p["p_unseen"] for p in printed]
    assert [dataclasses.replace(a, image=str(path)).to_json() for a, path in zip(answers, paths)] == printed
