"""Data: the nuScenes dataset layer, the synthetic world writer, and the Sample/Batch contract."""

from bevbridge.data.bad_samples import SkippedSamples, skipped_samples
from bevbridge.data.batch import Batch, Sample, collate

__all__ = ["Batch", "Sample", "collate", "NuScenesDataset", "SkippedSamples", "skipped_samples"]


def __getattr__(name: str):
    if name == "NuScenesDataset":  # lazy: keeps `import bevbridge.data` light
        from bevbridge.data.nuscenes import NuScenesDataset

        return NuScenesDataset
    raise AttributeError(name)
