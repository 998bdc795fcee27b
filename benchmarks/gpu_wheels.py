"""What a lent GPU machine needs to run the project, brought from here: it reaches no package registry.

Its image (see the device notes: Python 3.12 with torch 2.11, transformers 5.17, onnxruntime, prometheus-client, httpx,
typer, uvloop, ...) lacks the web stack. On this machine:

    python benchmarks/gpu_wheels.py download --xnli ../shared/data/xnli
        # .whl/ (CPython 3.12 manylinux wheels) and .xnli/ (the benchmark pairs and the demo tokenizer trained on
        # them), both git-ignored
    python benchmarks/gpu_wheels.py image-venv --python ~/.pyenv/versions/3.12.1/bin/python --venv /tmp/gpu-image-312
        # a clean 3.12 environment holding only packages the GPU image has, to prove the wheel set is complete

On the GPU machine (benchmarks/gpu_check.sh does it), after `pip install --no-index --no-deps --target`:

    python3 benchmarks/gpu_wheels.py check      # every requirement of every carried wheel met, every module imports

Only the standard library (and `packaging`, which the image has, for `check`): this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".whl"
XNLI_COPY = ROOT / ".xnli"
TOKENIZER_FOLDER = "demo-tokenizer"  # inside XNLI_COPY: trained here, so the device spends no time training it
MAX_WHEEL_MB = 60.0

# What the GPU image lacks, at the versions the project is tested with (.venv); each wheel's own requirements are
# either here or in the image (`download` checks that, `check` checks the versions there).
WHEELS = (
    "fastapi==0.165.0",
    "opentelemetry-api==1.45.2",
    "starlette==1.10.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "python-dotenv==1.2.4",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "orjson==3.13.0",
    "fastapi-offline==1.7.7",
    "pyzmq==27.3.0",  # front ends <-> engine process (app.multiprocess); msgpack is in the image
    # Tracing (issue #27): the SDK and its OTLP exporters, with what they need beyond the image (grpcio, protobuf,
    # requests are there)
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-semantic-conventions==0.66b2",
    "opentelemetry-proto==1.45.2",
    "opentelemetry-exporter-otlp-proto-common==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
    "opentelemetry-exporter-otlp-common==0.66b2",
    "opentelemetry-exporter-http-transport==0.66b2",
    "googleapis-common-protos==1.76.0",
    # gRPC's standard health service and reflection (app/grpc/health.py), pure Python beside the image's grpcio
    "grpcio-health-checking==1.85.1",
    "grpcio-reflection==1.85.1",
)
MODULES = (
    "fastapi",
    "fastapi_offline",
    "starlette",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "uvicorn",
    "httptools",
    "orjson",
    "zmq",
    "msgpack",
    # gRPC (issue #26): the image has grpcio and protobuf, at versions the notes do not give; the generated messages
    # need protobuf >= 7.35.1 (grpcio-tools 1.85.1's gencode): `check` reports it here if the image's is older.
    "grpc",
    "google.protobuf",
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
    "opentelemetry.sdk.trace",  # tracing (issue #27)
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
)
# The project modules that must import there (they pull in everything the service and the benchmarks use).
PROJECT_MODULES = (
    "app.cli",
    "app.api.app",
    "app.api.server",
    "app.multiprocess.front_end",
    "app.multiprocess.engine_process",
    "benchmarks.service",
    "benchmarks.summary",
    "benchmarks.frontend",
    "benchmarks.pipeline",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

# The GPU image's Python packages, as the device notes list them (read on a machine running it, 2026-11-17).
_IMAGE_PACKAGE_LIST = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
    optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
    pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
    six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
    tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
    wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_PACKAGES = frozenset(_IMAGE_PACKAGE_LIST.split())
# A clean environment holding only image packages, for the proof here: the versions the device notes give, CPU use
# only. typer 0.28.0 is the newest typer that needs no pydantic (0.29 does; the image has typer and no pydantic).
IMAGE_VENV_REQUIREMENTS = (
    "torch==2.11.0",
    "transformers==5.17.0",
    "tokenizers==0.23.2",
    "safetensors==0.8.0",
    "huggingface-hub==1.33.0",
    "numpy==2.5.2",
    "onnxruntime==1.30.0",
    "typer==0.28.0",
    "prometheus-client",
    "httpx",
    "uvloop",
    "packaging",
    "msgpack",
    "grpcio",  # gRPC (issue #26): in the image
    "protobuf>=7.35.1",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"unreadable requirement {requirement!r}")
    return canonical(match.group(1))


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """(canonical name, Requires-Dist lines) of a wheel file, read without installing it."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(member for member in archive.namelist() if member.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode("utf-8")
    headers = text.split("\n\n", 1)[0].splitlines()
    project = next(line.split(":", 1)[1].strip() for line in headers if line.startswith("Name:"))
    requires = [line.split(":", 1)[1].strip() for line in headers if line.startswith("Requires-Dist:")]
    return canonical(project), requires


def needed(requirement: str) -> bool:
    """A requirement that applies without extras on Linux (markers other than extra/platform are kept as needed)."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    if "extra" in marker or re.search(r"implementation_name\s*==\s*['\"]pypy['\"]", marker):
        return False  # the target is CPython (pyzmq needs cffi on PyPy only)
    return not re.search(r"(sys_platform|platform_system)\s*==\s*['\"](win32|Windows|darwin|Darwin)['\"]", marker)


def closure_problems(wheels: list[Path], image: frozenset[str] = IMAGE_PACKAGES) -> list[str]:
    """What a set of wheels needs that neither the set nor the image provides, and names the set holds twice."""
    metadata = [wheel_metadata(wheel) for wheel in wheels]
    names = [name for name, _ in metadata]
    problems = [f"two wheels of {name}" for name in sorted({n for n in names if names.count(n) > 1})]
    problems += [f"{name} is in the image already" for name in names if name in image]
    for name, requires in metadata:
        for requirement in requires:
            if needed(requirement):
                wanted = requirement_name(requirement)
                if wanted not in names and wanted not in image:
                    problems.append(f"{name} needs {requirement}: neither carried nor in the image")
    return problems


def download(dest: Path, xnli: Path | None) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", *(f"--platform={platform}" for platform in PLATFORMS), "-d", str(dest)]
    subprocess.run([*command, *WHEELS], check=True)
    wheels = sorted(dest.glob("*.whl"))
    problems = closure_problems(wheels)
    size_mb = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    if size_mb > MAX_WHEEL_MB:
        problems.append(f"{size_mb:.1f} MiB of wheels, over {MAX_WHEEL_MB:g}")
    if problems:
        raise SystemExit("gpu_wheels: " + "; ".join(problems))
    print(f"{len(wheels)} wheels, {size_mb:.1f} MiB in {dest}: " + ", ".join(wheel.name for wheel in wheels))
    if xnli is not None:
        copy_xnli(xnli, XNLI_COPY)


def copy_xnli(source: Path, dest: Path) -> None:
    """The XNLI TSVs beside the wheels (git-ignored, never committed: CC BY-NC): the device cannot see ../shared.

    With them, the demo tokenizer trained on them (about a minute here), which the device reuses.
    """
    files = sorted(source.glob("*.tsv"))
    if not files:
        raise SystemExit(f"gpu_wheels: no XNLI-format .tsv files in {source}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, dest / path.name)
    print(f"{len(files)} XNLI files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB in {dest}")
    from app.demo.tokenizer import save_demo_tokenizer  # the project's own environment, here only

    tokenizer = save_demo_tokenizer(dest / TOKENIZER_FOLDER, tokenizer_corpus=source)
    print(f"demo tokenizer trained on {source} in {tokenizer} (the device takes it with --tokenizer-from)")


def check(dest: Path) -> None:
    """On the target interpreter: every carried wheel installed, its requirements met, every module importable."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems = []
    for wheel in sorted(dest.glob("*.whl")):
        name, requires = wheel_metadata(wheel)
        try:
            print(f"carried {name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{name} needs {requirement}: not installed")
                continue
            if requirement.specifier and not requirement.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{name} needs {requirement}: {version} installed")
    for module in (*MODULES, *PROJECT_MODULES):
        try:
            importlib.import_module(module)
        except Exception as error:  # report every failure, not just the first
            problems.append(f"import {module}: {type(error).__name__}: {error}")
    import torch
    import transformers

    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {cuda}), ", end="")
    print(f"transformers {transformers.__version__}")
    if problems:
        raise SystemExit("gpu_wheels check failed: " + "; ".join(problems))
    print("gpu_wheels check: every carried wheel installed with its requirements met; every module imports")


def image_venv(python: Path, venv: Path) -> None:
    """A clean environment with only packages the GPU image has (no CUDA device needed: torch runs on the CPU)."""
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", *IMAGE_VENV_REQUIREMENTS], check=True)
    listed = subprocess.run([*pip, "list", "--format=freeze"], check=True, capture_output=True, text=True).stdout
    installed = {canonical(line.split("==")[0]) for line in listed.splitlines() if "==" in line}
    extra = sorted(installed - IMAGE_PACKAGES)
    if extra:
        raise SystemExit(f"gpu_wheels: the environment holds packages the GPU image lacks: {extra}")
    print(f"{venv}: {len(installed)} packages, all of them in the GPU image")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_wheels.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="Download the wheels (and copy the XNLI pairs) for the GPU machine.")
    get.add_argument("--dest", type=Path, default=WHEEL_DIR)
    get.add_argument("--xnli", type=Path, default=None, help="XNLI-format folder to copy to .xnli/ for the device")
    verify = commands.add_parser("check", help="On the GPU machine, after installing: requirements met, imports work.")
    verify.add_argument("--dest", type=Path, default=WHEEL_DIR)
    venv = commands.add_parser("image-venv", help="Here: a clean 3.12 environment with only what the GPU image has.")
    venv.add_argument("--python", type=Path, required=True)
    venv.add_argument("--venv", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "download":
        download(args.dest, args.xnli)
    elif args.command == "check":
        check(args.dest)
    else:
        image_venv(args.python, args.venv)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # `check` imports the project from the source tree
    main()
