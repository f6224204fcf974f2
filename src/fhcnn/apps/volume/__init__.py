"""``fhcnn volume``: segment a 3D volume (medical, microscopy, seismic) from sparse labels.

    from fhcnn.apps.volume import VolumeConfig, inputs_from_arrays, segment_volume
    inputs = inputs_from_arrays([t1], labels, truth)          # or load_volume_inputs(files ...)
    metrics = segment_volume(inputs, VolumeConfig(), out=None)
"""

from .baselines import copy_nearest_label, forest_baseline
from .config import DEFAULT_CONFIG, VolumeConfig, VolumeOptions
from .inputs import VolumeInputs, inputs_from_arrays, load_volume_inputs
from .pipeline import (
                       VolumePlan,
                       engine_config,
                       fit_predict,
                       plan_volume,
                       score,
                       segment_volume,
                       volume_command,
)

__all__ = ["VolumeConfig", "VolumeOptions", "DEFAULT_CONFIG", "VolumeInputs", "load_volume_inputs",
           "inputs_from_arrays", "segment_volume", "volume_command", "plan_volume", "VolumePlan",
           "engine_config", "fit_predict", "score", "copy_nearest_label", "forest_baseline"]
