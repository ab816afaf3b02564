"""``info`` and ``verify`` for any diskgnn directory, dispatched on its manifest's format."""
from __future__ import annotations

import json
from pathlib import Path

from diskgnn.errors import ManifestError, ManifestNotFoundError
from diskgnn.manifest import MANIFEST_NAME
from diskgnn.progress import ProgressFn, no_progress


def _kind(directory) -> str:
    path = Path(directory)
    if not path.is_dir():
        raise ManifestNotFoundError(f"{path} is not a directory; give a dataset, samples or packed directory")
    mf = path / MANIFEST_NAME
    if not mf.exists():
        raise ManifestNotFoundError(f"{mf} is missing: {path} is not a complete diskgnn directory "
                                    f"(the step that writes it did not finish); run that step again")
    try:
        kind = json.loads(mf.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        raise ManifestError(f"{mf} is not a valid JSON manifest; re-create {path}") from None
    return str(kind)


def describe(directory) -> dict:
    """A summary dict of a dataset, samples or packed directory."""
    kind = _kind(directory)
    from diskgnn.hetero import is_hetero
    if kind == "diskgnn.dataset" and is_hetero(directory):
        from diskgnn.hetero import HeteroDataset, hetero_summary
        return {"kind": "heterogeneous dataset", **hetero_summary(HeteroDataset.open(directory))}
    if kind == "diskgnn.dataset":
        from diskgnn.dataset import Dataset, summary
        return {"kind": "dataset", **summary(Dataset.open(directory))}
    if kind == "diskgnn.samples":
        from diskgnn.sampling import Samples
        return {"kind": "samples", **Samples.open(directory).summary()}
    if kind == "diskgnn.packed":
        from diskgnn.store import Packed
        return {"kind": "packed", **Packed.open(directory).summary()}
    if kind == "diskgnn.embeddings":
        from diskgnn.embed import Embeddings
        return {"kind": "embeddings", **Embeddings.open(directory).summary()}
    if kind == "diskgnn.hetero-samples":
        from diskgnn.hetero_samples import HeteroSamples
        return HeteroSamples.open(directory).summary()
    if kind == "diskgnn.hetero-packed":
        from diskgnn.hetero_packing import HeteroPacked
        return HeteroPacked.open(directory).summary()
    raise ManifestError(f"{directory}: unknown manifest format {kind!r}")


def verify(directory, *, check_crc: bool = True, progress: ProgressFn = no_progress) -> str:
    """Check every invariant of the directory; raise the first problem. Returns the kind."""
    kind = _kind(directory)
    from diskgnn.hetero import is_hetero
    if kind == "diskgnn.dataset" and is_hetero(directory):
        from diskgnn.hetero import HeteroDataset, verify_hetero
        verify_hetero(HeteroDataset.open(directory), check_crc=check_crc)
        return "heterogeneous dataset"
    if kind == "diskgnn.dataset":
        from diskgnn.dataset import Dataset, verify_dataset
        ds = Dataset.open(directory)
        verify_dataset(ds, check_crc=check_crc,
                       progress=lambda k: progress("verify features", k, ds.num_nodes))
        return "dataset"
    if kind == "diskgnn.samples":
        from diskgnn.sampling import Samples, verify_samples
        verify_samples(Samples.open(directory), check_crc=check_crc, progress=progress)
        return "samples"
    if kind == "diskgnn.packed":
        from diskgnn.store import Packed, verify_packed
        verify_packed(Packed.open(directory), check_crc=check_crc, progress=progress)
        return "packed"
    if kind == "diskgnn.embeddings":
        from diskgnn.embed import Embeddings
        Embeddings.open(directory).verify(check_crc=check_crc)
        return "embeddings"
    if kind == "diskgnn.hetero-samples":
        from diskgnn.hetero_samples import HeteroSamples, verify_hetero_samples
        verify_hetero_samples(HeteroSamples.open(directory), check_crc=check_crc, progress=progress)
        return "heterogeneous samples"
    if kind == "diskgnn.hetero-packed":
        from diskgnn.hetero_packing import HeteroPacked, verify_hetero_packed
        verify_hetero_packed(HeteroPacked.open(directory), check_crc=check_crc, progress=progress)
        return "heterogeneous packed"
    raise ManifestError(f"{directory}: unknown manifest format {kind!r}")
