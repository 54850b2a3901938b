"""What the CUDA caching allocator reports before and after ``expandable_segments:True`` is set
at run time: the settings text, the allocator's own snapshot, and whether a new segment grows
in place.

python bench/allocator_settings_probe.py --out DIR   ->  DIR/allocator_settings_probe.json

On the device machine (torch 2.11) the GPU test of ``ExpandableSegments`` found the settings
text still off after the applier had set it (bench/results/gpu_tests_h100.txt); this records
which of torch's functions exist there and what each reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

FUNCTIONS = (
    "_accelerator_getAllocatorSettings",
    "_accelerator_setAllocatorSettings",
    "_cuda_cudaCachingAllocator_set_allocator_settings",
)


def reports() -> dict:
    get = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    return {
        "text": get() if get is not None else None,
        "snapshot": torch.cuda.memory._snapshot().get("allocator_settings", "absent"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    torch.zeros(1, device="cuda")
    result: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    result["functions"] = {name: hasattr(torch._C, name) for name in FUNCTIONS}
    result["before"] = reports()
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    setter = setter or torch.cuda.memory._set_allocator_settings
    setter("expandable_segments:True")
    result["after"] = reports()
    held = torch.empty(100 << 20, dtype=torch.uint8, device="cuda")
    result["segments_expandable"] = [s.get("is_expandable") for s in torch.cuda.memory_snapshot()]
    del held
    setter("expandable_segments:False")
    result["undone"] = reports()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "allocator_settings_probe.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
