"""``fhcnn volume``: segment a 3D volume (medical, microscopy, seismic) from sparse labels.

    from fhcnn.apps.volume import VolumeConfig, load_volume_inputs, segment_volume
    inputs = load_volume_inputs(["t1.npy"], "labels.npy", "truth.npy")
    metrics = segment_volume(inputs, VolumeConfig(), out=None)
"""

from .baselines import copy_nearest_label, forest_baseline
from .config import DEFAULT_CONFIG, VolumeConfig, VolumeOptions
from .inputs import VolumeInputs, label_summary, load_volume_inputs
from .pipeline import check_setup, engine_config, fit_predict, score, segment_volume

__all__ = ["VolumeConfig", "VolumeOptions", "DEFAULT_CONFIG", "VolumeInputs", "load_volume_inputs",
           "label_summary", "segment_volume", "engine_config", "fit_predict", "score", "check_setup",
           "copy_nearest_label", "forest_baseline"]
