"""What every benchmark shares: the machine it ran on, the pairs it used, and where its JSON goes."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import DEFAULT_CATALOGUE
from app.xnli import read_xnli

DEFAULT_XNLI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "xnli"


def argument_parser(module: str, doc: str | None, pairs: int) -> argparse.ArgumentParser:
    """A benchmark's command line with the options they all take: the catalogue, the XNLI data, how many of its pairs,
    and where the JSON results go."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    parser.add_argument("--data", type=Path, default=DEFAULT_XNLI, help="XNLI folder (default: beside the checkout)")
    parser.add_argument("--pairs", type=int, default=pairs, help="XNLI pairs used, languages mixed")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    return parser


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": _onnxruntime_version(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def resident_mb(pid: int | str = "self") -> float:
    """Resident memory (VmRSS) of a process in MB; what a model costs the host once loaded."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def print_machine(info: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{key}={value}" for key, value in info.items()), flush=True)


def mixed_pairs(data: Path, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` XNLI pairs with languages mixed (the same pairs for every benchmark given the same seed)."""
    pairs = [(pair.premise, pair.hypothesis) for pair in read_xnli(data)]
    random.Random(seed).shuffle(pairs)
    return pairs[:count]


def percentiles(values_s: list[float]) -> dict[str, float]:
    array = np.array(values_s) * 1000
    return {f"p{q}_ms": float(np.percentile(array, q)) for q in (50, 95, 99)}


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"wrote {path}", flush=True)
