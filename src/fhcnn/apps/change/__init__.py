"""``fhcnn change``: bitemporal hyperspectral change detection from a few labelled pixels.

    from fhcnn.apps.change import ChangeConfig, load_inputs, fit_change
    inputs = load_inputs("before.npy", "after.npy", labels="labels.npy")
    fit = fit_change(inputs.before, inputs.after, inputs.train, ChangeConfig())
    fit["pred"]   # (H, W) uint8 change map
"""

from .config import DEFAULT_CONFIG, ChangeConfig, ChangeOptions
from .inputs import ChangeInputs, load_inputs
from .outputs import change_metrics, write_figure, write_outputs
from .pipeline import build_volume, change_command, fit_change, held_out_scores, plan_change, run_change

__all__ = ["ChangeConfig", "ChangeOptions", "DEFAULT_CONFIG", "ChangeInputs", "load_inputs",
           "build_volume", "fit_change", "held_out_scores", "plan_change", "run_change", "change_command",
           "change_metrics", "write_figure",
           "write_outputs"]
