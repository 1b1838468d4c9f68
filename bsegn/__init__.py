"""bsegn: generative zero-shot image classification (BSeGN) end to end.

    import bsegn
    model = bsegn.load_model("runs/demo-final")      # bsegn.app.api.load_model, imported on first use
    bsegn.__version__

This folder holds only this file: the code lives in the repository's top-level folders, installed as
bsegn.core, bsegn.datasets, bsegn.backbone, bsegn.generative, bsegn.app and bsegn.configs (pyproject's
package-dir). Those stay namespace packages so that, run from the repository root, our `datasets/` never
shadows Hugging Face's `datasets`; this package is named `bsegn`, which nothing else claims.
Nothing heavy is imported here: `import bsegn.core.errors` must not pay for torch.
"""
import os

__version__ = "0.1.0"  # the one place the version is written: pyproject reads it (tool.setuptools.dynamic)

__all__ = ["__version__", "load_model"]

# In a checkout (and its editable install) the subpackage folders lie beside this folder, not inside it
# as in a wheel: look for them there too. setuptools' editable finder serves namespace children only
# below a namespace parent, so without this line `import bsegn.core` fails once `bsegn` is regular.
_here = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_here, "core")):
    __path__.append(os.path.dirname(_here))


def __getattr__(name: str):
    # PEP 562: load_model (torch, timm) is imported only when asked for
    if name == "load_model":
        from bsegn.app.api import load_model

        return load_model
    raise AttributeError(f"module 'bsegn' has no attribute {name!r}")
