"""The jetson backend's own cost per call, against the same work done by hand, in one run.

    python benchmarks/bench_jetson.py [--calls N] [--repeats R] [--image PATH]

Runs on the STAND-IN jetson_inference / jetson_utils of ``tests/jetson/standin`` (NVIDIA's
modules exist only on a Jetson): the "inference" is trivial there, so what is measured is
everything around it, which is the same code on an Orin. Three variants, interleaved:

* ``session.classify`` - through a vAccel session and the jetson backend: argument checks,
  Pillow decode, cached network, tag formatting, output image saved in the session's run folder;
* ``by hand`` - the same steps written directly against the modules (decode, cudaFromNumpy,
  Classify, GetClassDesc, OverlayText, saveImage), network created once;
* ``by hand, network per call`` - upstream's plugin shape: the network is created on every call.
  With the stand-in, creation is nearly free; on an Orin it costs a TensorRT engine load
  (seconds), which is what reusing the network saves.

Prints the median milliseconds per call of each variant and the ratios to ``by hand``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "jetson" / "standin"
LABELS = "n01440764 tench, Tinca tinca\nn02099601 golden retriever\n"


def _networks(folder: Path) -> Path:
    for name in ("googlenet.prototxt", "bvlc_googlenet.caffemodel"):
        (folder / name).write_text("stand-in\n")
    (folder / "ilsvrc12_synset_words.txt").write_text(LABELS)
    return folder


def _per_call_ms(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per sample")
    parser.add_argument("--repeats", type=int, default=9, help="samples per variant")
    parser.add_argument("--image", default=str(ROOT / "examples" / "photos" / "dog.jpg"))
    args = parser.parse_args()

    sys.path.insert(0, str(STANDIN))
    import io

    import jetson_inference
    import jetson_utils
    import numpy as np
    from PIL import Image

    from vaccel_core import Config, PluginRegistry, Session
    from vaccel_plugins.jetson import plugin

    image = Path(args.image).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        networks = _networks(Path(tmp))
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        registry = PluginRegistry()
        registry.register_plugin(plugin, "jetson")
        config = Config(plugins=["jetson"], imagenet_networks=str(networks))
        config.extra["rundir"] = str(Path(tmp) / "run")
        argv = [
            f"--model={networks / 'bvlc_googlenet.caffemodel'}",
            f"--prototxt={networks / 'googlenet.prototxt'}",
            f"--labels={networks / 'ilsvrc12_synset_words.txt'}",
        ]
        net = jetson_inference.imageNet("googlenet", argv)
        font = jetson_utils.cudaFont()
        counter = iter(range(10**9))

        def by_hand(network: object | None = None) -> str:
            n = network or jetson_inference.imageNet("googlenet", argv)
            with Image.open(io.BytesIO(image)) as pic:
                rgb = np.asarray(pic.convert("RGB"), dtype=np.uint8)
            img = jetson_utils.cudaFromNumpy(rgb)
            idx, conf = n.Classify(img)  # type: ignore[attr-defined]
            tags = f"{conf * 100:.3f}% {n.GetClassDesc(idx)}"  # type: ignore[attr-defined]
            font.OverlayText(img, img.width, img.height, tags, 5, 5, font.White, font.Gray40)
            jetson_utils.cudaDeviceSynchronize()
            jetson_utils.saveImage(str(out_dir / f"{next(counter)}.jpg"), img)
            return tags

        with Session(config=config, registry=registry) as session:
            variants: dict[str, Callable[[], object]] = {
                "session.classify": lambda: session.classify(image),
                "by hand": lambda: by_hand(net),
                "by hand, network per call": by_hand,
            }
            assert session.classify(image)[0] == by_hand(net)
            for fn in variants.values():  # warm up
                _per_call_ms(fn, max(1, args.calls // 5))
            samples: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):  # interleaved, so noise hits all alike
                for name, fn in variants.items():
                    samples[name].append(_per_call_ms(fn, args.calls))
        registry.shutdown()

    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["by hand"]
    size = len(image)
    print(f"image: {Path(args.image).name} ({size} bytes); stand-in jetson modules")
    print(f"{'variant':<30}{'median ms/call':>16}{'ratio to by hand':>18}")
    for name, value in med.items():
        print(f"{name:<30}{value:>16.3f}{value / base:>17.2f}x")


if __name__ == "__main__":
    main()
