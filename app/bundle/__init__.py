"""The model bundle: everything `predict` and `add-class` need, in a folder that loads without
executing code.

    bundle/
      config.json        format + version, backbone identity and data config, class names, seen flags,
                         semantic matrix, attribute names, BSeGN metadata (its config, mFIM dims), the
                         classifiers' label spaces, the seen-or-unseen gate (kind, threshold) and the
                         unseen ranking, metrics, package versions, size and sha256 of model.safetensors
                         and a sha256 over config.json's own content
      model.safetensors  backbone.*  timm state_dict of the (fine-tuned) backbone
                         bsegn.*     TrainedBSeGN: generator, decoder, embedder, mFIM statistics
                         gzsl.* / zsl.*  final classifiers (all classes / unseen classes)
                         gate.*      the gate's fitted parts (app.bundle.gate; none for stacking)
                         open_world.*  the open-world rule's fitted score (app.bundle.open_world; none
                                     for a closed-world model)
                         replay.features / replay.labels  the real seen trainval features (float16), so
                                     add-class refits the GZSL classifier on the same real data as training
      README.md          model card (app.bundle.card)

    save_bundle(bundle, folder); bundle = load_bundle(RUN_OR_BUNDLE_DIR)
    add-class: save_bundle(dataclasses.replace(bundle, gzsl=..., gate=...), out)

The folder is written whole beside its place and renamed into it (core.files.atomic_folder), under the
bundle's lock (core.locks.BundleLock). A truncated or edited file, a bundle of another format version,
or one whose content is not a valid model (app.bundle.schema: fields, ranges, finite weights) raises
BundleError with a message that says what is wrong; nothing is unpickled, nothing is executed.

Modules: contents (the Bundle), layout (file names, format, config.json read and verified), save, load,
schema and checks (what config.json must hold), gate, open_world, semantics, backbone (each part as stored),
card.
"""
from bsegn.app.bundle.contents import Bundle
from bsegn.app.bundle.layout import CONFIG_NAME, MODEL_NAME, read_bundle_info, resolve_bundle_dir
from bsegn.app.bundle.load import load_bundle
from bsegn.app.bundle.save import save_bundle

__all__ = ["Bundle", "CONFIG_NAME", "MODEL_NAME", "load_bundle", "read_bundle_info", "resolve_bundle_dir",
           "save_bundle"]
